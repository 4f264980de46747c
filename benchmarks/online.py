"""The cost of a round beyond its stages' work, for online rounds (a few prompts, one optimizer step each).

Runs the built-in default as online iterative DPO: each round samples
``--prompts`` prompts x 4 responses, judges them, pairs them and takes one
optimizer step; the policy is saved every 10 rounds and evaluated after the
last. Every round is timed around the driver's own calls, and its stages
with the manifest's figures, so what is left is the loop's overhead: the
checks that outputs are there and intact, the manifest, the round table:

    python benchmarks/online.py [--rounds 20] [--prompts 4] [--model smollm2-135m-instruct]
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

from iterpo import driver
from iterpo.config import load_config
from iterpo.progress import console, round_table
from iterpo.stages import RunContext
from iterpo.summary import round_summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--prompts", type=int, default=4, help="prompts per round")
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--out", default="runs/online-bench")
    args = ap.parse_args()
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    config = load_config(
        overrides=[
            f"run.dir={out}",
            f"run.rounds={args.rounds}",
            "run.save_every=10",
            f"model.path={args.model}",
            f"sampling.prompts_per_round={args.prompts}",
            "sampling.samples_per_prompt=4",
            "train.epochs=1",
            f"train.batch_size={args.prompts}",  # at most one pair a prompt: one optimizer step a round
            f"eval.every={args.rounds}",
        ]
    )
    plan, store = driver.open_run(config)
    ctx = RunContext(plan, store)
    walls = []
    try:
        for r in range(args.rounds + 1):
            start = time.perf_counter()
            for stage in plan.round(r):
                driver.run_stage(ctx, stage, r)
            shown = range(max(0, r + 1 - driver.TABLE_ROUNDS), r + 1)  # as the driver prints it
            console.print(round_table([round_summary(store, i) for i in shown]))
            walls.append(time.perf_counter() - start)
    finally:
        ctx.close()
        store.close()

    stages = store.manifest()["stages"]
    rows = []
    for r in range(1, args.rounds + 1):
        mine = {k.split("/", 1)[1]: v for k, v in stages.items() if k.startswith(f"round-{r:03d}/")}
        work = sum(v["seconds"] for v in mine.values())
        files = [p for p in store.round_dir(r).rglob("*") if p.is_file() and "checkpoint" not in p.parts]
        size = sum(p.stat().st_size for p in files)  # the stage files (the policy saved every 10 rounds apart)
        rows.append((r, walls[r], work, {k: v["seconds"] for k, v in mine.items()}, size))
    plain = [x for x in rows if "eval" not in x[3] or x[3]["eval"] < 0.1]  # rounds without held-out evaluation
    n = len(plain)
    mean = lambda values: sum(values) / len(values)  # noqa: E731
    kinds = sorted({k for x in plain for k in x[3]})
    print(f"\n{args.rounds} online rounds of {args.prompts} prompts x 4 samples, one optimizer step each")
    print(f"(means over the {n} rounds without held-out evaluation; checkpoints every 10 rounds)\n")
    head = ["round s", "stages s", "overhead s", "overhead share", *(f"{k} s" for k in kinds), "stage files, bytes"]
    print("| " + " | ".join(head) + " |")
    print("| ---: | ---: | ---: | ---: | " + " | ".join("---:" for _ in kinds) + " | ---: |")
    wall, work = mean([x[1] for x in plain]), mean([x[2] for x in plain])
    per_stage = " | ".join(f"{mean([x[3].get(k, 0.0) for x in plain]):.2f}" for k in kinds)
    print(
        f"| {wall:.2f} | {work:.2f} | {wall - work:.3f} | {(wall - work) / wall:.1%} | {per_stage} | "
        f"{mean([x[4] for x in plain]):,.0f} |"
    )
    last = [x for x in plain if x[0] > args.rounds - 5]
    print(f"\noverhead in the last rounds: {', '.join(f'{x[1] - x[2]:.3f}' for x in last)} s")


if __name__ == "__main__":
    main()
