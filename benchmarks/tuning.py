"""Tuning experiments for the built-in default: `iterpo run` with settings changed, scored on the arithmetic
task's tuning set (task.tuning: 100 fixed questions apart from the held-out set and every training set), never
on the held-out set.

    python benchmarks/tuning.py --name baseline                        # the default as it is
    python benchmarks/tuning.py --name lr1e-5 --set train.lr=1e-5      # one experiment (about 5-10 minutes)
    python benchmarks/tuning.py --table                                 # every experiment so far, as a table

Each experiment is a fresh run directory under --dir (default /tmp/iterpo-tuning/NAME) and one line appended
to --results (default benchmarks/tuning.jsonl): its settings, tuning-set accuracy per round (greedy, as the
held-out figure), accuracy on the tuning questions in the 4 phrasings no training prompt uses (the analyses'
shifted set), and the wall time of the whole command (the model's one-time conversion is cached before).
The experiments run one at a time: timings taken side by side on a small machine are wrong.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def run(name: str, overrides: list[str], root: Path, results: Path) -> dict:
    run_dir = root / name
    if run_dir.exists():
        shutil.rmtree(run_dir)
    command = [sys.executable, "-m", "iterpo", "run", "--set", "task.tuning=true", "--set", f"run.dir={run_dir}"]
    for item in overrides:
        command += ["--set", item]
    start = time.perf_counter()
    done = subprocess.run(command)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{name}: iterpo run failed (exit {done.returncode})")
    rounds = sorted(run_dir.glob("round-*/eval.json"))
    evals = [json.loads(p.read_text()) for p in rounds]
    row = {
        "name": name,
        "settings": overrides,
        "accuracy": [e["accuracy"] for e in evals],
        "shifted": [e.get("analyses", {}).get("shifted_accuracy") for e in evals],
        "seconds": round(seconds, 1),
        "date": time.strftime("%Y-%m-%d"),
    }
    with results.open("a") as f:
        f.write(json.dumps(row) + "\n")
    return row


def table(results: Path) -> str:
    rows = [json.loads(x) for x in results.read_text().splitlines() if x.strip()]
    out = [
        "| experiment | settings (beside task.tuning=true) | tuning accuracy by round | shifted phrasings by round "
        "| minutes |",
        "| --- | --- | --- | --- | ---: |",
    ]
    for r in rows:
        acc = " / ".join(f"{a:.2f}" for a in r["accuracy"])
        shifted = " / ".join("-" if s is None else f"{s:.2f}" for s in r["shifted"])
        settings = ", ".join(f"`{s}`" for s in r["settings"]) or "(the default)"
        out.append(f"| {r['name']} | {settings} | {acc} | {shifted} | {r['seconds'] / 60:.1f} |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--name", help="the experiment's name (its run directory and row)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a setting (repeatable)")
    ap.add_argument("--dir", default="/tmp/iterpo-tuning", help="where the run directories go")
    ap.add_argument("--results", default=str(HERE / "tuning.jsonl"))
    ap.add_argument("--table", action="store_true", help="print the table of every experiment and stop")
    args = ap.parse_args()
    results = Path(args.results)
    if args.table:
        print(table(results))
        return
    if not args.name:
        ap.error("--name is required to run an experiment")
    row = run(args.name, args.set, Path(args.dir), results)
    print(json.dumps(row))


if __name__ == "__main__":
    main()
