"""Base of the tasks generated locally from templates: a fixed held-out split and a seeded training split.

A subclass writes ``make(rng) -> Item``: one random problem with its key (what
makes two problems the same), text and answer. Held-out items use a fixed
seed, so every run is evaluated on the same set; training items use the run
seed and exclude every key in the held-out set.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from iterpo.errors import ConfigError
from iterpo.records import Prompt
from iterpo.tasks.base import Task

EVAL_SEED = 1_000_003


@dataclass
class Item:
    key: tuple  # identifies the problem: the same key is the same problem
    text: str
    answer: str  # for the task's judge: a number, unit tests, or a constraint spec
    user: str | None = None  # who asks (personalized tasks)


class GeneratedTask(Task):
    name = "generated"
    max_misses = 5000  # draws in a row that repeat a problem before concluding the space is exhausted

    def __init__(self, config, seed: int):
        self.config = config
        self._eval = self._generate("eval", config.eval_size, EVAL_SEED, exclude=set())
        self._train = self._generate("train", config.train_size, seed, exclude={k for k, _ in self._eval})

    def make(self, rng: random.Random) -> Item:  # pragma: no cover
        raise NotImplementedError

    def _generate(
        self, split: str, n: int, seed: int, exclude: set, make: Callable[[random.Random], Item] | None = None
    ) -> list[tuple[tuple, Prompt]]:
        """n distinct items of make (default self.make) from the split's seeded generator, none keyed in
        exclude."""
        make = make or self.make
        rng = random.Random(f"{self.name}/{split}/{seed}")
        seen, misses = set(exclude), 0
        out: list[tuple[tuple, Prompt]] = []
        while len(out) < n:
            item = make(rng)
            if item.key in seen:
                misses += 1
                if misses > self.max_misses:
                    raise ConfigError(
                        f"task {self.name}: could only make {len(out)} distinct {split} problems of the "
                        f"{n} asked for; lower task.train_size / task.eval_size"
                    )
                continue
            misses = 0
            seen.add(item.key)
            out.append(
                (
                    item.key,
                    Prompt(
                        f"{self.name}-{split}-{len(out):05d}",
                        [{"role": "user", "content": item.text}],
                        item.answer,
                        item.user,
                    ),
                )
            )
        return out

    def train_prompts(self) -> list[Prompt]:
        return [p for _, p in self._train]

    def eval_prompts(self) -> list[Prompt]:
        return [p for _, p in self._eval]
