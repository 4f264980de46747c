"""Preference construction: judged rollouts -> training examples of the shape the loss needs.

base.py holds the contract (a registered ``Strategy`` sees one prompt's judged
``Candidate``s and returns its examples, or why it gave none); each family of
strategies has its module; build.py applies a strategy to a round.
"""

from iterpo.pairing import anchored, pairs, refinement, rejection, shapes, steps, uncertainty  # noqa: F401  (register them)
from iterpo.pairing.base import (
    DEFAULT_STRATEGY,
    PAIRING,
    RECORD_TYPE,
    Candidate,
    PairingResult,
    Strategy,
    preference,
    register_pairing,
    sigmoid,
    win_rates,
)
from iterpo.pairing.build import build_examples, build_strategy, candidates
from iterpo.pairing.uncertainty import bald

__all__ = [
    "DEFAULT_STRATEGY",
    "PAIRING",
    "RECORD_TYPE",
    "Candidate",
    "PairingResult",
    "Strategy",
    "bald",
    "build_examples",
    "build_strategy",
    "candidates",
    "preference",
    "register_pairing",
    "sigmoid",
    "win_rates",
]
