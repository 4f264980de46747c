"""The optimizer loop: preference pairs in, an updated policy out."""

from iterpo.training.trainer import TrainPair, train_on_pairs

__all__ = ["TrainPair", "train_on_pairs"]
