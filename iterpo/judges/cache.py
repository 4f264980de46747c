"""The run's judgement cache: verdicts keyed by (judge identity, prompt, response[s]).

Resuming a run, re-pairing a round, or meeting the same response again in a
later round never asks a judge twice. Entries live in ``RUN_DIR/judge-cache/``
as parquet shards (key, JSON value); ``flush`` writes the entries added since
the last flush as one new shard, atomically, so a crash loses at most the
verdicts of the prompts judged since then. Failed verdicts are not cached: a
resumed run asks again (a timeout or a server error may not recur). Given the
run store, shards are written with checksums and a damaged shard is set aside
(its verdicts are asked again) instead of read.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pyarrow as pa

from iterpo.io import read_parquet, write_parquet

SCHEMA = pa.schema([("key", pa.string()), ("value", pa.string())])


class JudgeCache:
    def __init__(self, directory: str | Path | None = None, store: Any = None):
        self.directory = Path(directory) if directory is not None else None  # None: in memory only
        self.store = store  # the RunStore: checksums on write and read
        self._entries: dict[str, dict] = {}
        self._new: dict[str, dict] = {}
        self.hits = self.misses = 0
        if self.directory is not None and self.directory.is_dir():
            for shard in sorted(self.directory.glob("shard-*.parquet")):
                self._load(shard)

    def _load(self, shard: Path) -> None:
        state = self.store.check(shard) if self.store is not None else "ok"
        if state == "damaged":
            aside = self.store.set_aside(shard)
            print(
                f"iterpo: judgement cache shard {shard} is damaged (checksum mismatch); moved to {aside.name}, "
                "its verdicts will be asked again",
                file=sys.stderr,
            )
            return
        if state != "ok":  # written by a process killed before it could record it: ignored, asked again
            return
        try:
            table = read_parquet(shard)
            for key, value in zip(table.column("key").to_pylist(), table.column("value").to_pylist()):
                self._entries[key] = json.loads(value)
        except Exception as exc:  # an unreadable shard only costs the verdicts it held
            print(
                f"iterpo: judgement cache shard {shard} cannot be read ({exc}); its verdicts will be asked again",
                file=sys.stderr,
            )

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str) -> dict | None:
        value = self._entries.get(key)
        if value is None:
            self.misses += 1
        else:
            self.hits += 1
        return value

    def peek(self, key: str) -> dict | None:
        """The cached value, without counting a hit or a miss."""
        return self._entries.get(key)

    def put(self, key: str, value: dict) -> None:
        self._entries[key] = value
        self._new[key] = value

    def flush(self) -> None:
        if not self._new or self.directory is None:
            self._new.clear()
            return
        n = len(list(self.directory.glob("shard-*.parquet*"))) if self.directory.is_dir() else 0
        table = pa.Table.from_pylist([{"key": k, "value": json.dumps(v)} for k, v in self._new.items()], schema=SCHEMA)
        path = self.directory / f"shard-{n:06d}.parquet"
        if self.store is not None:
            self.store.write_parquet(path, table)
        else:
            write_parquet(path, table)
        self._new.clear()
