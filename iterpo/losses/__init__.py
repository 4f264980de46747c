"""One registry of preference objectives: ``get_loss(name, **hyperparams)``."""

from iterpo.losses.base import (
    LOSSES,
    LossOutput,
    PairwiseLoss,
    PreferenceBatch,
    get_loss,
    list_losses,
    loss_hyperparameters,
    register_loss,
)
from iterpo.losses import dpo  # noqa: F401  (registers the DPO family)

__all__ = [
    "LOSSES",
    "LossOutput",
    "PairwiseLoss",
    "PreferenceBatch",
    "get_loss",
    "list_losses",
    "loss_hyperparameters",
    "register_loss",
]
