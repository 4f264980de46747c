"""Generation backends behind one contract (base.Sampler): transformers everywhere, vLLM on CUDA GPUs."""

from iterpo.sampling.base import Sampler, TransformersSampler, open_sampler
from iterpo.sampling.generate import derive_seed, generate

__all__ = ["Sampler", "TransformersSampler", "derive_seed", "generate", "open_sampler"]
