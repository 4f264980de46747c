"""Judges turn rollouts into scores. One registry; the run config picks by name."""

from iterpo.judges.base import JUDGES, Judge, build_judge, register_judge
from iterpo.judges import code, constraints, verifiers  # noqa: F401  (registers the verifiers)

__all__ = ["JUDGES", "Judge", "build_judge", "register_judge"]
