"""DPO with side targets: the pair's preference, and the likelihood of text written beside it (a rationale, a
degree label; iterpo.pairing.side builds them and the collate step scores them after their own requests).

    loss = -log sigmoid(beta * delta) + weight * mean_s( -log pi(target_s | request_s) / |target_s| )

the side term averaged over a pair's side targets (each length-normalised), 0 for a pair with none.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

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


def side_nll(batch: PreferenceBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """Per pair: the mean length-normalised NLL of its side targets (0 without any), and whether it has any."""
    logps = require(batch.side_logps, "side target log-probs")  # (B, S)
    mask = require(batch.side_mask, "side target mask").to(logps.dtype)  # (B, S)
    lengths = require(batch.side_lengths, "side target lengths")  # (B, S)
    per_target = -logps / lengths * mask  # (B, S)
    count = mask.sum(1)  # (B,)
    return per_target.sum(1) / count.clamp(min=1), count > 0


@register_loss("rationale_dpo")
@dataclass
class RationaleDPO(PairwiseLoss):
    """DPO with rationales (Just et al. 2024, "Data-Centric Human Preference Optimization with Rationales"):
    the policy also learns the judge's reason for each preference, -log pi(rationale | x, y_w, y_l), weighted by
    gamma. Pairs need side targets: pairing.rationale true (a judge that explains)."""

    needs = frozenset({"reference", "side_targets"})
    reference_cancels = True  # only differences within a prompt

    beta: float = 0.1
    gamma: float = 1.0
    """The weight of the rationale's per-token NLL."""

    def __post_init__(self):
        check_positive("beta", self.beta)
        check_range("gamma", self.gamma, 0.0, math.inf)

    def __call__(self, batch: PreferenceBatch):
        chosen, rejected = log_ratios(batch)  # (B,), (B,)
        nll, has = side_nll(batch)  # (B,), (B,)
        losses = F.softplus(-self.beta * (chosen - rejected)) + self.gamma * nll
        extra = {
            "side_nll": float(nll[has].detach().mean()) if bool(has.any()) else 0.0,
            "with_side": float(has.float().mean()),
        }
        return pair_output(losses, self.beta * chosen, self.beta * rejected, **extra)


@register_loss("ssl_dpo")
@dataclass
class SelfSupervisedDPO(RationaleDPO):
    """DPO with Self-supervised Preference Optimization's auxiliary task (Li et al. 2024): the policy predicts
    how many key sentences were removed from a chosen response (side targets from pairing.degrees), its NLL
    weighted by gamma. The paper classifies the degree with a head; here the policy writes the number, so the
    classifier is its own output layer and the policy keeps no extra parameters."""

    gamma: float = 0.1
