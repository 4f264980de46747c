"""What a round did to the policy, as numbers: ranking accuracies, implicit-reward accuracy, KL estimates and
diversity, from sequence log-probs and token ids (the eval stage computes them; iterpo.stages.analyses).

Every function takes plain lists, so each can be checked by hand. A pair is (y_w, y_l) for one prompt, y_w the
response the verifier prefers; ``logp`` is a sequence log-prob, the sum of the response's token log-probs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def ranking_accuracy(logp_w: Sequence[float], logp_l: Sequence[float]) -> float | None:
    """R(pi): the share of pairs whose preferred response the policy finds more likely, pi(y_w|x) > pi(y_l|x)
    (Chen et al. 2024, "Preference Learning Algorithms Do Not Learn Preference Rankings", section 3); a tie
    counts as wrong. None without pairs."""
    return _mean([float(w > l) for w, l in zip(logp_w, logp_l, strict=True)])


def logit(p: float) -> float:
    """log(p / (1 - p)), +-inf at 1 and 0."""
    if p >= 1.0:
        return math.inf
    if p <= 0.0:
        return -math.inf
    return math.log(p / (1.0 - p))


def idealized_ranking_accuracy(
    ref_w: Sequence[float], ref_l: Sequence[float], p: Sequence[float], beta: float
) -> float | None:
    """R*: the ranking accuracy of the policy that exactly optimises the DPO objective, pi* = pi_ref exp(r/beta)/Z
    with Bradley-Terry rewards, so that r(y_w) - r(y_l) = logit(p) for the pair's preference probability p (Chen
    et al. 2024, section 3):

        R* = mean over pairs of 1[ log pi_ref(y_w) - log pi_ref(y_l) + logit(p) / beta > 0 ]

    A reference that ranks a pair badly is corrected only as far as the preference's strength allows: with p = 1
    the pair is always ranked right, with p = 0.5 as the reference ranks it."""
    if beta <= 0:
        raise ValueError(f"beta must be positive, got {beta}")
    return _mean([float(w - l + logit(q) / beta > 0) for w, l, q in zip(ref_w, ref_l, p, strict=True)])


def implicit_reward_accuracy(
    pol_w: Sequence[float], pol_l: Sequence[float], ref_w: Sequence[float], ref_l: Sequence[float]
) -> float | None:
    """How often DPO's implicit reward, beta log(pi(y)/pi_ref(y)), ranks a pair as the verifier does:
    mean of 1[(log pi(y_w) - log pi_ref(y_w)) - (log pi(y_l) - log pi_ref(y_l)) > 0] (beta > 0 does not change
    the sign). Measured on held-out pairs and on a shifted set, it is the generalisation of the DPO reward
    model (Lin et al. 2024, "On the Limited Generalization Capability of the Implicit Reward Model Induced by
    Direct Preference Optimization")."""
    rows = zip(pol_w, pol_l, ref_w, ref_l, strict=True)
    return _mean([float((a - c) - (b - d) > 0) for a, b, c, d in rows])


def kl_estimate(logp_policy: Sequence[float], logp_other: Sequence[float]) -> float | None:
    """KL(pi || other) from responses sampled from pi (temperature 1, no truncation): the mean of
    log pi(y) - log other(y), an unbiased Monte-Carlo estimate (Schulman's k1) of the sequence-level KL, in nats
    per response. Single samples may be negative; the expectation is not."""
    return _mean([a - b for a, b in zip(logp_policy, logp_other, strict=True)])


def distinct_n(responses: Sequence[Sequence[int]], n: int) -> float | None:
    """distinct-n (Li et al. 2016): distinct n-grams over all n-grams of the responses' tokens, pooled; 1.0 when
    no n-gram repeats. None when no response has n tokens."""
    grams = [tuple(ids[i : i + n]) for ids in responses for i in range(len(ids) - n + 1)]
    return len(set(grams)) / len(grams) if grams else None


def win_rate(outcomes: Sequence[float]) -> float | None:
    """The mean of per-prompt outcomes: 1 a win, 0 a loss, 0.5 a tie (or a pairwise judge's probability)."""
    return _mean(outcomes)


def outcome(ours: float, theirs: float) -> float:
    """A pointwise judge's verdict on two responses as a win (1), a tie (0.5) or a loss (0)."""
    return 1.0 if ours > theirs else 0.5 if ours == theirs else 0.0
