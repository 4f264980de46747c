"""RSO: pairs from a subsample distributed as the estimated optimal policy."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from iterpo.pairing.base import Candidate, Strategy, preference, register_pairing


@register_pairing("rso")
@dataclass
class RejectionSampling(Strategy):
    """RSO (Liu et al. 2023, "Statistical Rejection Sampling Improves Preference Optimization").

    Treats the K samples as draws from the policy and keeps a subsample
    distributed as the estimated optimal policy pi*(y) ∝ pi(y) exp(r(y)/beta):
    visit the candidates in random order and accept each with probability
    exp((r(y) - r_max) / beta), r_max the best remaining reward, until
    ``accept`` are accepted; sweep the remaining ones again while too few are
    (the procedure of the paper's reference code).
    The accepted responses are paired in acceptance order, (1st, 2nd),
    (3rd, 4th), ..., each labelled by its scores; ties give no pair.
    """

    beta: float = 0.5
    """Temperature of the optimal policy: small beta keeps only the best responses, large beta is uniform."""
    accept: int = 4
    """Responses to accept per prompt (RSO: 8 of 64)."""

    def __post_init__(self):
        super().__post_init__()
        if self.beta <= 0 or self.accept < 2:
            raise ValueError(
                f"options beta > 0 and accept >= 2 are required, got beta={self.beta}, accept={self.accept}"
            )

    def accepted(self, cands: list[Candidate], rng: random.Random) -> list[Candidate]:
        """Sweeps over the remaining candidates in random order, each measured against its best remaining reward."""
        remaining = list(cands)
        out: list[Candidate] = []
        while remaining and len(out) < self.accept:
            r_max = max(c.score for c in remaining)
            rng.shuffle(remaining)
            kept = []
            for c in remaining:
                if len(out) < self.accept and rng.random() < math.exp((c.score - r_max) / self.beta):
                    out.append(c)
                else:
                    kept.append(c)
            remaining = kept
        return out

    def examples(self, prompt, cands, rng, initial=None):
        chosen = self.accepted(cands, rng)
        pairs = []
        for a, b in zip(chosen[0::2], chosen[1::2]):
            if a.score != b.score:
                w, l = (a, b) if a.score > b.score else (b, a)
                pairs.append(preference(prompt, w, l))
        pairs = pairs[: self.config.pairs_per_prompt]
        return pairs, None if pairs else "accepted responses scored the same"
