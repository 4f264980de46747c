"""Generation backends. The transformers backend runs everywhere."""

from iterpo.sampling.generate import derive_seed, generate

__all__ = ["derive_seed", "generate"]
