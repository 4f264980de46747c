"""The driver: for each round, for each stage of the plan, skip it if its outputs are there and intact, else run it.

Round 0 evaluates the starting model; round r (1-based) runs the plan's
stages, each persisted before the next starts, so a run killed at any moment
resumes where it stopped and writes what an uninterrupted run would have.
Before a stage is skipped its outputs are checked against the checksums
recorded when they were written; a damaged one is set aside and the stage
runs again.
"""

from __future__ import annotations

import time

import torch

from iterpo.config import Config
from iterpo.errors import DamagedFile, RunFailure
from iterpo.plan import UNHASHED, Plan, build_plan
from iterpo.progress import console, round_table
from iterpo.stages import RunContext, Stage
from iterpo.store import RunStore
from iterpo.summary import round_summary
from iterpo.tracking import Tracker, check_available


def open_run(config: Config, force: bool = False) -> tuple[Plan, RunStore]:
    """The plan of a config, then its run directory (created, or reopened when made with the same config), locked.

    The plan comes first: bad input fails before anything is written.
    """
    plan = build_plan(config)
    check_available(config.run.tracking)
    if config.run.dir is None:  # load_config always sets it; a Config built by hand must too
        raise ValueError("config.run.dir is not set; load_config sets it to runs/<config name>")
    return plan, RunStore.open(config.run.dir, plan.config_text(), plan.fingerprint, force, UNHASHED)


TABLE_ROUNDS = 12  # rounds the table printed after each round shows


def run(plan: Plan, store: RunStore) -> list[dict]:
    """Every round of the plan; returns the round table's rows."""
    if plan.config.run.threads:
        torch.set_num_threads(plan.config.run.threads)
    ctx, rounds = RunContext(plan, store), plan.config.run.rounds
    logs = {s.label: s.file("train_log") for s in plan.stages if "train_log" in s.files}
    tracker, finished = Tracker(plan.config.run.tracking, store, logs, plan.resolved), False
    try:
        for r in range(rounds + 1):
            if r:
                console.rule(f"round {r} of {rounds}")
            for stage in plan.round(r):
                run_stage(ctx, stage, r)
            # the last rounds only: reading every round's files again each round would grow with the run
            # (`iterpo status` shows them all)
            shown = [round_summary(store, i) for i in range(max(0, r + 1 - TABLE_ROUNDS), r + 1)]
            console.print(round_table(shown, plan.config.task.tuning))
            tracker.round_done(r)
        finished = True
    finally:
        tracker.close(finished)
        ctx.close()  # a cluster's workers
    return [round_summary(store, i) for i in range(rounds + 1)]


def run_stage(ctx: RunContext, stage: Stage, r: int) -> None:
    """Run a stage unless its outputs are there and intact; time it and record what it reports."""
    store = ctx.store
    outputs = [store.path(r, name) for name in stage.outputs()]
    states = {path: store.check(path) for path in outputs}
    if states[outputs[0]] == "ok" and "damaged" not in states.values():
        return
    # Outputs the run had (damaged, or gone) while later files were made from them: a recomputation must match.
    expected = {
        path: (record, later)
        for path, state in states.items()
        if state in ("damaged", "missing")
        and (record := store.record(path)) is not None
        and (later := store.written_after(path))
    }
    for path in [p for p, state in states.items() if state == "damaged"]:
        aside = store.set_aside(path)
        console.print(
            f"[bold red]{path} is damaged[/bold red] (it does not match the checksum recorded when it "
            f"was written); moved to {aside.name}, and round {r}'s {stage.label} stage runs again"
        )
    start = time.perf_counter()
    try:
        info = stage.run(ctx, r) or {}
    except RunFailure as exc:
        exc.args = (f"round {r}, stage {stage.label}: {exc}",)
        raise
    store.record_stage(r, stage.label, time.perf_counter() - start, **info)
    for path, (record, later) in expected.items():
        if store.recorded_digest(path) != record["digest"]:
            aside = store.set_aside(path, "recomputed")
            store.restore_record(path, record)  # the stage stays undone: every resume refuses, until the user acts
            raise DamagedFile(
                f"{path} was damaged, and computing it again gave different contents (kept as {aside.name}), but "
                f"{len(later)} later files of the run ({', '.join(later[:3])}{', ...' if len(later) > 3 else ''}) "
                "were made from the original. Restore the file from a copy, or delete this round's later outputs and "
                "the later rounds so that they are computed again"
            )
