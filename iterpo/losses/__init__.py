"""One registry of preference objectives: ``get_loss(name, **hyperparams)``.

One module per family; importing this package registers them all.
"""

from iterpo.losses import (  # noqa: F401,E402
    dpo,
    exploration,
    listwise,
    policy_gradient,
    reference_free,
    selfplay,
    side,
    token,
    unpaired,
)
from iterpo.losses.base import (
    LOSSES,
    NEEDS,
    Loss,
    LossOutput,
    PairwiseLoss,
    PreferenceBatch,
    RankedBatch,
    ScoredBatch,
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
    "ScoredBatch",
    "UnpairedBatch",
    "get_loss",
    "list_losses",
    "loss_hyperparameters",
    "register_loss",
]
