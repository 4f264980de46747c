"""A task supplies training and held-out prompts, and names its default judge."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from iterpo.records import Prompt
from iterpo.registry import Registry

if TYPE_CHECKING:
    from iterpo.config import TaskSection


class Task:
    default_judge: str = "exact_answer"

    if TYPE_CHECKING:
        # Every task is built as cls(config, seed) (build_task); declared for the checker only, so that a task
        # keeps its own __init__ and the base class none.
        def __init__(self, config: TaskSection, seed: int) -> None: ...

    def train_prompts(self) -> list[Prompt]:  # pragma: no cover
        raise NotImplementedError

    def eval_prompts(self) -> list[Prompt]:  # pragma: no cover
        raise NotImplementedError

    def shifted_prompts(self) -> list[Prompt]:
        """Held-out prompts from a shifted distribution (other phrasings, harder instances), judged like the eval
        prompts and never trained on: the eval stage's analyses measure generalisation on them. Default: none."""
        return []

    def problem_key(self, text: str) -> str:
        """What makes two problems the same, so that a generated problem equal to a held-out one is dropped: by
        default the text lower-cased, its punctuation and spacing ignored. Tasks whose problems can be phrased
        several ways key them by their content (arithmetic: the operands and the operation)."""
        return " ".join(re.sub(r"[^\w]+", " ", text.lower()).split())

    def solve(self, text: str) -> str | None:
        """The reference answer of a problem written as text (e.g. one the policy wrote), when the task can work
        it out; None when it cannot."""
        return None


def few_shot_request(request: str, shots: list[dict[str, str]]) -> str:
    """A request conditioned on the asker's labelled preferences (FSPO: Singh et al. 2025, "FSPO: Few-Shot
    Preference Optimization of Synthetic Preference Data in LLMs Elicits Effective Personalization to Real
    Users"): each shot's {prompt, chosen, rejected} shown before the request, so the policy can read from them
    what this user prefers. No shots: the request alone."""
    if not shots:
        return request
    parts = [
        f"Here {'is an earlier request' if len(shots) == 1 else f'are {len(shots)} earlier requests'} of mine, "
        "each with a reply I preferred and one I did not."
    ]
    for shot in shots:
        parts.append(
            f"Request: {shot['prompt']}\nPreferred reply: {shot['chosen']}\nReply I did not prefer: {shot['rejected']}"
        )
    parts.append(f"Now reply to this request the way I would prefer: {request}")
    return "\n\n".join(parts)


TASKS: Registry[type[Task]] = Registry("task")
register_task = TASKS.register
