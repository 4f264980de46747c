"""Built-in prompt suites with verifiable answers, plus prompts from files."""

from iterpo.tasks import (  # noqa: F401  (register the tasks)
    arithmetic,
    code,
    constraints,
    files,
    synthetic_users,
    tool_tasks,
    word_problems,
)
from iterpo.tasks.base import TASKS, Task, register_task
from iterpo.tasks.files import read_prompts


def build_task(config, seed: int) -> Task:
    return TASKS.get(config.name)(config, seed)


__all__ = ["TASKS", "Task", "build_task", "read_prompts", "register_task"]
