"""Tuning experiments for the built-in default: `iterpo run` with settings changed, scored on the arithmetic
task's tuning set (task.tuning: 100 fixed questions apart from the held-out set and every training set), never
on the held-out set.

    python benchmarks/tuning.py --name baseline                        # the default as it is
    python benchmarks/tuning.py --name lr1e-5 --set train.lr=1e-5      # one experiment (about 5-10 minutes)
    python benchmarks/tuning.py --table                                 # every experiment so far, as a table

Each experiment is a fresh run directory under --dir (default /tmp/iterpo-tuning/NAME) and one line appended
to --results (default benchmarks/tuning.jsonl): its settings, tuning-set accuracy per round (greedy, as the
held-out figure), accuracy on the tuning questions in the 4 phrasings no training prompt uses (the analyses'
shifted set: its first 16 questions), the last round's accuracy on all 100 of them (after the timed run), and
the wall time of the whole command (the model's one-time conversion is cached before). The experiments run one
at a time: timings taken side by side on a small machine are wrong. Once scored, a run keeps only its last
round's checkpoint (a few hundred experiments would otherwise fill a disk).

    python benchmarks/tuning.py --backfill                              # the all-100 figure for older rows
    python benchmarks/tuning.py --errors NAME                           # run NAME's wrong answers, by kind
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
        "shifted": [e.get("shifted_accuracy") for e in evals],
        "seconds": round(seconds, 1),
        "shifted_all": shifted_accuracy(run_dir)[0],
        "date": time.strftime("%Y-%m-%d"),
    }
    for checkpoint in sorted(run_dir.glob("round-*/checkpoint"))[:-1]:
        shutil.rmtree(checkpoint)  # ~0.5 GB a round; --backfill needs only the last, --errors none
    with results.open("a") as f:
        f.write(json.dumps(row) + "\n")
    return row


def shifted_accuracy(run_dir: Path) -> tuple[float, int]:
    """The last round's policy, greedy, on every tuning question in the 4 phrasings no training prompt uses
    (each round's evaluation scores only the first eval.shifted of them: too few to tell settings apart):
    (accuracy, n). Outside the timed run."""
    from iterpo.config import load_config
    from iterpo.judges import make_judge
    from iterpo.models.chat import encode_prompt
    from iterpo.models.device import sampling_dtype
    from iterpo.models.loading import load_policy_checkpoint, load_tokenizer, resolve_model_path
    from iterpo.records import Rollout
    from iterpo.sampling.base import TransformersSampler
    from iterpo.tasks import build_task

    config = load_config(run_dir / "config.yaml")
    last = sorted(run_dir.glob("round-*/checkpoint"))[-1]
    base = resolve_model_path(config.model.path)
    tokenizer = load_tokenizer(base)
    model = load_policy_checkpoint(last, base, config.model.dtype, config.model.lora)
    prompts = build_task(config.task, config.run.seed).shifted_prompts()
    ids = [encode_prompt(tokenizer, p.messages, config.model.system_prompt) for p in prompts]
    e = config.eval
    dtype = sampling_dtype(config.sampling.dtype, config.model.dtype, "cpu")  # as the run's own evaluation
    sampler = TransformersSampler(lambda: model, tokenizer, dtype)
    outs = sampler.generate(ids, None, 1.0, 1.0, e.max_new_tokens, e.batch_size)
    judge = make_judge("exact_answer", {})
    rollouts = [
        Rollout(p.prompt_id, 0, 0, 0, tokenizer.decode(ids, skip_special_tokens=True), list(ids), reason)
        for p, [(ids, reason)] in zip(prompts, outs)
    ]
    scores = [judge.judge(p, [x])[0].score for p, x in zip(prompts, rollouts)]
    return sum(scores) / len(scores), len(scores)


def error_kinds(run_dir: Path) -> list[dict[str, int]]:
    """Per round 1.., the wrong greedy answers by how far they miss the question's answer: a carry added where
    there is none (+10), a carry left out (-10), anything else (or no number); from the eval's items."""
    from iterpo.config import load_config
    from iterpo.tasks import build_task

    config = load_config(run_dir / "config.yaml")
    answers = {p.prompt_id: p.answer for p in build_task(config.task, config.run.seed).eval_prompts()}
    out = []
    for path in sorted(run_dir.glob("round-*/eval.json"))[1:]:
        kinds = {"right": 0, "+10": 0, "-10": 0, "other": 0}
        for item in json.loads(path.read_text())["items"]:
            if item["score"] == 1.0:
                kinds["right"] += 1
                continue
            given, answer = str(item.get("detail") or ""), str(answers[item["prompt_id"]])
            miss = int(given) - int(answer) if given.lstrip("-").isdigit() and answer.lstrip("-").isdigit() else None
            kinds["+10" if miss == 10 else "-10" if miss == -10 else "other"] += 1
        out.append(kinds)
    return out


def table(results: Path) -> str:
    rows = [json.loads(x) for x in results.read_text().splitlines() if x.strip()]
    out = [
        "| experiment | settings (beside task.tuning=true) | tuning accuracy by round | shifted phrasings by round "
        "| last round, all shifted | minutes |",
        "| --- | --- | --- | --- | ---: | ---: |",
    ]
    for r in rows:
        acc = " / ".join(f"{a:.2f}" for a in r["accuracy"])
        shifted = " / ".join("-" if s is None else f"{s:.2f}" for s in r["shifted"])
        settings = ", ".join(f"`{s}`" for s in r["settings"]) or "(the default)"
        every = "-" if r.get("shifted_all") is None else f"{r['shifted_all']:.2f}"
        minutes = f"{r['seconds'] / 60:.1f}" + (f" ({r['note']})" if r.get("note") else "")
        out.append(f"| {r['name']} | {settings} | {acc} | {shifted} | {every} | {minutes} |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--name", help="the experiment's name (its run directory and row)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a setting (repeatable)")
    ap.add_argument("--dir", default="/tmp/iterpo-tuning", help="where the run directories go")
    ap.add_argument("--results", default=str(HERE / "tuning.jsonl"))
    ap.add_argument("--table", action="store_true", help="print the table of every experiment and stop")
    ap.add_argument("--backfill", action="store_true", help="score older rows' runs (still in --dir) on all 100")
    ap.add_argument("--errors", metavar="NAME", help="the wrong answers of run NAME (in --dir) by round, by kind")
    args = ap.parse_args()
    results = Path(args.results)
    if args.table:
        print(table(results))
        return
    if args.errors:
        for r, kinds in enumerate(error_kinds(Path(args.dir) / args.errors), start=1):
            print(f"round {r}: " + ", ".join(f"{k} {v}" for k, v in kinds.items()))
        return
    if args.backfill:
        rows = [json.loads(x) for x in results.read_text().splitlines() if x.strip()]
        for r in rows:
            if r.get("shifted_all") is None and (Path(args.dir) / r["name"] / "config.yaml").exists():
                r["shifted_all"] = shifted_accuracy(Path(args.dir) / r["name"])[0]
                print(r["name"], r["shifted_all"])
        results.write_text("".join(json.dumps(r) + "\n" for r in rows))
        return
    if not args.name:
        ap.error("--name is required to run an experiment")
    row = run(args.name, args.set, Path(args.dir), results)
    print(json.dumps(row))


if __name__ == "__main__":
    main()
