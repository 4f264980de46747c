"""Compare losses fairly: one round of the built-in default, the same samples for every loss.

Round 1 is sampled and judged once from the starting model; every loss then
trains on those same rollouts (each building the data its shape needs) with the
default training settings, and is evaluated on the same held-out prompts. The
table gives held-out greedy accuracy after the round, its change from the start,
and each loss's training time relative to DPO's, in one run.

    python benchmarks/compare_losses.py                   # the default set of losses
    python benchmarks/compare_losses.py --losses dpo,ipo  # a chosen set

Each loss's run directory is kept under --out (default runs/compare-losses).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from iterpo import driver
from iterpo.config import load_config
from iterpo.io import read_json
from iterpo.stages import RunContext

DEFAULT_LOSSES = "dpo,cdpo,ipo,nca,apo_zero,simpo,orpo,kto,pro,tpo,sppo_hard"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--losses", default=DEFAULT_LOSSES, help="comma-separated registered loss names")
    parser.add_argument("--out", default="runs/compare-losses")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override for every run")
    args = parser.parse_args()
    out = Path(args.out)
    losses = [x.strip() for x in args.losses.split(",") if x.strip()]

    # the shared first half of the round: samples, judgements, the starting model's eval
    base_cfg = load_config(None, [f"run.dir={out / 'samples'}", "run.rounds=1", *args.set])
    plan, base = driver.open_run(base_cfg)
    ctx = RunContext(plan, base)
    for r, stage in [(1, plan.stage_of_kind("sample")), (1, plan.stage_of_kind("judge")), (0, plan.initial_stages[0])]:
        driver.run_stage(ctx, stage, r)
    base.close()
    start_acc = read_json(base.path(0, "eval.json"))["accuracy"]

    rows = []
    for name in losses:
        cfg = load_config(None, [f"run.dir={out / name}", "run.rounds=1", f"loss.name={name}", *args.set])
        plan, store = driver.open_run(cfg)
        for r, f in [(0, "eval.json"), (1, "rollouts.parquet"), (1, "judgements.parquet")]:
            if store.check(store.path(r, f)) != "ok":
                store.copy_in(base.path(r, f), store.path(r, f))
        began = time.perf_counter()
        driver.run(plan, store)
        store.close()
        times = store.stage_seconds(1)
        rows.append(
            {
                "loss": name,
                "examples": store.manifest()["stages"]["round-001/pair"].get("examples"),
                "acc": read_json(store.path(1, "eval.json"))["accuracy"],
                "train_s": times.get("train", 0.0) + times.get("reference", 0.0),
                "wall_s": time.perf_counter() - began,
            }
        )

    dpo = next((x for x in rows if x["loss"] == "dpo"), rows[0])
    print(
        f"\nstart accuracy {start_acc:.2f}; one round; the same {base_cfg.task.train_size} prompts x "
        f"{base_cfg.sampling.samples_per_prompt} samples for every loss\n"
    )
    print(f"| loss | examples | held-out acc | change | reference + train s | time vs {dpo['loss']} |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for x in rows:
        print(
            f"| {x['loss']} | {x['examples']} | {x['acc']:.2f} | {x['acc'] - start_acc:+.2f} | "
            f"{x['train_s']:.0f} | {x['train_s'] / max(dpo['train_s'], 1e-9):.2f}x |"
        )


if __name__ == "__main__":
    main()
