"""Progress bars and the per-round table, with rich."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from iterpo.io import failpoint

# Wide enough for the round table when output goes to a file or a CI log.
console = Console(highlight=False, width=None if Console().is_terminal else 120)


@contextmanager
def bar(description: str, total: int) -> Iterator[Callable[[int], None]]:
    """A progress bar; yields advance(n). Each advance is a fault-injection point (iterpo.io.failpoint)."""
    columns = (
        TextColumn("  {task.description:<18}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task(description, total=total)
        done = 0

        def advance(n: int = 1) -> None:
            nonlocal done
            progress.advance(task, n)
            done += n
            failpoint(f"progress:{description}@{done}")

        yield advance


STAGES = ["sample", "judge", "pair", "reference", "train", "eval"]
# the stages each column of seconds adds up (by name, or a name after it such as 'judge_refine'): the policy
# generating (sampling, revising, rationalizing, searching, proposing problems), then judging
COLUMNS = {
    "sample": ("sample", "refine", "rationalize", "tree_search", "propose"),
    "judge": ("judge", "self_tests"),
}


def round_table(rows: list[dict], tuning: bool = False) -> Table:
    """rows: one dict per round as built by loop.round_summary; tuning: the accuracy is the tuning set's
    (task.tuning), not the held-out set's."""
    table = Table(title="iterpo: rounds", show_lines=False)
    accuracy = "tuning acc" if tuning else "held-out acc"
    shifted = any(r.get("shifted_accuracy") is not None for r in rows)  # eval.shifted, on a task that has them
    columns = ["round", accuracy] + (["shifted acc"] if shifted else [])
    for col in columns + ["mean reward", "pairs / skipped", "mean loss", "reward margin", "tok/s"]:
        table.add_column(col, justify="right")
    table.add_column("seconds: " + " / ".join(STAGES), justify="left")

    def fmt(v, spec):
        return "-" if v is None else format(v, spec)

    def seconds(times: dict[str, float], kind: str) -> str:
        """A column's stages together: 'train' with 'train_half' or 'train_sft' (a stage named after its kind), and
        'sample' with the other stages that generate (COLUMNS)."""
        names = COLUMNS.get(kind, (kind,))
        mine = [v for label, v in times.items() if any(label == n or label.startswith(n + "_") for n in names)]
        return f"{sum(mine):.0f}" if mine else "-"

    for r in rows:
        times = " / ".join(seconds(r["times"], k) for k in STAGES)
        pairs = "-" if r["pairs"] is None else f"{r['pairs']} / {r['skipped']}"
        table.add_row(
            str(r["round"]),
            fmt(r["accuracy"], ".3f"),
            *([fmt(r.get("shifted_accuracy"), ".3f")] if shifted else []),
            fmt(r["mean_reward"], ".3f"),
            pairs,
            fmt(r["mean_loss"], ".4f"),
            fmt(r["reward_margin"], ".4f"),
            fmt(r.get("sample_tokens_per_s"), ".0f"),
            times,
        )
    return table
