"""The round table's rows, read from a run directory (``iterpo status`` and the driver print them)."""

from __future__ import annotations

import json

from iterpo.errors import UserInputError
from iterpo.store import RunStore


def round_files(store: RunStore, r: int) -> dict:
    """What the round table reads of round r: eval.json, the sampled responses, the judgements and preferences
    (tables) and the training log; a missing or damaged file is None (a resume recomputes it)."""

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
        except (UserInputError, ValueError, OSError):
            return None

    return {
        "eval": read("eval.json"),
        "rollouts": read("rollouts.parquet"),
        "judgements": read("judgements.parquet"),
        "preferences": read("preferences.parquet"),
        "log": read("train.jsonl"),
    }


def round_summary(store: RunStore, r: int, files: dict | None = None) -> dict:
    """One row of the round table (missing or unreadable parts are None), with the round's analyses ({} when
    none); files: round_files(store, r) when the caller has read them already."""
    row = {
        "round": r,
        "accuracy": None,
        "shifted_accuracy": None,
        "mean_reward": None,
        "pairs": None,
        "skipped": None,
        "mean_loss": None,
        "reward_margin": None,
        "times": store.stage_seconds(r),
        "sample_tokens_per_s": (store.stage_info(r, "sample") or {}).get("tokens_per_s"),
        "analyses": {},
    }
    files = files if files is not None else round_files(store, r)
    evaluation, judgements, prefs, log = files["eval"], files["judgements"], files["preferences"], files["log"]
    if isinstance(evaluation, dict):
        row["accuracy"] = evaluation.get("accuracy")
        analyses = evaluation.get("analyses") or {}
        row["analyses"] = analyses
        # runs made before eval.shifted have the figure in their analyses only
        row["shifted_accuracy"] = evaluation.get("shifted_accuracy", analyses.get("shifted_accuracy"))
    if judgements is not None:
        row["mean_reward"] = mean_sample_reward(judgements, files.get("rollouts"))
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


def mean_sample_reward(judgements, rollouts) -> float:
    """The mean score of the round's sampled responses: the judgements of the sample stage's rollouts when that
    file is there, so responses a later stage added (rationalize keeps only right ones) do not move it; else of
    every judgement."""
    scores = judgements.column("score").to_pylist()
    if rollouts is not None:
        sampled = set(zip(rollouts.column("prompt_id").to_pylist(), rollouts.column("sample_idx").to_pylist()))
        keys = zip(judgements.column("prompt_id").to_pylist(), judgements.column("sample_idx").to_pylist())
        scores = [s for key, s in zip(keys, scores) if key in sampled]
    return sum(scores) / max(1, len(scores))
