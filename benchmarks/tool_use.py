"""Tool use on the built-in model: the tool-use recipe against the same model without tools, and what a tree
search costs, in one table.

Three runs on the big_arithmetic task (products and sums of numbers too large
to work out in one's head), each into its own directory under ``--out`` (a
finished run is read, not run again; an interrupted one resumes):

- ``tool_dpo``: configs/tool_dpo.yaml, 3 rounds of iterative DPO on calculator
  episodes; held-out accuracy with the calculator after rounds 0-3;
- ``no_tools``: the same config without the environment: plain iterative DPO
  on the same prompts, samples and training settings; round 0 is the model
  without tools;
- ``tree``: configs/sport.yaml for one round (tree search over calculator
  turns): the search's policy calls (steps and completions sampled) and new
  tokens per prompt, next to what tool_dpo's sampling spends per prompt.

    python benchmarks/tool_use.py [--out runs/tool-use] [--train-size 64] [--eval-size 100]

Noise: accuracy on 100 held-out prompts has a binomial standard error of
about 0.05 near 0.5; differences under about 0.1 between two single runs mean
little.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import yaml

REPO = Path(__file__).resolve().parent.parent


def run(name: str, cfg: dict, out: Path, rounds: int) -> Path:
    """Run cfg (resuming or reading a finished run) into out/name; its directory."""
    run_dir = out / name
    cfg["run"] = {**cfg.get("run", {}), "dir": str(run_dir), "rounds": rounds}
    if not (run_dir / f"round-{rounds:03d}" / "eval.json").is_file():
        out.mkdir(parents=True, exist_ok=True)
        path = out / f"{name}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        verb = "resume" if (run_dir / "manifest.json").is_file() else "run"
        cmd = [sys.executable, "-m", "iterpo", verb, str(run_dir if verb == "resume" else path)]
        print("$", " ".join(cmd[1:]), flush=True)
        subprocess.run(cmd, check=True)
    return run_dir


def accuracy(run_dir: Path, rounds: int) -> list[float]:
    return [json.loads((run_dir / f"round-{r:03d}" / "eval.json").read_text())["accuracy"] for r in range(rounds + 1)]


def tool_calls(run_dir: Path, rounds: int) -> list[float]:
    """Mean tool calls per held-out answer after each round."""
    out = []
    for r in range(rounds + 1):
        items = json.loads((run_dir / f"round-{r:03d}" / "eval.json").read_text())["items"]
        out.append(sum(x.get("tool_calls", 0) for x in items) / max(1, len(items)))
    return out


def sampling_cost(run_dir: Path, r: int) -> tuple[float, float]:
    """Round r's sampling: (policy calls, new tokens) per prompt; an episode's turns are one call each."""
    rows = pq.read_table(run_dir / f"round-{r:03d}" / "rollouts.parquet").to_pylist()
    prompts = len({x["prompt_id"] for x in rows})
    calls = sum(max(1, len(x["step_ends"])) for x in rows)
    tokens = sum(sum(x["policy_mask"]) if x["policy_mask"] else len(x["token_ids"]) for x in rows)
    return calls / prompts, tokens / prompts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="runs/tool-use")
    ap.add_argument("--train-size", type=int, default=64)
    ap.add_argument("--eval-size", type=int, default=100)
    ap.add_argument("--tree-prompts", type=int, default=16, help="training prompts of the tree search run")
    args = ap.parse_args()
    out, rounds = Path(args.out), 3
    tools = yaml.safe_load((REPO / "configs" / "tool_dpo.yaml").read_text())
    tools["task"].update(train_size=args.train_size, eval_size=args.eval_size)
    plain = {k: v for k, v in tools.items() if k != "environment"}
    tree = yaml.safe_load((REPO / "configs" / "sport.yaml").read_text())
    tree["task"].update(train_size=args.tree_prompts, eval_size=args.eval_size)

    with_tools = run("tool_dpo", tools, out, rounds)
    without = run("no_tools", plain, out, rounds)
    searched = run("tree", tree, out, 1)

    print(f"\nbig_arithmetic, {args.train_size} training prompts x 8 samples a round, {args.eval_size} held-out")
    print("| run | held-out accuracy after rounds 0 / 1 / 2 / 3 | tool calls per answer, round 0 / 3 |")
    print("| --- | --- | --- |")
    for label, run_dir in (
        ("tool_dpo: iterative DPO on calculator episodes", with_tools),
        ("no tools: plain iterative DPO, same prompts and settings", without),
    ):
        acc, calls = accuracy(run_dir, rounds), tool_calls(run_dir, rounds)
        print(f"| {label} | {' / '.join(f'{a:.2f}' for a in acc)} | {calls[0]:.2f} / {calls[-1]:.2f} |")

    stage = json.loads((searched / "manifest.json").read_text())["stages"]["round-001/tree_search"]
    nodes = stage["nodes"] / args.tree_prompts
    calls, tokens = sampling_cost(with_tools, 1)
    print("\nwhat round 1's responses cost per training prompt")
    print("| sampling | policy calls per prompt | new tokens per prompt | responses per prompt |")
    print("| --- | ---: | ---: | ---: |")
    print(f"| tool_dpo: 8 episodes | {calls:.1f} | {tokens:.0f} | 8 |")
    print(
        f"| sport: tree search over turns ({tree['round']['stages'][0]['simulations']} simulations) | "
        f"{stage['policy_calls'] / args.tree_prompts:.1f} | {stage['tokens_per_prompt']:.0f} | {nodes:.1f} nodes |"
    )
    print(
        f"\ntree search: {stage['seconds']:.0f} s for {args.tree_prompts} prompts; "
        f"sport's held-out accuracy after its round: {accuracy(searched, 1)[1]:.2f}"
    )


if __name__ == "__main__":
    main()
