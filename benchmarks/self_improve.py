"""Self-improvement recipes on the built-in model against plain iterative DPO on the same budget of policy tokens,
and how often the 135M model's revisions are well-formed, in one table.

Five runs of 3 rounds, each into its own directory under ``--out`` (a finished
run is read, not run again; an interrupted one resumes):

- on ``arithmetic`` (two-digit sums, the default task): ``dpo``, the default
  recipe with 8 samples per prompt; ``evolve`` (configs/evolve.yaml) with 4
  samples each revised once; ``sphere`` (configs/sphere.yaml) with 6 samples
  and up to 2 wrong ones corrected: at most 8 generations per prompt each;
- on ``code`` (small Python functions, hidden tests in the sandbox):
  ``dpo_code``, plain iterative DPO with 8 samples, and ``tool_feedback``
  (configs/tool_feedback.yaml) with 4 samples and up to 2 failing ones revised
  from the tests' error, up to twice: at most 8 generations per prompt.

The table gives held-out score after rounds 0-3 and the policy tokens each
round generated per training prompt (samples and revisions), measured rather
than assumed; the second table what the revisions were: with an answer the
judge could read (a number; code that parses), unchanged from the answer they
revise, corrections (wrong to right) and breakages (right to wrong).

    python benchmarks/self_improve.py [--out runs/self-improve] [--train-size 32] [--code-train-size 16]

Noise: accuracy on 100 held-out prompts has a binomial standard error of
about 0.05 near 0.5; differences under about 0.1 between two single runs mean
little.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pyarrow.parquet as pq
import yaml
from recipe_runs import accuracy, run

REPO = Path(__file__).resolve().parent.parent
ROUNDS = 3


def recipe(name: str) -> dict:
    return yaml.safe_load((REPO / "configs" / f"{name}.yaml").read_text())


def refine_stage(cfg: dict) -> dict:
    return next(s for s in cfg["round"]["stages"] if isinstance(s, dict) and s.get("stage") == "refine")


def tokens_per_prompt(run_dir: Path) -> list[float]:
    """Per round, the policy tokens its sampling and refinement stages generated, per training prompt."""
    stages = json.loads((run_dir / "manifest.json").read_text())["stages"]
    out = []
    for r in range(1, ROUNDS + 1):
        rows = pq.read_table(run_dir / f"round-{r:03d}" / "rollouts.parquet")
        prompts = len(set(rows.column("prompt_id").to_pylist()))
        made = sum(
            v.get("new_tokens", 0)
            for k, v in stages.items()
            if k.startswith(f"round-{r:03d}/") and k.split("/")[1] in ("sample", "refine")
        )
        out.append(made / prompts)
    return out


def seconds(run_dir: Path) -> float:
    stages = json.loads((run_dir / "manifest.json").read_text())["stages"]
    return sum(v.get("seconds", 0.0) for v in stages.values())


def revisions(run_dir: Path, readable) -> dict[str, float]:
    """Over all rounds: how many revisions there were and what they did (shares of them)."""
    n = readable_n = same = fixed = broke = 0
    for r in range(1, ROUNDS + 1):
        rows = pq.read_table(run_dir / f"round-{r:03d}" / "refined_rollouts.parquet").to_pylist()
        verdicts = {
            (j["prompt_id"], j["sample_idx"]): j
            for j in pq.read_table(run_dir / f"round-{r:03d}" / "judgements_refine.parquet").to_pylist()
        }
        by_key = {(x["prompt_id"], x["sample_idx"]): x for x in rows}
        for x in rows:
            if x["parent"] is None:
                continue
            key, parent = (x["prompt_id"], x["sample_idx"]), (x["prompt_id"], x["parent"])
            mine, theirs = verdicts[key], verdicts[parent]
            n += 1
            readable_n += readable(mine)
            same += x["text"].strip() == by_key[parent]["text"].strip()
            fixed += theirs["score"] < 1 <= mine["score"]
            broke += mine["score"] < 1 <= theirs["score"]
    share = (lambda k: k / n) if n else (lambda k: 0.0)
    return {"n": n, "readable": share(readable_n), "same": share(same), "fixed": share(fixed), "broke": share(broke)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="runs/self-improve")
    ap.add_argument("--train-size", type=int, default=32, help="arithmetic training prompts a round")
    ap.add_argument("--code-train-size", type=int, default=16, help="code training prompts a round")
    ap.add_argument("--eval-size", type=int, default=100)
    ap.add_argument("--code-eval-size", type=int, default=40)
    args = ap.parse_args()
    out = Path(args.out)

    def arith(cfg: dict) -> dict:
        cfg["task"] = {**cfg["task"], "train_size": args.train_size, "eval_size": args.eval_size}
        return cfg

    def code(cfg: dict) -> dict:
        cfg["task"] = {**cfg["task"], "train_size": args.code_train_size, "eval_size": args.code_eval_size}
        cfg["sampling"] = {**cfg["sampling"], "max_new_tokens": 96}
        cfg["eval"] = {**cfg.get("eval", {}), "max_new_tokens": 96}
        return cfg

    dpo = arith(recipe("default"))
    evolve = arith(recipe("evolve"))
    refine_stage(evolve)["steps"] = 1  # 4 samples + 4 revisions: 8 generations a prompt
    sphere = arith(recipe("sphere"))  # 6 samples + at most 2 corrections
    feedback = code(recipe("tool_feedback"))  # 4 samples + at most 2 x 2 revisions
    plain_code = code(recipe("tool_feedback"))
    plain_code["round"] = {"stages": None}
    plain_code["sampling"]["samples_per_prompt"] = 8
    plain_code["pairing"] = {"strategy": "correct_vs_incorrect", "pairs_per_prompt": 2}

    arms = [
        ("dpo", "arithmetic: plain iterative DPO, 8 samples", dpo),
        ("evolve", "arithmetic: EVOLVE, 4 samples each revised once, both formats", evolve),
        ("sphere", "arithmetic: SPHERE, 6 samples, up to 2 wrong ones corrected", sphere),
        ("dpo_code", "code: plain iterative DPO, 8 samples", plain_code),
        ("tool_feedback", "code: revision from the tests' error, 4 samples, up to 2 x 2 revisions", feedback),
    ]
    dirs = {name: run(name, cfg, out, ROUNDS) for name, _, cfg in arms}

    print(
        f"\n3 rounds each; arithmetic: {args.train_size} training prompts a round, {args.eval_size} held-out; "
        f"code: {args.code_train_size} training prompts a round, {args.code_eval_size} held-out"
    )
    print(
        "| run | held-out score after rounds 0 / 1 / 2 / 3 | policy tokens per prompt, rounds 1 / 2 / 3 "
        "| pairs a round | minutes |"
    )
    print("| --- | --- | --- | --- | ---: |")
    for name, label, _ in arms:
        d = dirs[name]
        pairs = [len(pq.read_table(d / f"round-{r:03d}" / "preferences.parquet")) for r in range(1, ROUNDS + 1)]
        print(
            f"| {label} | {' / '.join(f'{a:.2f}' for a in accuracy(d, ROUNDS))} "
            f"| {' / '.join(f'{t:.0f}' for t in tokens_per_prompt(d))} | {' / '.join(map(str, pairs))} "
            f"| {seconds(d) / 60:.1f} |"
        )

    print("\nthe revisions, all rounds together (shares of the revisions)")
    print("| run | revisions | judge could read an answer | unchanged | wrong -> right | right -> wrong |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    number = lambda j: j["detail"] != "no number"  # noqa: E731  (exact_answer found a number)
    parses = lambda j: not any(e in j["detail"] for e in ("SyntaxError", "IndentationError", "no code"))  # noqa: E731
    for name, readable in (("evolve", number), ("sphere", number), ("tool_feedback", parses)):
        s = revisions(dirs[name], readable)
        print(f"| {name} | {s['n']} | {s['readable']:.2f} | {s['same']:.2f} | {s['fixed']:.3f} | {s['broke']:.3f} |")


if __name__ == "__main__":
    main()
