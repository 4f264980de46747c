"""DPO plus a term on extra samples: exploration bonuses (XPO, VPO) and HyPO's online KL.

The extra ("aux") samples of a prompt arrive as ``aux_logps`` (B, k) under the
policy, with gradient, and ``ref_aux_logps`` (B, k) under the reference. A loss
says where they must come from with ``aux_source``: "reference" (samples of
pi_ref: in the iterative loop with reference.policy = previous, the round's own
rollouts are exactly that) or "policy" (the policy's own samples; the loop uses
the round's rollouts, drawn from the policy at the start of the round).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from iterpo.losses.base import (
    PairwiseLoss,
    PreferenceBatch,
    check_positive,
    check_range,
    log_ratios,
    pair_output,
    register_loss,
    require,
)


def _dpo(batch: PreferenceBatch, beta: float):
    lw, ll = log_ratios(batch)
    return F.softplus(-beta * (lw - ll)), lw, ll


@register_loss("xpo")
@dataclass
class XPO(PairwiseLoss):
    """Exploratory Preference Optimization (Xie et al. 2024, Algorithm 1; TRL/oat ``xpo``).

    loss = -log sigmoid(beta * delta) + alpha * mean_j lp(y~_j), y~_j sampled from
    pi_ref. Lowering the likelihood of the reference's own samples pushes the
    policy to explore; in expectation the term is -alpha KL(pi_ref || pi) + const.
    """

    beta: float = 0.1
    alpha: float = 1e-5

    needs = frozenset({"reference", "aux_samples"})
    aux_source = "reference"

    def __post_init__(self):
        check_positive("beta", self.beta)
        check_range("alpha", self.alpha, 0.0, float("inf"))

    def __call__(self, batch: PreferenceBatch):
        dpo, lw, ll = _dpo(batch, self.beta)
        aux = require(batch.aux_logps, "log-probs of reference samples").mean(dim=1)  # (B,)
        losses = dpo + self.alpha * aux
        return pair_output(losses, self.beta * lw, self.beta * ll, ref_sample_logp=aux.detach().mean())


@register_loss("vpo")
@dataclass
class VPO(PairwiseLoss):
    """Value-Incentivized Preference Optimization (Cen et al. 2024, the DPO-form objective with a
    calibration policy pi_cal = pi_ref).

    optimistic (online): loss = -log sigmoid(beta * delta) + alpha * beta * mean_j l(y~_j)
    pessimistic (offline): the sign of the second term flips.
    y~_j are samples of pi_ref; l is the log-ratio against the reference. The
    paper's alpha values were not verified here; 0.01 is a conservative default.
    """

    beta: float = 0.1
    alpha: float = 0.01
    mode: Literal["optimistic", "pessimistic"] = "optimistic"

    needs = frozenset({"reference", "aux_samples"})
    aux_source = "reference"

    def __post_init__(self):
        check_positive("beta", self.beta)
        check_range("alpha", self.alpha, 0.0, float("inf"))
        if self.mode not in ("optimistic", "pessimistic"):
            raise ValueError(f"mode must be 'optimistic' or 'pessimistic', got {self.mode!r}")

    def __call__(self, batch: PreferenceBatch):
        dpo, lw, ll = _dpo(batch, self.beta)
        aux = require(batch.aux_logps, "log-probs of reference samples")
        ref = require(batch.ref_aux_logps, "reference log-probs of reference samples")
        value = (aux - ref).mean(dim=1)  # (B,) estimate of -KL(pi_ref || pi) per prompt
        sign = 1.0 if self.mode == "optimistic" else -1.0
        losses = dpo + sign * self.alpha * self.beta * value
        return pair_output(losses, self.beta * lw, self.beta * ll, ref_sample_log_ratio=value.detach().mean())


@register_loss("hypo")
@dataclass
class HyPO(PairwiseLoss):
    """Hybrid Preference Optimization (Song et al. 2024, "The importance of online data", Algorithm 1).

    loss = -log sigmoid(beta * delta) + kl_weight * KL(pi || pi_ref), the reverse KL
    estimated on the policy's own samples y_1..y_k of the prompt. Its gradient
    uses the leave-one-out (RLOO) baseline: sum_j (l(y_j) - mean_{i != j} l(y_i)) grad lp(y_j) / k.
    The value reported is DPO + kl_weight * mean_j l(y_j); the gradient is the
    RLOO one. Deviation: the samples are the round's rollouts, drawn from the
    policy at the start of the round, so they are exactly on-policy only at the
    round's first step.
    """

    beta: float = 0.1
    kl_weight: float = 0.01

    needs = frozenset({"reference", "aux_samples"})
    aux_source = "policy"

    def __post_init__(self):
        check_positive("beta", self.beta)
        check_range("kl_weight", self.kl_weight, 0.0, float("inf"))

    def __call__(self, batch: PreferenceBatch):
        dpo, lw, ll = _dpo(batch, self.beta)
        lp = require(batch.aux_logps, "log-probs of the policy's samples")  # (B, k)
        ratio = lp - require(batch.ref_aux_logps, "reference log-probs of the policy's samples")  # (B, k)
        k = ratio.shape[1]
        r = ratio.detach()
        baseline = (r.sum(dim=1, keepdim=True) - r) / (k - 1) if k > 1 else torch.zeros_like(r)
        surrogate = ((r - baseline) * lp).mean(dim=1)  # (B,) its gradient is the RLOO estimate of grad KL
        kl = r.mean(dim=1)  # (B,) the estimate's value
        kl_term = kl + surrogate - surrogate.detach()  # value = kl, gradient = surrogate's
        losses = dpo + self.kl_weight * kl_term
        return pair_output(losses, self.beta * lw, self.beta * ll, policy_kl=kl.mean())
