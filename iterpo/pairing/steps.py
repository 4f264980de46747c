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
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from iterpo.pairing.base import Candidate, Example, Strategy, preference, register_pairing
from iterpo.records import Prompt


def prefix_end(c: Candidate) -> int:
    """Where a response's last step starts: the end of the step before it (0 for a one-step response)."""
    ends = c.rollout.step_ends
    return ends[-2] if len(ends) >= 2 else 0


@register_pairing("divergence")
@dataclass
class Divergence(Strategy):
    """Per set of sibling responses (the same tokens before their last step), the best against the worst when
    their scores differ by at least margin; the shared steps are context, only the diverging steps are trained
    on (step-level DPO, MCTS-DPO)."""

    margin: float = 0.0
    """Smallest score difference between the two siblings of a pair."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.margin < 0:
            raise ValueError(f"margin must be at least 0, got {self.margin}")

    def examples(
        self, prompt: Prompt, cands: list[Candidate], rng: random.Random, initial: list[Candidate] | None = None
    ) -> tuple[list[Example], str | None]:
        siblings: dict[tuple[int, ...], list[Candidate]] = {}
        for c in cands:
            siblings.setdefault(tuple(c.rollout.token_ids[: prefix_end(c)]), []).append(c)
        found = []  # (gap, shared prefix length, best, worst)
        for prefix, group in siblings.items():
            if len(group) < 2:
                continue
            best, worst = self.ranked(group)[0], self.worst_first(group)[0]
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
            out.append(pair)
        return out, None
