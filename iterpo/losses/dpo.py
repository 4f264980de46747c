"""The DPO family of pairwise losses on sequence log-probs.

Notation (ALGORITHMS.md): l(y) = log pi(y|x) - log pi_ref(y|x) summed over the
response tokens, and delta = l(y_w) - l(y_l).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from iterpo.losses.base import LossOutput, PairwiseLoss, PreferenceBatch, register_loss


def _log_ratios(batch: PreferenceBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """(l(y_w), l(y_l)), each (B,)."""
    if batch.ref_chosen_logps is None or batch.ref_rejected_logps is None:
        raise ValueError("this loss needs reference log-probs in the batch")
    return (
        batch.chosen_logps - batch.ref_chosen_logps,
        batch.rejected_logps - batch.ref_rejected_logps,
    )


def _check_beta(beta: float) -> None:
    if not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta}")


@register_loss("dpo")
@dataclass
class DPO(PairwiseLoss):
    """Direct Preference Optimization (Rafailov et al. 2023, eq. 7).

    loss = -log sigmoid(beta * delta). The implicit reward of a response is
    beta * l(y). Same definition as TRL's ``loss_type="sigmoid"`` without label
    smoothing.
    """

    beta: float = 0.1

    def __post_init__(self):
        _check_beta(self.beta)

    def __call__(self, batch: PreferenceBatch) -> LossOutput:
        chosen, rejected = _log_ratios(batch)  # (B,), (B,)
        losses = F.softplus(-self.beta * (chosen - rejected))  # = -log sigmoid(beta*delta)
        return LossOutput(
            loss=losses.mean(),
            losses=losses,
            chosen_rewards=(self.beta * chosen).detach(),
            rejected_rewards=(self.beta * rejected).detach(),
        )
