"""Several judges combined into one verdict, with their disagreement as its uncertainty.

``combine: mean`` averages the members' scores (give them comparable scales);
``combine: vote`` scores the fraction of members whose score reaches
``threshold``. ``uncertainty`` is the members' standard deviation (mean) or
1 - |2f - 1| for a vote share f (0 when unanimous, 1 when split evenly), and
``samples`` keeps each member's score, so the UPO pairing can treat members as
an ensemble's passes. Each member's verdicts are cached on their own.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

from iterpo.judges.base import Judge, JudgeContext, judge_with_cache, make_judge, register_judge
from iterpo.records import Judgement, Prompt, Rollout


@register_judge("ensemble")
@dataclass
class Ensemble(Judge):
    """Several judges combined by mean or vote; their disagreement is the uncertainty."""

    name = "ensemble"
    judges: list = field(default_factory=list)
    """Member judges, each a mapping with 'name' and its options,
    e.g. [{name: exact_answer}, {name: reward_model, path: ./rm}]."""
    combine: str = "mean"
    """'mean' of the scores, or 'vote': the fraction of members scoring at least threshold."""
    threshold: float = 0.5
    """vote: a member votes for a response scoring at least this."""

    def __post_init__(self):
        if self.combine not in ("mean", "vote"):
            raise ValueError(f"option combine must be 'mean' or 'vote', got {self.combine!r}")
        if len(self.judges) < 2 or not all(isinstance(j, dict) and "name" in j for j in self.judges):
            raise ValueError("option judges must list at least two judges, each a mapping with a 'name'")
        self.members = [make_judge(j["name"], {k: v for k, v in j.items() if k != "name"}) for j in self.judges]
        self.pointwise = all(m.pointwise for m in self.members)
        self.uses_policy = any(m.uses_policy for m in self.members)
        self.local = any(m.local for m in self.members)  # a member with the run's own models keeps it off workers

    def check(self) -> None:
        for m in self.members:
            m.check()

    def check_prompt(self, prompt: Prompt) -> None:
        for m in self.members:
            m.check_prompt(prompt)

    def setup(self, context: JudgeContext) -> None:
        super().setup(context)
        for m in self.members:
            m.setup(context)

    def identity(self) -> str:
        return f"ensemble:{self.combine}:{self.threshold}:[" + "|".join(m.identity() for m in self.members) + "]"

    def reset_tally(self) -> None:
        super().reset_tally()
        for m in self.members:
            m.reset_tally()

    def judge(self, prompt: Prompt, rollouts: list[Rollout]) -> list[Judgement]:
        if self.context is None:
            raise RuntimeError("ensemble needs the round's context (its cache): call setup() before judge()")
        per_member = [judge_with_cache(m, prompt, rollouts, self.context.cache) for m in self.members]
        out = []
        for i, r in enumerate(rollouts):
            verdicts = [(m.name, v[i]) for m, v in zip(self.members, per_member)]
            ok = [(name, v.score) for name, v in verdicts if not v.failed]
            if not ok:
                reasons = "; ".join(f"{name}: {v.detail}" for name, v in verdicts)
                out.append(
                    Judgement(
                        r.prompt_id, r.sample_idx, self.name, 0.0, f"every member failed ({reasons})", failed=True
                    )
                )
                continue
            scores = [s for _, s in ok]
            if self.combine == "mean":
                score, uncertainty = sum(scores) / len(scores), statistics.pstdev(scores)
            else:
                score = sum(s >= self.threshold for s in scores) / len(scores)
                uncertainty = 1 - abs(2 * score - 1)
            detail = ", ".join(f"{name}={s:.3g}" for name, s in ok)
            out.append(
                Judgement(r.prompt_id, r.sample_idx, self.name, score, detail, uncertainty=uncertainty, samples=scores)
            )
        if not self.pointwise:  # judge_with_cache counts pointwise judges' verdicts; count ours here
            self.tally().add(len(out), [j.detail for j in out if j.failed])
        return out

    def outage(self):
        return next((why for why in (m.outage() for m in self.members) if why), None)
