"""The ``file`` task: prompts read from JSONL or parquet files.

Each row has ``prompt`` (text) or ``messages`` (a chat: a list of
{"role", "content"}), an optional ``answer`` used by verifiers, and an optional
``id``. Personalized prompts (FSPO) may add ``user`` (who asks) and
``preferences``, that user's labelled preferences as [{prompt, chosen, rejected}]
texts, shown before the request in its last user message
(iterpo.tasks.base.few_shot_request). Malformed rows fail with the file and line
named.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq

from iterpo.config import TaskSection
from iterpo.errors import ConfigError, DataError, reading
from iterpo.records import Prompt
from iterpo.tasks.base import Task, few_shot_request, register_task


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
        ok = (
            isinstance(messages, list)
            and messages
            and all(
                isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                for m in messages
            )
        )
        if not ok:
            raise DataError(f"{where}: 'messages' must be a non-empty list of {{'role': str, 'content': str}}")
    elif isinstance(row.get("prompt"), str) and row["prompt"].strip():
        messages = [{"role": "user", "content": row["prompt"]}]
    else:
        raise DataError(f"{where}: needs a non-empty text 'prompt' or a 'messages' list")
    answer = row.get("answer")
    if answer is not None and (isinstance(answer, bool) or not isinstance(answer, (str, int, float))):
        raise DataError(f"{where}: 'answer' must be text or a number, got {type(answer).__name__}")
    user, shots = row.get("user"), row.get("preferences")
    if user is not None and not (isinstance(user, str) and user.strip()):
        raise DataError(f"{where}: 'user' must be a non-empty string, got {user!r}")
    if shots is not None:
        keys = ("prompt", "chosen", "rejected")
        if not (
            isinstance(shots, list)
            and all(
                isinstance(x, dict) and all(isinstance(x.get(k), str) and x[k].strip() for k in keys) for x in shots
            )
        ):
            raise DataError(f"{where}: 'preferences' must be a list of {{prompt, chosen, rejected}} texts")
        asks = [i for i, m in enumerate(messages) if m["role"] == "user"]
        if not asks:
            raise DataError(f"{where}: 'preferences' go before a user request; the messages have none")
        last = asks[-1]
        messages = [dict(m) for m in messages]
        messages[last]["content"] = few_shot_request(
            messages[last]["content"], [{k: x[k] for k in keys} for x in shots]
        )
    pid = row.get("id", default_id)
    if pid is None or isinstance(pid, bool) or not isinstance(pid, (str, int)) or not str(pid).strip():
        raise DataError(f"{where}: 'id' must be a non-empty string or an integer, got {pid!r}")
    return Prompt(str(pid), messages, None if answer is None else str(answer), user)


def read_prompts(path: str | Path, limit: int | None = None, id_prefix: str = "p") -> list[Prompt]:
    path = Path(path)
    if not path.exists():
        raise DataError(f"prompt file {path} does not exist")
    if not path.is_file():
        raise DataError(f"prompt file {path} is a directory, not a file")
    prompts: list[Prompt] = []
    if path.suffix == ".parquet":
        with reading("prompt file", path):
            rows = pq.read_table(path).to_pylist()
        for i, row in enumerate(rows):
            prompts.append(_row_to_prompt(row, f"{path} row {i}", f"{id_prefix}-{i:06d}"))
    else:
        with reading("prompt file", path):
            data = path.read_bytes()
        for lineno, raw in enumerate(data.splitlines(), start=1):
            try:
                line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")  # a byte-order mark is accepted
            except UnicodeDecodeError as exc:
                raise DataError(f"{path} line {lineno} is not UTF-8 text (byte {exc.start}: {exc.reason})") from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except (json.JSONDecodeError, RecursionError) as exc:
                why = (
                    f"{exc.msg} (column {exc.colno})" if isinstance(exc, json.JSONDecodeError) else "nested too deeply"
                )
                raise DataError(f"{path} line {lineno} is not valid JSON: {why}") from None
            prompts.append(_row_to_prompt(row, f"{path} line {lineno}", f"{id_prefix}-{len(prompts):06d}"))
    if not prompts:
        raise DataError(f"prompt file {path} holds no prompts")
    seen: set[str] = set()
    for p in prompts:
        if p.prompt_id in seen:
            raise DataError(f"prompt file {path} repeats the id {p.prompt_id!r}; ids must be unique")
        seen.add(p.prompt_id)
    return prompts[:limit]


@register_task("file")
class FilePrompts(Task):
    default_judge = "exact_answer"

    def __init__(self, config: TaskSection, seed: int):
        if config.train_file is None:  # TaskSection requires it for task 'file'; a section built for another may not
            raise ConfigError("task 'file' needs task.train_file")
        self._train = read_prompts(config.train_file, config.train_size, "train")
        self._eval = read_prompts(config.eval_file, config.eval_size, "eval") if config.eval_file else []

    def train_prompts(self) -> list[Prompt]:
        return self._train

    def eval_prompts(self) -> list[Prompt]:
        return self._eval
