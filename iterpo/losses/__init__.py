"""One registry of preference objectives: ``get_loss(name, **hyperparams)``.

One module per family; importing this package registers them all.
"""

from iterpo.losses import dpo, exploration, listwise, reference_free, selfplay, token, unpaired  # noqa: F401,E402
from iterpo.losses.base import (
    LOSSES,
    NEEDS,
    Loss,
    LossOutput,
    PairwiseLoss,
    PreferenceBatch,
    RankedBatch,
    UnpairedBatch,
    get_loss,
    list_losses,
    loss_hyperparameters,
    register_loss,
)

__all__ = [
    "LOSSES",
    "NEEDS",
    "Loss",
    "LossOutput",
    "PairwiseLoss",
    "PreferenceBatch",
    "RankedBatch",
    "UnpairedBatch",
    "get_loss",
    "list_losses",
    "loss_hyperparameters",
    "register_loss",
]
