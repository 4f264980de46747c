"""The loss contract: a PreferenceBatch goes in, a LossOutput comes out.

Losses are pure functions of log-probabilities. Each one is a small dataclass
whose fields are its hyperparameters, registered by name:

    @register_loss("dpo")
    @dataclass
    class DPO(PairwiseLoss):
        beta: float = 0.1
        def __call__(self, batch): ...

``get_loss("dpo", beta=0.5)`` builds one; an unknown name or hyperparameter
raises ConfigError listing what exists, so a bad run config fails at load.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar, Optional

import torch

from iterpo.errors import ConfigError
from iterpo.registry import Registry


@dataclass
class PreferenceBatch:
    """Per-pair tensors for pairwise losses. B = number of pairs."""

    chosen_logps: torch.Tensor  # (B,) sum of policy token log-probs of the chosen response
    rejected_logps: torch.Tensor  # (B,) same for the rejected response
    ref_chosen_logps: Optional[torch.Tensor] = None  # (B,) under the reference policy
    ref_rejected_logps: Optional[torch.Tensor] = None  # (B,)
    chosen_lengths: Optional[torch.Tensor] = None  # (B,) response lengths in tokens
    rejected_lengths: Optional[torch.Tensor] = None  # (B,)


@dataclass
class LossOutput:
    loss: torch.Tensor  # () mean over the batch, the value to backpropagate
    losses: torch.Tensor  # (B,) one value per pair
    chosen_rewards: Optional[torch.Tensor] = None  # (B,) implicit reward, detached
    rejected_rewards: Optional[torch.Tensor] = None  # (B,)

    def metrics(self) -> dict[str, float]:
        """Scalar metrics to log: loss, rewards, margin, reward accuracy."""
        out = {"loss": float(self.loss.detach())}
        if self.chosen_rewards is not None and self.rejected_rewards is not None:
            margin = self.chosen_rewards - self.rejected_rewards
            out["reward_chosen"] = float(self.chosen_rewards.mean())
            out["reward_rejected"] = float(self.rejected_rewards.mean())
            out["reward_margin"] = float(margin.mean())
            out["reward_accuracy"] = float((margin > 0).float().mean())
        return out


class PairwiseLoss:
    """Base for losses on (chosen, rejected) pairs.

    ``needs_reference`` tells the training loop whether to compute reference
    log-probs at all: a reference-free loss (SimPO, ORPO) sets it False.
    """

    data_shape: ClassVar[str] = "pairs"
    needs_reference: ClassVar[bool] = True

    def __call__(self, batch: PreferenceBatch) -> LossOutput:  # pragma: no cover
        raise NotImplementedError


LOSSES: Registry[type] = Registry("loss")
register_loss = LOSSES.register


def loss_hyperparameters(name: str) -> dict[str, object]:
    """Hyperparameter names of a registered loss with their defaults."""
    cls = LOSSES.get(name)
    return {f.name: f.default for f in dataclasses.fields(cls)}


def get_loss(name: str, **hyperparams) -> PairwiseLoss:
    """Build the registered loss ``name``; unknown hyperparameters raise ConfigError."""
    known = loss_hyperparameters(name)
    unknown = sorted(set(hyperparams) - set(known))
    if unknown:
        raise ConfigError(
            f"loss {name!r} has no hyperparameter {', '.join(map(repr, unknown))}; "
            f"it takes: {', '.join(known) or 'none'}"
        )
    try:
        return LOSSES.get(name)(**hyperparams)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"loss {name!r}: {exc}") from exc


def list_losses() -> list[str]:
    return LOSSES.names()
