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
  turns), and ``mcts``: configs/mcts_dpo.yaml for one round (tree search over
  the lines of a plain arithmetic answer): each search's policy calls (steps
  and completions sampled) and new tokens per prompt, next to what tool_dpo's
  sampling spends per prompt.

    python benchmarks/tool_use.py [--out runs/tool-use] [--train-size 64] [--eval-size 100]

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


def tool_calls(run_dir: Path, rounds: int) -> list[float]:
    """Mean tool calls per held-out answer after each round."""
    out = []
    for r in range(rounds + 1):
        items = json.loads((run_dir / f"round-{r:03d}" / "eval.json").read_text())["items"]
        out.append(sum(x.get("tool_calls", 0) for x in items) / max(1, len(items)))
    return out


def sampled(run_dir: Path, rounds: int) -> list[tuple[float, float]]:
    """Per round, of the responses sampled for training: (share that called the tool, share judged correct)."""
    out = []
    for r in range(1, rounds + 1):
        rows = pq.read_table(run_dir / f"round-{r:03d}" / "rollouts.parquet").to_pylist()
        verdicts = pq.read_table(run_dir / f"round-{r:03d}" / "judgements.parquet").column("score").to_pylist()
        out.append((sum(bool(x["observations"]) for x in rows) / len(rows), sum(v >= 1 for v in verdicts) / len(rows)))
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
    lines = yaml.safe_load((REPO / "configs" / "mcts_dpo.yaml").read_text())
    lines["task"].update(train_size=args.tree_prompts, eval_size=args.eval_size)
    mcts = run("mcts", lines, out, 1)

    print(f"\nbig_arithmetic, {args.train_size} training prompts x 8 samples a round, {args.eval_size} held-out")
    print(
        "| run | held-out accuracy after rounds 0 / 1 / 2 / 3 | tool calls per held-out answer, round 0 / 3 "
        "| sampled responses with a call, rounds 1 / 2 / 3 | sampled responses correct, rounds 1 / 2 / 3 |"
    )
    print("| --- | --- | --- | --- | --- |")
    for label, run_dir in (
        ("tool_dpo: iterative DPO on calculator episodes", with_tools),
        ("no tools: plain iterative DPO, same prompts and settings", without),
    ):
        acc, calls, drawn = accuracy(run_dir, rounds), tool_calls(run_dir, rounds), sampled(run_dir, rounds)
        print(
            f"| {label} | {' / '.join(f'{a:.2f}' for a in acc)} | {calls[0]:.2f} / {calls[-1]:.2f} "
            f"| {' / '.join(f'{c:.3f}' for c, _ in drawn)} | {' / '.join(f'{k:.3f}' for _, k in drawn)} |"
        )

    calls, tokens = sampling_cost(with_tools, 1)
    print("\nwhat round 1's responses cost per training prompt")
    print("| sampling | policy calls per prompt | new tokens per prompt | responses per prompt | seconds |")
    print("| --- | ---: | ---: | ---: | ---: |")
    stages = json.loads((with_tools / "manifest.json").read_text())["stages"]
    print(f"| tool_dpo: 8 episodes | {calls:.1f} | {tokens:.0f} | 8 | {stages['round-001/sample']['seconds']:.0f} |")
    for label, cfg, run_dir in (
        ("sport: tree search over calculator turns", tree, searched),
        ("mcts_dpo: tree search over lines", lines, mcts),
    ):
        stage = json.loads((run_dir / "manifest.json").read_text())["stages"]["round-001/tree_search"]
        search = cfg["round"]["stages"][0]
        print(
            f"| {label} ({search['simulations']} simulations, {search['children']} children) | "
            f"{stage['policy_calls'] / args.tree_prompts:.1f} | {stage['tokens_per_prompt']:.0f} | "
            f"{stage['nodes'] / args.tree_prompts:.1f} nodes | {stage['seconds']:.0f} |"
        )
    print(
        f"\nheld-out accuracy after the one round: sport {accuracy(searched, 1)[1]:.2f} (big_arithmetic), "
        f"mcts_dpo {accuracy(mcts, 1)[0]:.2f} -> {accuracy(mcts, 1)[1]:.2f} (arithmetic)"
    )


if __name__ == "__main__":
    main()
