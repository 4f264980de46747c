"""Sampling speed and round time in one process against 2 Ray workers (run.cluster), on this machine, in one run.

Each configuration runs the same round of the built-in model (one round of
iterative DPO on `--prompts` arithmetic prompts, 8 samples each) into its own
run directory, one after another, and the table compares them with the first:

    python benchmarks/scale.py [--prompts 32] [--out runs/scale]

The runs' rollouts, judgements and reference log-probs are checked to be
byte-identical between configurations of the same thread count per process,
which is what run.cluster promises.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq

CONFIGS = [  # (name, overrides)
    ("1 process, 2 threads (baseline)", ["run.threads=2"]),
    ("1 process, 1 thread", ["run.threads=1"]),
    (
        "2 Ray workers of 1 thread",
        ["run.threads=1", "run.cluster={address: local, workers: 2, cpus_per_worker: 1, threads: 1}"],
    ),
]


def run(name: str, overrides: list[str], out: Path, prompts: int) -> dict:
    run_dir = out / name.split(" (")[0].replace(" ", "-").replace(",", "")
    shutil.rmtree(run_dir, ignore_errors=True)
    sets = [f"run.dir={run_dir}", "run.rounds=1", f"task.train_size={prompts}", *overrides]
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "iterpo", "run", *sum((["--set", s] for s in sets), [])],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    wall = time.perf_counter() - start
    stages = json.loads((run_dir / "manifest.json").read_text())["stages"]
    seconds = {k.split("/")[1]: v["seconds"] for k, v in stages.items() if k.startswith("round-001/")}
    return {
        "name": name,
        "dir": run_dir,
        "wall": wall,
        "round": sum(seconds.values()),
        "seconds": seconds,
        "tokens_per_s": stages["round-001/sample"]["tokens_per_s"],
    }


def rows(run_dir: Path, name: str) -> str:
    return json.dumps(pq.read_table(run_dir / "round-001" / name).to_pylist(), sort_keys=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--out", default="runs/scale")
    args = parser.parse_args()
    out = Path(args.out)
    results = [run(name, overrides, out, args.prompts) for name, overrides in CONFIGS]
    base = results[0]
    print(f"\none round of the built-in default on {args.prompts} prompts x 8 samples, each configuration in turn\n")
    print(
        "| configuration | sampling tokens/s | vs baseline | round s (stages) | vs baseline | command s | "
        "sample / judge / reference / train / eval s |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | --- |")
    for x in results:
        s = x["seconds"]
        stages = " / ".join(f"{s.get(k, 0):.0f}" for k in ("sample", "judge", "reference", "train", "eval"))
        print(
            f"| {x['name']} | {x['tokens_per_s']:.0f} | {x['tokens_per_s'] / base['tokens_per_s']:.2f}x | "
            f"{x['round']:.0f} | {base['round'] / x['round']:.2f}x | {x['wall']:.0f} | {stages} |"
        )
    one, two = results[1]["dir"], results[2]["dir"]
    same = all(rows(one, f) == rows(two, f) for f in ("rollouts.parquet", "judgements.parquet", "ref_logps.parquet"))
    print(
        f"\nrollouts, judgements and reference log-probs identical, 1 process of 1 thread vs 2 workers of 1 thread: "
        f"{same}"
    )


if __name__ == "__main__":
    main()
