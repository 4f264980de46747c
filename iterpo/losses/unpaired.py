"""Losses on single responses labelled desirable or undesirable."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

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
    the ratio is logged as ``weighted_desirable_ratio``. The default
    ``desirable_weight: auto`` sets it to n_undesirable / n_desirable of the
    round's data, making that ratio 1: a verifier early in training labels most
    samples undesirable, and unweighted KTO then mostly pushes likelihood down
    (on the built-in default it wrecked the model in one round).
    """

    per_example: ClassVar[bool] = False  # batch statistics: a micro-batch goes through in one pass

    beta: float = 0.1
    desirable_weight: float | str = "auto"
    undesirable_weight: float = 1.0
    _auto_weight: float | None = field(default=None, init=False, repr=False)

    data_shape = "unpaired"
    needs = frozenset({"reference"})

    def __post_init__(self):
        check_positive("beta", self.beta)
        if self.desirable_weight != "auto":
            if isinstance(self.desirable_weight, str):
                raise ValueError(f"desirable_weight must be a number or 'auto', got {self.desirable_weight!r}")
            check_positive("desirable_weight", self.desirable_weight)
        check_positive("undesirable_weight", self.undesirable_weight)

    def start(self, model=None, examples=None) -> None:
        self._auto_weight = None
        if self.desirable_weight == "auto" and examples:
            good = sum(1 for e in examples if e.desirable)
            self._auto_weight = (len(examples) - good) / good if good else 1.0

    def _weight(self, desirable: torch.Tensor) -> float:
        if self.desirable_weight != "auto":
            return float(self.desirable_weight)
        if self._auto_weight is not None:
            return self._auto_weight
        good = int(desirable.sum())  # not started on a data set: balance this batch
        return (len(desirable) - good) / good if good else 1.0

    def __call__(self, batch: UnpairedBatch) -> LossOutput:
        r = batch.logps - require(batch.ref_logps, "reference log-probs")  # (B,)
        kl = require(batch.kl_logps, "mismatched-pair log-probs") - require(
            batch.ref_kl_logps, "mismatched-pair reference log-probs"
        )
        z0 = kl.mean().detach().clamp(min=0)  # () the reference point: no gradient flows through it
        good = batch.desirable.bool()
        lam_d = self._weight(good)
        losses = torch.where(
            good,
            lam_d * (1 - torch.sigmoid(self.beta * (r - z0))),
            self.undesirable_weight * (1 - torch.sigmoid(self.beta * (z0 - r))),
        )
        rewards = (self.beta * r).detach()
        n_good, n_bad = int(good.sum()), int((~good).sum())
        extra = {"z0": float(z0)}
        if n_good:
            extra["reward_desirable"] = float(rewards[good].mean())
        if n_bad:
            extra["reward_undesirable"] = float(rewards[~good].mean())
            extra["weighted_desirable_ratio"] = lam_d * n_good / (self.undesirable_weight * n_bad)
        extra["desirable_weight"] = lam_d
        return LossOutput(loss=losses.mean(), losses=losses, extra=extra)
