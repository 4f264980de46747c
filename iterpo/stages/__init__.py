"""The stages a round is made of: one module each, registered by name (see base.py for the contract)."""

from iterpo.stages import (  # noqa: F401  (register them)
    adversary,
    ema,
    evaluate,
    judge,
    look_ahead,
    pair,
    propose,
    rationalize,
    reference,
    refine,
    replay,
    reward_model,
    sample,
    self_tests,
    strength,
    train,
    tree_search,
    warmup,
)
from iterpo.stages.base import STAGES, Stage, register_stage
from iterpo.stages.context import RunContext

__all__ = ["STAGES", "RunContext", "Stage", "register_stage"]
