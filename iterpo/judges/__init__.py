"""Judges turn rollouts into scores. One registry; the run config picks by name."""

from iterpo.judges import (  # noqa: F401  (register the judges)
    code,
    constraints,
    ensemble,
    http,
    matrix,
    pairwise,
    process,
    reward_model,
    self_judge,
    trajectory,
    verifiers,
)
from iterpo.judges.base import (
    JUDGES,
    Judge,
    JudgeContext,
    build_judge,
    judge_all,
    judge_with_cache,
    make_judge,
    register_judge,
    uncached,
)
from iterpo.judges.cache import JudgeCache

__all__ = [
    "JUDGES",
    "Judge",
    "JudgeCache",
    "JudgeContext",
    "build_judge",
    "judge_all",
    "judge_with_cache",
    "make_judge",
    "register_judge",
    "uncached",
]
