"""The round table's rows, read from a run directory (``iterpo status`` and the driver print them)."""

from __future__ import annotations

import json

from iterpo.errors import UserInputError
from iterpo.store import RunStore


def round_summary(store: RunStore, r: int) -> dict:
    """One row of the round table (missing or unreadable parts are None)."""
    row = {
        "round": r,
        "accuracy": None,
        "mean_reward": None,
        "pairs": None,
        "skipped": None,
        "mean_loss": None,
        "reward_margin": None,
        "times": store.stage_seconds(r),
        "sample_tokens_per_s": (store.stage_info(r, "sample") or {}).get("tokens_per_s"),
    }

    def read(name: str):
        path = store.path(r, name)
        if not path.exists():
            return None
        try:
            if name.endswith(".parquet"):
                return store.read_parquet(path)
            if name.endswith(".jsonl"):
                return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
            return store.read_json(path)
        except (UserInputError, ValueError, OSError):  # a damaged file: shown as missing; a resume recomputes it
            return None

    evaluation, judgements, prefs, log = (
        read("eval.json"),
        read("judgements.parquet"),
        read("preferences.parquet"),
        read("train.jsonl"),
    )
    if isinstance(evaluation, dict):
        row["accuracy"] = evaluation.get("accuracy")
    if judgements is not None:
        scores = judgements.column("score").to_pylist()
        row["mean_reward"] = sum(scores) / max(1, len(scores))
    if prefs is not None:
        row["pairs"] = prefs.num_rows
        if judgements is not None:
            prompts = set(judgements.column("prompt_id").to_pylist())
            row["skipped"] = len(prompts - set(prefs.column("prompt_id").to_pylist()))
    if log:
        row["mean_loss"] = sum(x["loss"] for x in log) / len(log)
        margins = [x["reward_margin"] for x in log if "reward_margin" in x]
        row["reward_margin"] = sum(margins) / len(margins) if margins else None
    return row
