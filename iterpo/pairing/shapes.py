"""Examples of the other data shapes: labelled single responses (KTO) and ranked groups (PRO, TPO)."""

from __future__ import annotations

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
        n = min(self.config.group_size, len(ranked))
        picks = sorted({round(i * (len(ranked) - 1) / (n - 1)) for i in range(n)})
        group = [ranked[i] for i in picks]
        return [
            RankedGroup(
                prompt.prompt_id,
                prompt.text,
                [c.idx for c in group],
                [c.rollout.text for c in group],
                [c.score for c in group],
                [c.source for c in group],
            )
        ], None
