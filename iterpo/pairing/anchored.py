"""Temporal Self-Rewarding's anchored rejection: the rejected response comes from the initial model."""

from __future__ import annotations

from dataclasses import dataclass

from iterpo.pairing.base import Strategy, preference, register_pairing


@register_pairing("anchored")
@dataclass
class Anchored(Strategy):
    """Temporal Self-Rewarding's anchored rejection (2025): the rejected response comes from the initial model.

    Chosen: the best of this round's responses. Rejected: the worst-judged of
    the initial model's responses to the prompt (round 1's samples, kept in the
    run directory), so the contrast does not shrink as the policy improves.
    In round 1 the two coincide with best-vs-worst.

    With ``future_guided``, the paper's second half: a look-ahead copy of the
    policy trains on these pairs, answers their prompts, and its best judged
    answer replaces a pair's chosen when it scores higher (the ``look_ahead``
    stage, iterpo.stages.look_ahead, which a derived round includes then).
    """

    uses_initial = True
    min_candidates = 1
    future_guided: bool = False
    """Replace chosen responses by a look-ahead model's better answers (costs one extra training and sampling pass)."""

    def look_ahead(self) -> bool:
        return self.future_guided

    def examples(self, prompt, cands, rng, initial=None):
        if not initial:
            return [], "no judged response of the initial model"
        best = self.ranked(cands)[0]
        worst = self.worst_first(initial)[0]
        if best.score <= worst.score:
            return [], "best response no better than the initial model's worst"
        return [preference(prompt, best, worst)], None
