"""The ``file`` task: prompts read from JSONL or parquet files.

Each row has ``prompt`` (text) or ``messages`` (a chat: a list of
{"role", "content"}), an optional ``answer`` used by verifiers, and an optional
``id``. Malformed rows fail with the file and line named.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from iterpo.config import TaskSection
from iterpo.errors import DataError
from iterpo.records import Prompt
from iterpo.tasks.base import Task, register_task


def _row_to_prompt(row: dict, where: str, default_id: str) -> Prompt:
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected an object with 'prompt' or 'messages', got {type(row).__name__}")
    if "messages" in row and row["messages"] is not None:
        messages = row["messages"]
        if isinstance(messages, str):
            try:
                messages = json.loads(messages)
            except json.JSONDecodeError as exc:
                raise DataError(f"{where}: 'messages' is a string but not JSON ({exc})") from None
        ok = isinstance(messages, list) and messages and all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in messages
        )
        if not ok:
            raise DataError(f"{where}: 'messages' must be a non-empty list of {{'role': str, 'content': str}}")
    elif isinstance(row.get("prompt"), str) and row["prompt"].strip():
        messages = [{"role": "user", "content": row["prompt"]}]
    else:
        raise DataError(f"{where}: needs a non-empty text 'prompt' or a 'messages' list")
    answer = row.get("answer")
    pid = row.get("id", default_id)
    return Prompt(str(pid), messages, None if answer is None else str(answer))


def read_prompts(path: str | Path, limit: Optional[int] = None, id_prefix: str = "p") -> list[Prompt]:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"prompt file {path} does not exist")
    prompts: list[Prompt] = []
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            rows = pq.read_table(path).to_pylist()
        except Exception as exc:  # pyarrow raises several types for corrupt files
            raise DataError(f"prompt file {path} is not a readable parquet file: {exc}") from None
        for i, row in enumerate(rows):
            prompts.append(_row_to_prompt(row, f"{path} row {i}", f"{id_prefix}-{i:06d}"))
    else:
        with path.open() as f:
            for lineno, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DataError(f"{path} line {lineno} is not valid JSON: {exc.msg} (column {exc.colno})") from None
                prompts.append(_row_to_prompt(row, f"{path} line {lineno}", f"{id_prefix}-{len(prompts):06d}"))
    if not prompts:
        raise DataError(f"prompt file {path} holds no prompts")
    ids = [p.prompt_id for p in prompts]
    if len(set(ids)) != len(ids):
        raise DataError(f"prompt file {path} repeats an 'id'; ids must be unique")
    return prompts[:limit]


@register_task("file")
class FilePrompts(Task):
    default_judge = "exact_answer"

    def __init__(self, config: TaskSection, seed: int):
        self._train = read_prompts(config.train_file, config.train_size, "train")
        self._eval = read_prompts(config.eval_file, config.eval_size, "eval") if config.eval_file else []

    def train_prompts(self) -> list[Prompt]:
        return self._train

    def eval_prompts(self) -> list[Prompt]:
        return self._eval
