"""The built-in ``arithmetic`` task: procedurally generated questions with exact answers.

Questions come in several phrasings so the model learns the arithmetic rather
than one template. Held-out prompts use a fixed seed (the same for every run,
so runs are comparable), and so does a second set for tuning settings
(task.tuning), disjoint from it; training prompts use the run seed and exclude
every question of both.
"""

from __future__ import annotations

import random
import re

from iterpo.config import TaskSection
from iterpo.errors import ConfigError
from iterpo.records import Prompt
from iterpo.tasks.base import Task, register_task

EVAL_SEED = 1_000_003  # fixed: the held-out set does not move with the run seed
TUNING_SEED = 2_000_003  # the tuning set's (task.tuning): fixed too, disjoint from the held-out set

TEMPLATES = [
    "What is {a} {op} {b}? Answer with just the number.",
    "Compute {a} {op} {b}. Reply with only the result.",
    "Calculate: {a} {op} {b} = ? Give just the number.",
    "What do you get from {a} {op} {b}? Answer with a single number.",
    "Solve {a} {op} {b}. Respond with the number only.",
]

# the shifted set (Task.shifted_prompts): the held-out questions in phrasings no training prompt uses
SHIFTED_TEMPLATES = [
    "{a} {op} {b} = ?",
    "Quick question: how much is {a} {op} {b}? Only the number, please.",
    "Tell me the value of {a} {op} {b}, as a number and nothing else.",
    "Work out {a} {op} {b} and write only the answer.",
]

_EXPRESSION = re.compile(r"(?<![\w.])(-?\d+)\s*([+*-])\s*(-?\d+)(?!\w|\.\d)")  # "23 + 45", "7*-3"

_APPLY = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}


@register_task("arithmetic")
class Arithmetic(Task):
    default_judge = "exact_answer"

    def __init__(self, config: TaskSection, seed: int):
        self.config = config
        self.seed = seed
        held_out = self._generate("eval", config.eval_size, EVAL_SEED, exclude=set())
        seen = {q.metadata for q in held_out}
        # (no tuning set where the questions would not suffice for it: one-digit tasks keep their training sets)
        room = self._space() >= 2 * config.eval_size + config.train_size
        tuning = self._generate("tuning", config.eval_size, TUNING_SEED, exclude=seen) if room or config.tuning else []
        self._eval = tuning if config.tuning else held_out
        self._train = self._generate("train", config.train_size, seed, exclude=seen | {q.metadata for q in tuning})

    def _generate(self, split: str, n: int, seed: int, exclude: set) -> list[_Question]:
        rng = random.Random(f"arithmetic/{split}/{seed}")
        lo, hi = self._operands()
        space = self._space()
        if n + len(exclude) > space:
            raise ConfigError(
                f"task.train_size/eval_size: asked for {n} {split} questions but only {space - len(exclude)} "
                "distinct arithmetic questions exist with these digits and operations"
            )
        seen = set(exclude)
        out: list[_Question] = []
        while len(out) < n:
            a, b, op = rng.randint(lo, hi), rng.randint(lo, hi), rng.choice(self.config.operations)
            if (a, op, b) in seen:
                continue
            seen.add((a, op, b))
            template = rng.choice(TEMPLATES)
            out.append(
                _Question(
                    f"arith-{split}-{len(out):05d}", template.format(a=a, op=op, b=b), _APPLY[op](a, b), (a, op, b)
                )
            )
        return out

    def _operands(self) -> tuple[int, int]:
        """The smallest and largest operand."""
        return (0 if self.config.digits == 1 else 10 ** (self.config.digits - 1)), 10**self.config.digits - 1

    def _space(self) -> int:
        """How many distinct questions there are."""
        lo, hi = self._operands()
        return (hi - lo + 1) ** 2 * len(self.config.operations)

    def train_prompts(self) -> list[Prompt]:
        return [q.prompt() for q in self._train]

    def eval_prompts(self) -> list[Prompt]:
        return [q.prompt() for q in self._eval]

    def shifted_prompts(self) -> list[Prompt]:
        """The held-out questions again, each in a phrasing no training prompt uses (a fixed choice per question)."""
        rng = random.Random(f"arithmetic/shifted/{EVAL_SEED}")
        out = []
        for n, q in enumerate(self._eval):
            a, op, b = q.metadata
            text = rng.choice(SHIFTED_TEMPLATES).format(a=a, op=op, b=b)
            out.append(_Question(f"arith-shifted-{n:05d}", text, q.answer, q.metadata).prompt())
        return out

    def _expression(self, text: str) -> tuple[int, str, int] | None:
        """The one operation a question asks for, or None (none, or several)."""
        found = _EXPRESSION.findall(text)
        if len(found) != 1:
            return None
        a, op, b = found[0]
        return int(a), op, int(b)

    def problem_key(self, text: str) -> str:
        """A question is its operation: every phrasing of '23 + 45' is one problem."""
        expr = self._expression(text)
        return super().problem_key(text) if expr is None else "{} {} {}".format(*expr)

    def solve(self, text: str) -> str | None:
        expr = self._expression(text)
        return None if expr is None else str(_APPLY[expr[1]](expr[0], expr[2]))


class _Question:
    def __init__(self, prompt_id: str, text: str, answer: int, metadata: tuple):
        self.prompt_id, self.text, self.answer, self.metadata = prompt_id, text, answer, metadata

    def prompt(self) -> Prompt:
        return Prompt(self.prompt_id, [{"role": "user", "content": self.text}], str(self.answer))
