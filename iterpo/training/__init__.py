"""The optimizer loop: training examples in, an updated policy out."""

from iterpo.training.examples import GroupExample, PairExample, UnpairedExample
from iterpo.training.trainer import LiveReference, train

__all__ = ["GroupExample", "LiveReference", "PairExample", "UnpairedExample", "train"]
