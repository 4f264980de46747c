"""`iterpo report`: one self-contained HTML page about a run, read from its directory alone.

The page has the round table; plots per round of held-out score, reward, training loss and margin, the
analyses' KL, ranking accuracies, win rate, length and diversity; the stage times; a browser of prompts with
their samples, verdicts, chosen and rejected responses (filtered in the page); and the config and manifest.

Plots are made with Plotly (the ``report`` extra): each figure is a small JSON spec drawn by plotly.js, which
the page carries inline, so it opens without a network, and the reader can hover a point for its value or
hide a curve. The page needs no model, tokenizer or judge: it reads the files the stages wrote, and shows
what a run in progress has so far.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

import yaml

from iterpo.errors import UserInputError
from iterpo.store import RunStore
from iterpo.summary import round_files, round_summary

PLOT_HEIGHT = 320
# (plot title, y-axis title, [(figure key in eval.json's analyses or the round row, legend name)])
ROUND_PLOTS = [
    ("Held-out score", "accuracy", [("accuracy", "held-out"), ("shifted_accuracy", "shifted prompts")]),
    ("Mean reward of the round's samples", "reward", [("mean_reward", "mean reward")]),
    (
        "KL to the reference and to the starting model",
        "nats per response",
        [
            ("kl_reference", "KL(π ‖ reference)"),
            ("kl_initial", "KL(π ‖ starting model)"),
        ],
    ),
    (
        "Ranking accuracy on held-out pairs",
        "share of pairs",
        [
            ("ranking_accuracy", "R(π)"),
            ("ranking_accuracy_ideal", "R* (DPO optimum)"),
            ("implicit_reward_accuracy", "implicit reward"),
            ("shifted_ranking_accuracy", "R(π), shifted"),
            ("shifted_implicit_reward_accuracy", "implicit reward, shifted"),
        ],
    ),
    ("Win rate against the starting model", "win rate", [("win_rate_vs_initial", "under the run's judge")]),
    ("Response length", "tokens", [("length", "greedy (held-out)"), ("sample_length", "samples (temperature 1)")]),
    (
        "Diversity of samples",
        "distinct n-grams / n-grams",
        [("distinct_1", "distinct-1"), ("distinct_2", "distinct-2")],
    ),
]
STEP_PLOTS = [("Training loss per step", "loss", "loss"), ("Reward margin per step", "margin", "reward_margin")]


def plotly():
    try:
        import plotly.graph_objects as go
        import plotly.offline
    except ImportError:
        raise UserInputError(
            "iterpo report draws its plots with Plotly: pip install 'iterpo[report]' (or pip install plotly)"
        ) from None
    return go, plotly.offline


def _read_table(store: RunStore, path: Path) -> list[dict]:
    if not path.exists():
        return []
    try:
        return store.read_parquet(path).to_pylist()
    except (UserInputError, ValueError, OSError):
        return []


def collect(store: RunStore, rounds: int) -> list[dict]:
    """Per round 0..rounds: the round table's row, with the eval's analyses and the training log beside it."""
    out = []
    for r in range(rounds + 1):
        files = round_files(store, r)  # read once for the row, the items and the log
        row = round_summary(store, r, files)
        row["eval_items"] = (files["eval"] if isinstance(files["eval"], dict) else {}).get("items") or []
        row["log"] = files["log"] or []
        out.append(row)
    return out


def _figure(go, title: str, ytitle: str, traces: list, rounds: int | None = None, barmode: str | None = None):
    """A figure of traces: over rounds 0..rounds (the run's, so that every plot has the same axis), or over the
    optimizer steps when rounds is None."""
    fig = go.Figure(traces)
    xaxis: dict[str, Any] = {"title": "optimizer step (all rounds)"}
    if rounds is not None:
        xaxis = {"title": "round", "dtick": 1, "range": [-0.3, rounds + 0.3]}
    fig.update_layout(
        title={"text": title, "x": 0.01},
        height=PLOT_HEIGHT,
        margin={"l": 60, "r": 20, "t": 50, "b": 45},
        xaxis=xaxis,
        yaxis={"title": ytitle},
        legend={"orientation": "h", "y": -0.25},
        template="plotly_white",
        barmode=barmode,
    )
    return fig


def figures(rows: list[dict]) -> list[tuple[str, Any]]:
    """(anchor, plotly figure) for every plot that has data: a plot with nothing to show is left out."""
    go, _ = plotly()
    rounds = len(rows) - 1
    out = []
    for title, ytitle, series in ROUND_PLOTS:
        traces = []
        for key, name in series:
            points = [(row["round"], row.get(key, row["analyses"].get(key))) for row in rows]
            points = [(x, y) for x, y in points if isinstance(y, (int, float))]
            if points:
                traces.append(
                    go.Scatter(x=[x for x, _ in points], y=[y for _, y in points], name=name, mode="lines+markers")
                )
        if traces:
            out.append((title, _figure(go, title, ytitle, traces, rounds)))
    for title, ytitle, key in STEP_PLOTS:
        traces = []
        step = 0
        for row in rows:
            xs, ys = [], []
            for entry in row["log"]:
                step += 1
                if isinstance(entry.get(key), (int, float)):
                    xs.append(step)
                    ys.append(entry[key])
            if xs:
                traces.append(go.Scatter(x=xs, y=ys, name=f"round {row['round']}", mode="lines"))
        if traces:
            out.append((title, _figure(go, title, ytitle, traces)))
    stages = list(dict.fromkeys(stage for row in rows for stage in row["times"]))
    if stages:
        bars = [
            go.Bar(x=[row["round"] for row in rows], y=[row["times"].get(stage, 0.0) for row in rows], name=stage)
            for stage in stages
        ]
        out.append(("Stage times", _figure(go, "Stage times", "seconds", bars, rounds, barmode="stack")))
    return out


def _anchor(title: str) -> str:
    return "plot-" + "".join(c if c.isalnum() else "-" for c in title.lower()).strip("-")


def _prompt_texts(config) -> dict[str, str]:
    """Prompt id -> its text, from the task (nothing when the task cannot be built here, e.g. a moved file)."""
    from iterpo.tasks import build_task

    try:
        task = build_task(config.task, config.run.seed)
        prompts = task.train_prompts() + task.eval_prompts() + task.shifted_prompts()
    except Exception:  # noqa: BLE001 - the report shows ids instead; it must not fail on a task it cannot rebuild
        return {}
    return {p.prompt_id: p.text for p in prompts}


def browser_rows(store: RunStore, rows: list[dict], texts: dict[str, str], max_prompts: int) -> list[dict]:
    """The sample browser's rows: per round, the samples of its first max_prompts prompts with their verdicts
    and their part in a pair (chosen, rejected), then the greedy held-out responses."""
    out = []
    for row in rows:
        r = row["round"]
        rollouts = _read_table(store, store.path(r, "rollouts.parquet"))
        verdicts = {
            (j["prompt_id"], j["sample_idx"]): j for j in _read_table(store, store.path(r, "judgements.parquet"))
        }
        role: dict[tuple, str] = {}
        for p in _read_table(store, store.path(r, "preferences.parquet")):
            texts.setdefault(p["prompt_id"], p.get("prompt", ""))
            role[(p["prompt_id"], p.get("chosen_source", "policy"), p["chosen_idx"])] = "chosen"
            role.setdefault((p["prompt_id"], p.get("rejected_source", "policy"), p["rejected_idx"]), "rejected")
        keep = list(dict.fromkeys(x["prompt_id"] for x in rollouts))[:max_prompts]
        keep_set = set(keep)
        for x in rollouts:
            if x["prompt_id"] not in keep_set:
                continue
            j = verdicts.get((x["prompt_id"], x["sample_idx"]), {})
            out.append(
                {
                    "round": r,
                    "kind": role.get((x["prompt_id"], x.get("source", "policy"), x["sample_idx"]), "sample"),
                    "prompt_id": x["prompt_id"],
                    "sample": x["sample_idx"],
                    "prompt": texts.get(x["prompt_id"], ""),
                    "response": x["text"],
                    "score": j.get("score"),
                    "detail": j.get("detail", ""),
                }
            )
        for item in row["eval_items"][:max_prompts]:
            out.append(
                {
                    "round": r,
                    "kind": "held-out",
                    "prompt_id": item["prompt_id"],
                    "sample": "greedy",
                    "prompt": texts.get(item["prompt_id"], ""),
                    "response": item.get("response", ""),
                    "score": item.get("score"),
                    "detail": item.get("detail", ""),
                }
            )
    return out


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _round_table(rows: list[dict]) -> str:
    head = [
        "round",
        "held-out",
        "shifted",
        "mean reward",
        "pairs",
        "mean loss",
        "margin",
        "KL ref",
        "R(π)",
        "R*",
        "win vs start",
        "seconds",
    ]
    body = []
    for row in rows:
        a = row["analyses"]
        cells = [
            row["round"],
            row["accuracy"],
            row["shifted_accuracy"],
            row["mean_reward"],
            row["pairs"],
            row["mean_loss"],
            row["reward_margin"],
            a.get("kl_reference"),
            a.get("ranking_accuracy"),
            a.get("ranking_accuracy_ideal"),
            a.get("win_rate_vs_initial"),
            round(sum(row["times"].values()), 1),
        ]
        body.append("<tr>" + "".join(f"<td>{html.escape(_fmt(c))}</td>" for c in cells) + "</tr>")
    return (
        '<table class="rounds"><thead><tr>'
        + "".join(f"<th>{h}</th>" for h in head)
        + "</tr></thead><tbody>"
        + "".join(body)
        + "</tbody></table>"
    )


def browser_html(items: list[dict], rounds: list[int]) -> str:
    """The sample browser: its filters and a table of items (browser_rows), every text escaped."""
    options = "".join(f'<option value="{r}">round {r}</option>' for r in rounds)
    kinds = "".join(f'<option value="{k}">{k}</option>' for k in ("chosen", "rejected", "sample", "held-out"))
    lines = []
    for it in items:
        attrs = f'data-round="{it["round"]}" data-kind="{html.escape(it["kind"])}"'
        cells = [
            it["round"],
            it["kind"],
            it["prompt_id"],
            it["sample"],
            it["prompt"],
            it["response"],
            _fmt(it["score"], 2),
            it["detail"],
        ]
        lines.append(f'<tr class="item" {attrs}>' + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>")
    return f"""
<div class="controls">
  <label>round <select id="filter-round"><option value="">all</option>{options}</select></label>
  <label>kind <select id="filter-kind"><option value="">all</option>{kinds}</select></label>
  <label>text <input id="filter-text" type="search" placeholder="prompt id, prompt or response"></label>
  <span id="shown">{len(items)} of {len(items)} shown</span>
</div>
<table class="browser"><thead><tr><th>round</th><th>kind</th><th>prompt id</th><th>sample</th><th>prompt</th>
<th>response</th><th>score</th><th>judge's detail</th></tr></thead><tbody>{"".join(lines)}</tbody></table>"""


FILTER_JS = """
(function () {
  const round = document.getElementById("filter-round");
  const kind = document.getElementById("filter-kind");
  const text = document.getElementById("filter-text");
  const shown = document.getElementById("shown");
  const rows = Array.from(document.querySelectorAll("table.browser tr.item"));
  function apply() {
    const needle = text.value.trim().toLowerCase();
    let n = 0;
    for (const row of rows) {
      const ok = (!round.value || row.dataset.round === round.value)
        && (!kind.value || row.dataset.kind === kind.value)
        && (!needle || row.textContent.toLowerCase().includes(needle));
      row.hidden = !ok;
      if (ok) n += 1;
    }
    shown.textContent = n + " of " + rows.length + " shown";
  }
  round.addEventListener("change", apply);
  kind.addEventListener("change", apply);
  text.addEventListener("input", apply);
})();
"""

STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 1200px; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 1.6em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; font-size: 0.85em; }
td, th { border: 1px solid #ddd; padding: 3px 6px; vertical-align: top; text-align: left; }
table.rounds td { text-align: right; }
.plots { display: grid; grid-template-columns: repeat(auto-fill, minmax(540px, 1fr)); gap: 8px; }
.browser td { max-width: 380px; white-space: pre-wrap; word-break: break-word; }
.browser tr[data-kind="chosen"] { background: #eef8ee; } .browser tr[data-kind="rejected"] { background: #fbeeee; }
.controls { margin: 0.6em 0; display: flex; gap: 1.2em; align-items: center; }
pre { background: #f6f6f6; padding: 0.8em; overflow: auto; font-size: 0.8em; }
.meta { color: #555; }
"""


def plot_divs(plots: list[tuple[str, Any]]) -> str:
    """The figures as page elements (div.plot, each with its anchor), drawn by the page's plotly.js."""
    return "".join(
        f'<div class="plot" id="{_anchor(title)}">'
        + fig.to_html(
            full_html=False, include_plotlyjs=False, div_id=_anchor(title) + "-figure", config={"displaylogo": False}
        )
        + "</div>"
        for title, fig in plots
    )


def page(title: str, body: str) -> str:
    """A whole self-contained page: the style and plotly.js inline, then body."""
    _, offline = plotly()
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>{STYLE}</style>
<script>{offline.get_plotlyjs()}</script>
</head><body>
<h1>{html.escape(title)}</h1>
{body}
</body></html>
"""


def render(store: RunStore, max_prompts: int = 50) -> str:
    """The report page of the run in store, as HTML text."""
    from iterpo.config import load_config

    config = load_config(store.config_path)
    manifest = store.manifest() or {}
    rows = collect(store, config.run.rounds)
    divs = plot_divs(figures(rows))
    items = browser_rows(store, rows, _prompt_texts(config), max_prompts)
    evaluated = [row["round"] for row in rows if row["accuracy"] is not None]
    fingerprint = str(manifest.get("config_fingerprint"))
    body = f"""<p class="meta">{html.escape(str(store.root))} · config fingerprint {html.escape(fingerprint)} ·
{len(evaluated)} of {config.run.rounds + 1} evaluations so far (round 0 is the starting model) ·
loss {html.escape(config.loss.name)} · task {html.escape(config.task.name)}</p>
<h2>Rounds</h2>
{_round_table(rows)}
<h2>Per round</h2>
<div class="plots">{divs or "<p>No round has finished a stage yet.</p>"}</div>
<h2>Samples</h2>
<p class="meta">Each round's samples of its first {max_prompts} prompts with the judge's verdicts and their part
in a pair, and its greedy responses to the held-out prompts.</p>
{browser_html(items, [row["round"] for row in rows])}
<h2>Config</h2>
<pre>{html.escape(yaml.safe_dump(yaml.safe_load(store.config_path.read_text()), sort_keys=False))}</pre>
<h2>Manifest</h2>
<details><summary>manifest.json</summary><pre>{html.escape(json.dumps(manifest, indent=1))}</pre></details>
<script>{FILTER_JS}</script>"""
    return page(f"iterpo run {store.root.name}", body)


def write_report(run_dir: str | Path, out: str | Path | None = None, max_prompts: int = 50) -> Path:
    """Write the report of the run at run_dir to out (default: RUN_DIR/report.html); its path."""
    from iterpo.io import write_text

    if max_prompts < 0:
        raise UserInputError(f"--prompts must be at least 0, got {max_prompts}")
    store = RunStore.existing(run_dir)
    target = Path(out) if out is not None else store.root / "report.html"
    write_text(target, render(store, max_prompts))
    return target
