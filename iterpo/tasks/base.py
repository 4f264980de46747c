"""A task supplies training and held-out prompts, and names its default judge."""

from __future__ import annotations

from iterpo.records import Prompt
from iterpo.registry import Registry


class Task:
    default_judge: str = "exact_answer"

    def train_prompts(self) -> list[Prompt]:  # pragma: no cover
        raise NotImplementedError

    def eval_prompts(self) -> list[Prompt]:  # pragma: no cover
        raise NotImplementedError


TASKS: Registry[type] = Registry("task")
register_task = TASKS.register
