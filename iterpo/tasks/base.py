"""A task supplies training and held-out prompts, and names its default judge."""

from __future__ import annotations

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


TASKS: Registry[type[Task]] = Registry("task")
register_task = TASKS.register
