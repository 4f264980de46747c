"""Pairs by score: correct vs incorrect, best vs worst, best vs random, and every pair a margin apart."""

from __future__ import annotations

from dataclasses import dataclass

from iterpo.pairing.base import Strategy, preference, register_pairing


@register_pairing("correct_vs_incorrect")
@dataclass
class CorrectVsIncorrect(Strategy):
    """Pair responses scoring at least ``threshold`` with ones scoring below it.

    Each prompt gives up to ``pairs_per_prompt`` pairs, matching the i-th
    distinct good response with the i-th bad one (in sample order, or shortest
    good with longest bad under prefer_shorter), so pairs are deterministic.
    Prompts where every response is good (or every one bad) give no pair.
    """

    def examples(self, prompt, cands, rng, initial=None):
        t = self.config.threshold
        good = (
            self.ranked([c for c in cands if c.score >= t])
            if self.config.prefer_shorter
            else [c for c in cands if c.score >= t]
        )
        bad = (
            self.worst_first([c for c in cands if c.score < t])
            if self.config.prefer_shorter
            else [c for c in cands if c.score < t]
        )
        if not good:
            return [], "no correct response"
        if not bad:
            return [], "all responses correct"
        n = min(self.config.pairs_per_prompt, max(len(good), len(bad)))
        return [preference(prompt, good[i % len(good)], bad[i % len(bad)]) for i in range(n)], None


def _mass(c) -> float:
    """A response's probability where sampling listed them all, else 1."""
    return 1.0 if c.rollout.weight is None else c.rollout.weight


@register_pairing("all_pairs")
@dataclass
class AllPairs(Strategy):
    """Every ordered pair of a prompt's distinct responses, (a, b) and (b, a) both: the pairs of EGPO's
    online-IPO loss with y and y' drawn uniformly (Zhou et al. 2025, "Extragradient Preference Optimization"),
    its exact expectation when sampling lists every response (sampling.exhaustive). Unweighted, for losses
    that read the pairs' win rates (online_ipo, nash_mp, sppo). ``weighted``: each pair weighs pi(chosen)
    pi(rejected) P(chosen beats rejected), the probability of drawing the two from the policy and the judge
    preferring the chosen one, so a loss that trusts 'chosen' (DPO) takes its exact on-policy expectation."""

    weighted: bool = False

    def examples(self, prompt, cands, rng, initial=None):
        ordered = [(a, b) for a in cands for b in cands if a is not b]
        pairs = [preference(prompt, a, b) for a, b in ordered]
        if self.weighted:
            for x, (a, b) in zip(pairs, ordered):
                x.weight = _mass(a) * _mass(b) * x.soft_label
        return pairs, None if pairs else "one distinct response"


@register_pairing("best_vs_worst")
@dataclass
class BestVsWorst(Strategy):
    """The highest-scored response against the lowest (Self-Rewarding, SPPO); ties give no pair.

    With ``pairs_per_prompt`` > 1, the 2nd best against the 2nd worst and so on,
    while the chosen still scores strictly higher.
    """

    def examples(self, prompt, cands, rng, initial=None):
        best, worst = self.ranked(cands), self.worst_first(cands)
        pairs = []
        for i in range(min(self.config.pairs_per_prompt, len(cands) // 2)):
            if best[i].score <= worst[i].score:
                break
            pairs.append(preference(prompt, best[i], worst[i]))
        return pairs, None if pairs else "all responses scored the same"


@register_pairing("best_vs_random")
@dataclass
class BestVsRandom(Strategy):
    """The highest-scored response against randomly drawn lower-scored ones (seeded per round and prompt)."""

    def examples(self, prompt, cands, rng, initial=None):
        best = self.ranked(cands)[0]
        lower = [c for c in cands if c.score < best.score]
        if not lower:
            return [], "all responses scored the same"
        picks = rng.sample(lower, min(self.config.pairs_per_prompt, len(lower)))
        return [preference(prompt, best, r) for r in picks], None


@register_pairing("margin")
@dataclass
class Margin(Strategy):
    """Every pair whose scores differ by at least ``margin`` (largest gaps first, at most pairs_per_prompt)."""

    margin: float = 0.5
    """Smallest score difference that makes a pair; smaller differences count as ties and are dropped."""

    def __post_init__(self):
        super().__post_init__()
        if self.margin <= 0:
            raise ValueError(f"option margin must be > 0, got {self.margin}")

    def examples(self, prompt, cands, rng, initial=None):
        pairs = [(a, b) for a in cands for b in cands if a.score - b.score >= self.margin]
        if not pairs:
            return [], f"no two responses {self.margin} apart"
        tie = (lambda ab: ab[0].length - ab[1].length) if self.config.prefer_shorter else (lambda ab: 0)
        pairs.sort(key=lambda ab: (-(ab[0].score - ab[1].score), tie(ab)))
        return [preference(prompt, a, b) for a, b in pairs[: self.config.pairs_per_prompt]], None
