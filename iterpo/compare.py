"""`iterpo compare`: recipes run on equal budgets over several seeds, their held-out scores with bootstrap
confidence intervals.

Each (recipe, seed) is an ordinary run directory, DIR/<recipe>/seed-<s>, run with ``run.seed = s``: running the
comparison again resumes the unfinished ones and skips the finished. Equal budgets are checked before anything
runs: every recipe must have the same task section (the same prompts, training and held-out), the same
rounds, and the same number of policy samples per round (prompts per round x samples per prompt); what the
recipes then spend in policy tokens is measured and shown beside the scores.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from iterpo.config import Config, load_config
from iterpo.errors import UserInputError
from iterpo.store import RunStore

LEVEL = 0.95  # the intervals' confidence
RESAMPLES = 2000  # bootstrap resamples per interval
PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b"]


@dataclass
class Member:
    recipe: str  # the config file's name without .yaml (made unique)
    seed: int
    config: Config
    run_dir: Path  # root/recipe/seed-S


def bootstrap_interval(values: list[float], level: float = LEVEL, resamples: int = RESAMPLES, seed: int = 0):
    """(mean, low, high): the mean of values and its percentile-bootstrap interval (values resampled with
    replacement, the interval's bounds the (1 - level)/2 and (1 + level)/2 quantiles of the resampled means).
    With one value the interval is that value."""
    if not values:
        return None, None, None
    mean = sum(values) / len(values)
    rng = random.Random(seed)
    means = sorted(sum(rng.choices(values, k=len(values))) / len(values) for _ in range(resamples))
    lo = means[int((1 - level) / 2 * (resamples - 1))]
    hi = means[int(round((1 + level) / 2 * (resamples - 1)))]
    return mean, lo, hi


def _names(paths: list[str]) -> list[str]:
    out: list[str] = []
    for p in paths:
        stem = Path(p).stem
        name, n = stem, 2
        while name in out:
            name, n = f"{stem}-{n}", n + 1
        out.append(name)
    return out


def budget(config: Config) -> dict[str, Any]:
    """What must be equal across the recipes compared: the prompts, the rounds, the policy samples per round."""
    s = config.sampling
    per_round = s.prompts_per_round or config.task.train_size
    return {
        "task": config.task.model_dump(mode="json"),
        "rounds": config.run.rounds,
        "policy samples per round": per_round * s.samples_per_prompt,
    }


def plan_members(paths: list[str], seeds: int, root: Path, overrides: list[str]) -> list[Member]:
    """The (recipe, seed) runs, their configs loaded and checked for equal budgets (UserInputError naming what
    differs)."""
    if seeds < 1:
        raise UserInputError(f"--seeds must be at least 1, got {seeds}")
    if not paths:
        raise UserInputError("compare needs at least one config")
    members, budgets = [], {}
    for path, name in zip(paths, _names(paths)):
        for s in range(seeds):
            run_dir = root / name / f"seed-{s}"
            config = load_config(path, [*overrides, f"run.seed={s}", f"run.dir={run_dir}"])
            members.append(Member(name, s, config, run_dir))
        budgets[name] = budget(members[-1].config)
    first, want = next(iter(budgets.items()))
    for name, have in budgets.items():
        for key in want:
            if have[key] != want[key]:
                raise UserInputError(
                    f"compare runs recipes on equal budgets, but {name} and {first} differ in {key}: "
                    f"{have[key]} against {want[key]}. Align them with --set (e.g. --set task.train_size=64)"
                )
    return members


def member_figures(run_dir: Path, rounds: int) -> dict[str, Any]:
    """A finished member's held-out score per round, its wall time (the stages' seconds, summed) and the policy
    tokens its rounds generated."""
    store = RunStore.existing(run_dir)
    manifest = store.manifest() or {}
    stages = manifest.get("stages", {})
    scores = []
    for r in range(rounds + 1):
        path = store.path(r, "eval.json")
        scores.append(json.loads(path.read_text()).get("accuracy") if path.exists() else None)
    tokens = [
        sum(v.get("new_tokens", 0) for k, v in stages.items() if k.startswith(f"round-{r:03d}/"))
        for r in range(1, rounds + 1)
    ]
    return {"scores": scores, "seconds": sum(v.get("seconds", 0.0) for v in stages.values()), "tokens": tokens}


def summarize(members: list[Member], figures: list[dict]) -> dict[str, Any]:
    """Per recipe: per round the mean held-out score over seeds with its bootstrap interval; the mean wall time
    and policy tokens per round."""
    out: dict[str, Any] = {}
    for m, f in zip(members, figures):
        entry = out.setdefault(m.recipe, {"seeds": [], "scores": [], "seconds": [], "tokens": []})
        entry["seeds"].append(m.seed)
        entry["scores"].append(f["scores"])
        entry["seconds"].append(f["seconds"])
        entry["tokens"].append(sum(f["tokens"]) / max(1, len(f["tokens"])))
    for entry in out.values():
        rounds = len(entry["scores"][0])
        entry["rounds"] = [
            dict(zip(("mean", "low", "high"), bootstrap_interval([s[r] for s in entry["scores"] if s[r] is not None])))
            for r in range(rounds)
        ]
        entry["mean_seconds"] = sum(entry["seconds"]) / len(entry["seconds"])
        entry["mean_tokens_per_round"] = sum(entry["tokens"]) / len(entry["tokens"])
    return out


def compare_html(summary: dict[str, Any], title: str, command: str) -> str:
    """A self-contained page: each recipe's held-out score per round, the mean over seeds as a line and its
    interval as a band (Plotly), and the table."""
    import html

    from iterpo.report import page, plot_divs, plotly

    go, _ = plotly()
    traces = []
    for i, (name, entry) in enumerate(summary.items()):
        color = PALETTE[i % len(PALETTE)]
        xs = list(range(len(entry["rounds"])))
        known = [x for x in xs if entry["rounds"][x]["mean"] is not None]
        lo, hi = [entry["rounds"][x]["low"] for x in known], [entry["rounds"][x]["high"] for x in known]
        band = go.Scatter(
            x=known + known[::-1],
            y=hi + lo[::-1],
            fill="toself",
            fillcolor=color,
            opacity=0.15,
            line={"width": 0},
            name=f"{name}: {LEVEL:.0%} interval",
            hoverinfo="skip",
        )
        mean = [entry["rounds"][x]["mean"] for x in known]
        traces += [band, go.Scatter(x=known, y=mean, name=name, mode="lines+markers", line={"color": color})]
    fig = go.Figure(traces)
    fig.update_layout(
        title={"text": "Held-out score", "x": 0.01},
        xaxis={"title": "round", "dtick": 1},
        yaxis={"title": "held-out score"},
        template="plotly_white",
        height=480,
    )
    body = (
        f'<p class="meta">{html.escape(command)}</p>'
        + summary_table_html(summary)
        + f'<div class="plots">{plot_divs([("Held-out score", fig)])}</div>'
    )
    return page(title, body)


def summary_table_html(summary: dict[str, Any]) -> str:
    """The comparison as an HTML table: per recipe, each round's mean score [interval], tokens and time."""
    import html

    rounds = len(next(iter(summary.values()))["rounds"])
    head = "".join(f"<th>round {r}</th>" for r in range(rounds))
    rows = []
    for name, entry in summary.items():
        cells = "".join(f"<td>{_interval(x)}</td>" for x in entry["rounds"])
        rows.append(
            f"<tr><td>{html.escape(name)}</td><td>{len(entry['seeds'])}</td>{cells}"
            f"<td>{entry['mean_tokens_per_round']:.0f}</td><td>{entry['mean_seconds']:.0f}</td></tr>"
        )
    return (
        f'<table class="rounds"><thead><tr><th>recipe</th><th>seeds</th>{head}<th>policy tokens / round</th>'
        f"<th>seconds / run</th></tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )


def _interval(x: dict) -> str:
    if x["mean"] is None:
        return "-"
    return f"{x['mean']:.3f} [{x['low']:.3f}, {x['high']:.3f}]"


def summary_table(summary: dict[str, Any]):
    """The comparison as a rich table for the terminal."""
    from rich.table import Table

    rounds = len(next(iter(summary.values()))["rounds"])
    table = Table(title=f"iterpo compare: held-out score, mean over seeds [{LEVEL:.0%} bootstrap interval]")
    for name in ["recipe", "seeds", *[f"round {r}" for r in range(rounds)], "policy tokens / round", "s / run"]:
        table.add_column(name, justify="left" if name == "recipe" else "right")
    for name, entry in summary.items():
        table.add_row(
            name,
            str(len(entry["seeds"])),
            *[_interval(x) for x in entry["rounds"]],
            f"{entry['mean_tokens_per_round']:.0f}",
            f"{entry['mean_seconds']:.0f}",
        )
    return table


def run_compare(paths: list[str], seeds: int, root: str | Path, overrides: list[str], command: str) -> dict:
    """Run (or resume) every (recipe, seed) under root, then write root/compare.json and root/compare.html;
    the summary."""
    from iterpo import driver
    from iterpo.io import write_json, write_text
    from iterpo.progress import console

    root = Path(root)
    members = plan_members(paths, seeds, root, overrides)  # bad configs or unequal budgets fail before any run
    figures = []
    for i, m in enumerate(members, start=1):
        console.rule(f"compare: {m.recipe}, seed {m.seed} ({i} of {len(members)})")
        plan, store = driver.open_run(m.config)
        try:
            driver.run(plan, store)
        finally:
            store.close()
        figures.append(member_figures(m.run_dir, m.config.run.rounds))
    summary = summarize(members, figures)
    write_json(root / "compare.json", {"command": command, "level": LEVEL, "recipes": summary})
    write_text(root / "compare.html", compare_html(summary, f"iterpo compare: {', '.join(summary)}", command))
    console.print(summary_table(summary))
    console.print(f"written: {root / 'compare.json'} and {root / 'compare.html'}")
    return summary
