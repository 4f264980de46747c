"""strength: each pair's preference strength under a reward-model ensemble, and what it says of the pair.

"Secrets of RLHF in Large Language Models Part II: Reward Modeling" (Wang et al. 2024) measures a pair's
preference strength with M reward models trained on bootstrap resamples: d_m = r_m(y_w) - r_m(y_l), its mean
over the members and their spread. Pairs of negative mean strength are likely mislabelled (flip them), pairs
near zero are ambiguous (smooth their labels, or drop them). This stage reads the round's pairs and the
ensemble a reward_model stage with ``members`` trained (in this round, or the latest before it), and writes
the pairs again with every option applied: ``flip_below`` swaps chosen and rejected where the mean strength is
below it, ``drop_below`` then drops pairs whose (flipped) mean strength is still below it, and ``smooth``
sets each pair's soft label to sigmoid(mean strength), which losses with per-pair label smoothing read
(``mcts_dpo``: eps = 1 - soft label; ``soft_dpo``), and ``margin`` (a scale gamma) sets each pair's target
margin to gamma x its mean strength, the paper's adaptive margin, which ``margin_dpo`` reads: clear pairs must be
separated by more, ambiguous ones by less. ``strength.json`` reports the strengths and the counts.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from dataclasses import dataclass

from iterpo.errors import ConfigError, DataError
from iterpo.judges.reward_model import load_classifier, members_of
from iterpo.progress import bar
from iterpo.records import Preference, to_table
from iterpo.stages.base import Stage, register_stage
from iterpo.stages.reward_model import example_pairs
from iterpo.training.reward_model import RewardTraining, member_margins

SWAPPED = [("chosen_idx", "rejected_idx"), ("chosen", "rejected"), ("chosen_score", "rejected_score")]
SWAPPED += [("chosen_win_rate", "rejected_win_rate"), ("chosen_source", "rejected_source")]


def flipped(x: Preference) -> Preference:
    """The pair the other way round: chosen and rejected (indices, texts, scores, win rates, sources) swapped."""
    change = {}
    for a, b in SWAPPED:
        change[a], change[b] = getattr(x, b), getattr(x, a)
    return dataclasses.replace(x, soft_label=1.0 - x.soft_label, **change)


def apply_strength(
    prefs: list[Preference],
    d: list[list[float]],
    flip_below: float | None,
    drop_below: float | None,
    smooth: bool,
    margin: float | None = None,
) -> tuple[list[Preference], list[dict], dict]:
    """(kept pairs, their strengths, counts) from d (M, pairs), the members' reward differences r(y_w) - r(y_l):
    flip where the mean is below flip_below, then drop where it is below drop_below, then smooth, then set the
    target margin to margin x mean."""
    out, strengths, counts = [], [], {"pairs": len(prefs), "flipped": 0, "dropped": 0}
    for i, x in enumerate(prefs):
        values = [row[i] for row in d]
        mean, spread = statistics.fmean(values), statistics.pstdev(values)
        if flip_below is not None and mean < flip_below:
            x, mean = flipped(x), -mean
            counts["flipped"] += 1
        if drop_below is not None and mean < drop_below:
            counts["dropped"] += 1
            continue
        if smooth:
            x = dataclasses.replace(x, soft_label=1.0 / (1.0 + math.exp(-mean)))
        if margin is not None:
            x = dataclasses.replace(x, margin=margin * mean)
        strengths.append({"prompt_id": x.prompt_id, "mean": mean, "std": spread})
        out.append(x)
    return out, strengths, counts


@register_stage("strength")
@dataclass
class Strength(Stage):
    """Preference strength of each pair under the run's reward-model ensemble; flip, drop or smooth by it."""

    reads = ("examples",)
    writes = {"strength_report": "strength.json", "examples": "strength_preferences.parquet"}  # the report last
    flip_below: float | None = None
    """Swap chosen and rejected where the mean strength is below this (e.g. 0: the ensemble prefers the other)."""
    drop_below: float | None = None
    """Then drop pairs whose mean strength is still below this (ambiguous ones, e.g. 0.1)."""
    smooth: bool = False
    """Set each pair's soft label to sigmoid(mean strength), for losses with per-pair label smoothing."""
    margin: float | None = None
    """Set each pair's target margin to this x its mean strength (the adaptive margin ``margin_dpo`` reads)."""

    def check(self, earlier: list) -> None:
        if not any(s.kind == "reward_model" for s in earlier):
            raise ValueError("strength reads a reward-model ensemble: list a reward_model stage with members before it")
        if self.flip_below is not None and self.drop_below is not None and self.drop_below < self.flip_below:
            raise ValueError("drop_below below flip_below would drop nothing that is not flipped first")
        if self.margin is not None and not (math.isfinite(self.margin) and self.margin >= 0):
            raise ValueError(f"margin is a scale of the mean strength and must be >= 0, got {self.margin}")

    def fits(self, plan) -> None:
        if plan.loss.data_shape != "pairs":
            raise ConfigError(
                f"stage {self.label!r} reweighs preference pairs; the loss trains on {plan.loss.data_shape}"
            )

    def run(self, ctx, r):
        path = next((p for k in range(r, 0, -1) if (p := ctx.trained_model(k)) is not None), None)
        members = members_of(path) if path is not None else []
        if len(members) < 2:
            raise DataError(
                f"round {r}: strength needs an ensemble of reward models (a reward_model stage with members >= 2); "
                f"{'found ' + path + ' with one model' if path else 'none was trained yet'}"
            )
        prefs = ctx.read(r, self.input("examples"), Preference)
        pairs = example_pairs(ctx, prefs)
        reading = RewardTraining(batch_size=16, max_length=1024)  # as the reward_model judge reads them
        d = []  # (M, pairs) reward differences r(y_w) - r(y_l), one member loaded at a time
        with bar("preference strength: members", len(members)) as advance:
            for m in members:
                d.append(member_margins([load_classifier(m, "auto", "stage strength")], pairs, reading)[0].tolist())
                advance(1)
        out, strengths, counts = apply_strength(prefs, d, self.flip_below, self.drop_below, self.smooth, self.margin)
        ctx.store.write_parquet(ctx.store.path(r, self.file("examples")), to_table(out, Preference))
        report = {"round": r, "members": len(members), **counts, "kept": len(out), "strengths": strengths}
        ctx.store.write_json(ctx.store.path(r, self.file("strength_report")), report)
        return counts
