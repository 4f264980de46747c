"""UPO: pairs drawn by how certain the judge is about them (BALD over its stochastic passes)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from iterpo.errors import ConfigError
from iterpo.pairing.base import Strategy, preference, register_pairing, sigmoid


def bald(samples_a: list[float], samples_b: list[float]) -> float:
    """BALD of the pairwise estimate P(a beats b) = sigmoid(s_a - s_b) over S stochastic passes.

    H[mean_t p_t] - mean_t H[p_t] (binary entropies, nats): the part of the
    predictive uncertainty due to the judge's own uncertainty. 0 when all
    passes agree; at most log 2.
    """
    ps = [sigmoid(a - b) for a, b in zip(samples_a, samples_b)]

    def h(p: float) -> float:
        p = min(max(p, 1e-12), 1 - 1e-12)
        return -(p * math.log(p) + (1 - p) * math.log(1 - p))

    mean = sum(ps) / len(ps)
    return max(0.0, h(mean) - sum(h(p) for p in ps) / len(ps))


@register_pairing("upo")
@dataclass
class Uncertainty(Strategy):
    """UPO (Wang et al. 2024): sample pairs by the judge's certainty about them.

    Candidate pairs are all (better, worse) pairs, ties dropped. Each gets the
    BALD of P(better beats worse) across the judge's stochastic passes (a
    reward model's MC-dropout passes, or an ensemble's members); pairs are
    drawn without replacement with probability ∝ 1 - BALD/log 2 (``easy``,
    the paper's default) or ∝ BALD (``hard``).
    """

    mode: str = "easy"
    """'easy': prefer pairs the judge is sure about; 'hard': prefer uncertain ones."""

    def __post_init__(self):
        super().__post_init__()
        if self.mode not in ("easy", "hard"):
            raise ValueError(f"option mode must be 'easy' or 'hard', got {self.mode!r}")

    def examples(self, prompt, cands, rng, initial=None):
        if any(len(c.judgement.samples) < 2 for c in cands):
            raise ConfigError(
                "pairing strategy 'upo' needs a judge with per-pass scores: a reward_model judge with "
                "mc_dropout >= 2, or an ensemble"
            )
        pairs = [(a, b) for a in cands for b in cands if a.score > b.score]
        if not pairs:
            return [], "all responses scored the same"
        uncertainty = [bald(a.judgement.samples, b.judgement.samples) / math.log(2) for a, b in pairs]
        weights = [(1 - u if self.mode == "easy" else u) + 1e-9 for u in uncertainty]
        out = []
        for _ in range(min(self.config.pairs_per_prompt, len(pairs))):
            i = rng.choices(range(len(pairs)), weights)[0]
            out.append(preference(prompt, *pairs[i]))
            weights[i] = 0.0
        return out, None
