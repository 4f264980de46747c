"""Losses on single responses labelled desirable or undesirable."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from iterpo.losses.base import Loss, LossOutput, UnpairedBatch, check_positive, register_loss, require


@register_loss("kto")
@dataclass
class KTO(Loss):
    """Kahneman-Tversky Optimization (Ethayarajh et al. 2024, eq. 7 as TRL cites it; TRL's KTOTrainer ``kto``).

    With r = l(y) and the reference point z0 = max(0, mean over the batch of
    l(y'|x)) on mismatched (prompt, response) pairs, detached:
        desirable:   desirable_weight   * (1 - sigmoid(beta * (r - z0)))
        undesirable: undesirable_weight * (1 - sigmoid(beta * (z0 - r)))
    The KTO paper recommends weights with
    desirable_weight * n_desirable / (undesirable_weight * n_undesirable) in [1, 4/3];
    the ratio is logged as ``weighted_desirable_ratio``.
    """

    beta: float = 0.1
    desirable_weight: float = 1.0
    undesirable_weight: float = 1.0

    data_shape = "unpaired"
    needs = frozenset({"reference"})

    def __post_init__(self):
        check_positive("beta", self.beta)
        check_positive("desirable_weight", self.desirable_weight)
        check_positive("undesirable_weight", self.undesirable_weight)

    def __call__(self, batch: UnpairedBatch) -> LossOutput:
        r = batch.logps - require(batch.ref_logps, "reference log-probs")  # (B,)
        kl = require(batch.kl_logps, "mismatched-pair log-probs") - require(batch.ref_kl_logps, "mismatched-pair reference log-probs")
        z0 = kl.mean().detach().clamp(min=0)  # () the reference point: no gradient flows through it
        good = batch.desirable.bool()
        losses = torch.where(
            good,
            self.desirable_weight * (1 - torch.sigmoid(self.beta * (r - z0))),
            self.undesirable_weight * (1 - torch.sigmoid(self.beta * (z0 - r))),
        )
        rewards = (self.beta * r).detach()
        n_good, n_bad = int(good.sum()), int((~good).sum())
        extra = {"z0": float(z0)}
        if n_good:
            extra["reward_desirable"] = float(rewards[good].mean())
        if n_bad:
            extra["reward_undesirable"] = float(rewards[~good].mean())
            extra["weighted_desirable_ratio"] = self.desirable_weight * n_good / (self.undesirable_weight * n_bad)
        return LossOutput(loss=losses.mean(), losses=losses, extra=extra)
