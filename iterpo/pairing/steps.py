"""Step-level pairs: responses that share every step but their last are siblings, and the best and worst of a
set of siblings form a pair whose shared steps are context.

Step-level DPO and MCTS-DPO (Xie et al. 2024) train on pairs of sibling steps
at a divergence point: the prompt is the question plus the shared prefix, and
only the tokens after it are trained on. Here a response's steps are explicit
(Rollout.step_ends: a tree search's nodes, an episode's turns), siblings are
the responses of a prompt with the same tokens before their last step, and the
pair records how many leading tokens the two share (Preference.shared_prefix),
which training reads as context. Responses of one step are all siblings of the
root, so on flat responses this is best against worst.

TPO (Liao et al. 2024) learns from a preference tree instead: ``siblings_ranked``
gives each set of sibling steps as one ranked group (best first) for a listwise
loss, the shared steps again as context.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from iterpo.pairing.base import Candidate, Example, Strategy, preference, register_pairing
from iterpo.pairing.shapes import spanning
from iterpo.records import Prompt
from iterpo.sampling.tree import smoothing


def prefix_end(c: Candidate) -> int:
    """Where a response's last step starts: the end of the step before it (0 for a one-step response)."""
    ends = c.rollout.step_ends
    return ends[-2] if len(ends) >= 2 else 0


def sibling_sets(cands: list[Candidate]) -> dict[tuple[int, ...], list[Candidate]]:
    """The prompt's responses by the tokens before their last step."""
    siblings: dict[tuple[int, ...], list[Candidate]] = {}
    for c in cands:
        siblings.setdefault(tuple(c.rollout.token_ids[: prefix_end(c)]), []).append(c)
    return siblings


@register_pairing("divergence")
@dataclass
class Divergence(Strategy):
    """Per set of sibling responses (the same tokens before their last step), the best against the worst when
    their scores differ by at least margin; the shared steps are context, only the diverging steps are trained
    on (step-level DPO, MCTS-DPO)."""

    margin: float = 0.0
    """Smallest score difference between the two siblings of a pair."""
    visit_smoothing: bool = False
    """MCTS-DPO's confidence: each pair's soft_label is 1 - eps, eps = min(1 - 1 / (1 + N_w / max(1, N_b)), 0.5)
    from the tree search's visit counts of the worse (N_w) and better (N_b) step; the loss mcts_dpo smooths each
    pair's label by it."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.margin < 0:
            raise ValueError(f"margin must be at least 0, got {self.margin}")

    def examples(
        self, prompt: Prompt, cands: list[Candidate], rng: random.Random, initial: list[Candidate] | None = None
    ) -> tuple[list[Example], str | None]:
        siblings = sibling_sets(cands)
        found = []  # (gap, shared prefix length, best, worst)
        for prefix, kin in siblings.items():
            if len(kin) < 2:
                continue
            best, worst = self.ranked(kin)[0], self.worst_first(kin)[0]
            gap = best.score - worst.score
            if gap > 0 and gap >= self.margin:
                found.append((gap, len(prefix), best, worst))
        if not found:
            return [], "no siblings differ by the margin" if any(
                len(g) > 1 for g in siblings.values()
            ) else "no siblings"
        found.sort(key=lambda x: -x[0])  # the largest gaps first
        out: list[Example] = []
        for _, shared, best, worst in found[: self.shared().pairs_per_prompt]:
            pair = preference(prompt, best, worst)
            pair.shared_prefix = shared
            if self.visit_smoothing:
                if best.judgement.visits is None or worst.judgement.visits is None:
                    raise ValueError(
                        "visit_smoothing reads visit counts, which only the tree_search stage's judgements have"
                    )
                pair.soft_label = 1.0 - smoothing(best.judgement.visits, worst.judgement.visits)
            out.append(pair)
        return out, None


@register_pairing("siblings_ranked")
@dataclass
class SiblingsRanked(Strategy):
    """Per set of sibling responses (the same tokens before their last step) whose scores are not all equal, one
    group of up to ``group_size`` of them, best first (TPO's preference tree, for listwise losses: tpo, pro); the
    shared steps are context."""

    data_shape = "ranked"

    def examples(self, prompt, cands, rng, initial=None):
        out: list[Example] = []
        for prefix, siblings in sibling_sets(cands).items():
            ranked = self.ranked(siblings)
            if len({c.score for c in ranked}) < 2:
                continue
            g = spanning(prompt, ranked, self.shared().group_size)
            g.shared_prefix = len(prefix)
            out.append(g)
        if not out:
            return [], "no siblings scored differently"
        out.sort(key=lambda g: -(g.scores[0] - g.scores[-1]))  # the widest spreads first
        return out[: self.shared().pairs_per_prompt], None
