"""Examples of the other data shapes: labelled single responses (KTO), ranked groups (PRO, TPO), every
sample with its reward (policy-gradient losses) and responses to imitate (SFT)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from iterpo.pairing.base import Strategy, register_pairing
from iterpo.records import LabelledResponse, RankedGroup


@register_pairing("labelled")
@dataclass
class Labelled(Strategy):
    """Single responses labelled desirable (score >= threshold) or undesirable, for KTO.

    Up to ``pairs_per_prompt`` distinct responses of each label per prompt; a
    prompt whose responses are all good still contributes desirable examples.
    """

    data_shape = "unpaired"
    min_candidates = 1

    def examples(self, prompt, cands, rng, initial=None):
        t, n = self.config.threshold, self.config.pairs_per_prompt
        good = [c for c in cands if c.score >= t][:n]
        bad = [c for c in cands if c.score < t][:n]
        out = [
            LabelledResponse(prompt.prompt_id, c.idx, prompt.text, c.rollout.text, label, c.score, "", -1, c.source)
            for cs, label in ((good, True), (bad, False))
            for c in cs
        ]
        return out, None if out else "no responses"


@register_pairing("ranked")
@dataclass
class Ranked(Strategy):
    """A group of up to ``group_size`` distinct responses ordered by score, best first, for PRO and TPO.

    When more are available the group spans the ranking evenly (best and worst
    always included). Prompts whose responses all scored the same are skipped.
    """

    data_shape = "ranked"

    def examples(self, prompt, cands, rng, initial=None):
        ranked = self.ranked(cands)
        if len({c.score for c in ranked}) < 2:
            return [], "all responses scored the same"
        return [spanning(prompt, ranked, self.shared().group_size)], None


@register_pairing("all_samples")
@dataclass
class AllSamples(Strategy):
    """Every judged sample of a prompt with its reward, in sample order, for policy-gradient losses (RLOO, GRPO).

    Unlike the other strategies it keeps duplicates: the estimators average over the samples as drawn.
    ``reward``: "score" (the judge's score less the length penalty), or "win_proportion", the share of the
    prompt's other samples it beats (Swamy et al. 2024, "A Minimaximalist Approach to Reinforcement Learning
    from Human Feedback", SPO): P(i beats j) from a pairwise judge where it compared the two, else 1, 1/2 or 0
    as i's score is above, equal to or below j's. ``keep_uniform``: keep prompts whose samples all got the
    same reward (their advantages are all zero; GRPO's KL term still sees them).
    """

    reward: str = "score"
    keep_uniform: bool = False

    data_shape = "scored"
    keeps_duplicates = True

    def __post_init__(self):
        super().__post_init__()
        if self.reward not in ("score", "win_proportion"):
            raise ValueError(f"option reward must be 'score' or 'win_proportion', got {self.reward!r}")

    def examples(self, prompt, cands, rng, initial=None):
        rewards = [c.score for c in cands] if self.reward == "score" else win_proportions(cands)
        if not self.keep_uniform and len(set(rewards)) < 2:
            return [], "all samples got the same reward"
        g = group(prompt, cands)
        g.scores = list(rewards)
        return [g], None


def win_proportions(cands) -> list[float]:
    """For each sample, the mean over the prompt's other samples j of P(it beats j); where sampling listed every
    response with its probability (sampling.exhaustive), the exact expectation sum_j pi(j) P(it beats j) over
    all of them, itself included at 1/2 (an opponent drawn from the policy may be the same response)."""

    def beats(a, b) -> float:
        known = a.judgement.beats if a.source == b.source else []
        if b.idx < len(known) and not math.isnan(known[b.idx]):
            return known[b.idx]
        return 1.0 if a.score > b.score else 0.5 if a.score == b.score else 0.0

    if cands and all(c.rollout.weight is not None for c in cands):
        mass = sum(c.rollout.weight for c in cands)
        return [sum(b.rollout.weight * (0.5 if b is a else beats(a, b)) for b in cands) / mass for a in cands]
    n = len(cands)
    return [sum(beats(a, b) for b in cands if b is not a) / max(n - 1, 1) for a in cands]


def spanning(prompt, ranked, size: int) -> RankedGroup:
    """Up to size of the ranked candidates (best first, at least 2) as one group spanning the ranking evenly, the
    best and the worst always included."""
    n = min(size, len(ranked))
    picks = sorted({round(i * (len(ranked) - 1) / (n - 1)) for i in range(n)})
    return group(prompt, [ranked[i] for i in picks])


def group(prompt, cands) -> RankedGroup:
    """cands as one RankedGroup, in the order given."""
    return RankedGroup(
        prompt.prompt_id,
        prompt.text,
        [c.idx for c in cands],
        [c.rollout.text for c in cands],
        [c.score for c in cands],
        [c.source for c in cands],
        [c.rollout.weight for c in cands] if all(c.rollout.weight is not None for c in cands) else [],
    )


@register_pairing("correct")
@dataclass
class Correct(Strategy):
    """Up to ``per_prompt`` distinct responses scoring at least ``threshold``, in sample order, to imitate
    (rejection-sampling fine-tuning: STaR, RFT, ReST-EM). Distinct by text: RFT keeps distinct reasoning paths."""

    per_prompt: int = 4

    data_shape = "demonstrations"
    min_candidates = 1

    def __post_init__(self):
        super().__post_init__()
        if self.per_prompt < 1:
            raise ValueError(f"option per_prompt must be >= 1, got {self.per_prompt}")

    def examples(self, prompt, cands, rng, initial=None):
        seen: set[str] = set()
        kept = []
        for c in cands:
            if c.score >= self.shared().threshold and c.rollout.text not in seen:
                seen.add(c.rollout.text)
                kept.append(c)
        if not kept:
            return [], "no response reached the threshold"
        return [group(prompt, kept[: self.per_prompt])], None


@register_pairing("best")
@dataclass
class Best(Strategy):
    """Each prompt's best response to imitate (ties: the first sampled, or the shortest with prefer_shorter),
    when it scores at least ``threshold`` (OLAPH's SFT on the best response)."""

    data_shape = "demonstrations"
    min_candidates = 1

    def examples(self, prompt, cands, rng, initial=None):
        best = self.ranked(cands)[0]
        if best.score < self.shared().threshold:
            return [], "no response reached the threshold"
        return [group(prompt, [best])], None
