"""Typed records passed between stages, and their Arrow schemas for the store.

One row is one item with a stable id: a prompt is ``prompt_id``; a rollout is
``(prompt_id, sample_idx)`` within a round.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from typing import Optional

import pyarrow as pa


@dataclass
class Prompt:
    prompt_id: str  # stable across rounds and runs
    messages: list[dict]  # chat messages [{"role": "user", "content": ...}, ...]
    answer: Optional[str] = None  # reference answer for verifiers

    @property
    def text(self) -> str:
        """The last user message, for tables and exports."""
        return self.messages[-1]["content"]


@dataclass
class Rollout:
    prompt_id: str
    sample_idx: int  # 0..K-1 within the prompt
    round: int
    seed: int  # derived from (run seed, round, prompt id, sample index)
    text: str  # decoded response, special tokens removed
    token_ids: list[int]  # (T_resp,) generated tokens, including the final EOS if it stopped
    finish_reason: str  # "stop" (EOS) or "length" (max_new_tokens)


@dataclass
class Judgement:
    prompt_id: str
    sample_idx: int
    judge: str  # judge name
    score: float  # 1.0 correct / 0.0 incorrect for verifiers
    detail: str  # what the judge extracted or why it failed


@dataclass
class Preference:
    prompt_id: str
    chosen_idx: int  # sample_idx of the chosen rollout
    rejected_idx: int  # sample_idx of the rejected rollout
    prompt: str  # the prompt's last user message
    chosen: str  # response texts, the layout TRL reads
    rejected: str
    chosen_score: float
    rejected_score: float


@dataclass
class RefLogp:
    prompt_id: str
    sample_idx: int
    ref_logp: float  # sum of reference token log-probs of the response


SCHEMAS = {
    Rollout: pa.schema(
        [
            ("prompt_id", pa.string()),
            ("sample_idx", pa.int32()),
            ("round", pa.int32()),
            ("seed", pa.int64()),
            ("text", pa.string()),
            ("token_ids", pa.list_(pa.int32())),
            ("finish_reason", pa.string()),
        ]
    ),
    Judgement: pa.schema(
        [
            ("prompt_id", pa.string()),
            ("sample_idx", pa.int32()),
            ("judge", pa.string()),
            ("score", pa.float64()),
            ("detail", pa.string()),
        ]
    ),
    Preference: pa.schema(
        [
            ("prompt_id", pa.string()),
            ("chosen_idx", pa.int32()),
            ("rejected_idx", pa.int32()),
            ("prompt", pa.string()),
            ("chosen", pa.string()),
            ("rejected", pa.string()),
            ("chosen_score", pa.float64()),
            ("rejected_score", pa.float64()),
        ]
    ),
    RefLogp: pa.schema(
        [("prompt_id", pa.string()), ("sample_idx", pa.int32()), ("ref_logp", pa.float64())]
    ),
    Prompt: pa.schema([("prompt_id", pa.string()), ("messages", pa.string()), ("answer", pa.string())]),
}


def to_table(records: list, cls: type) -> pa.Table:
    rows = [asdict(r) for r in records]
    if cls is Prompt:
        for row in rows:
            row["messages"] = json.dumps(row["messages"])
    return pa.Table.from_pylist(rows, schema=SCHEMAS[cls])


def from_table(table: pa.Table, cls: type) -> list:
    names = {f.name for f in fields(cls)}
    out = []
    for row in table.to_pylist():
        row = {k: v for k, v in row.items() if k in names}
        if cls is Prompt:
            row["messages"] = json.loads(row["messages"])
        out.append(cls(**row))
    return out
