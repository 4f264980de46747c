"""Generation backends behind one contract (base.Sampler): transformers everywhere, vLLM on CUDA GPUs."""

from iterpo.sampling.backends import choose_backend, open_sampler
from iterpo.sampling.base import Sampler, TransformersSampler
from iterpo.sampling.generate import derive_seed, generate

__all__ = ["Sampler", "TransformersSampler", "choose_backend", "derive_seed", "generate", "open_sampler"]
