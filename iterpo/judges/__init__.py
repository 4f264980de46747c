"""Judges turn rollouts into scores. One registry; the run config picks by name."""

from iterpo.judges.base import (JUDGES, Judge, JudgeContext, build_judge, judge_with_cache, make_judge,
                                register_judge)
from iterpo.judges.cache import JudgeCache
from iterpo.judges import code, constraints, verifiers  # noqa: F401  (register the verifiers)

__all__ = ["JUDGES", "Judge", "JudgeCache", "JudgeContext", "build_judge", "judge_with_cache", "make_judge",
           "register_judge"]
