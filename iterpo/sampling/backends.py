"""Choosing a run's sampling backend: the one place that knows both (transformers everywhere, vLLM on CUDA GPUs)."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from typing import Any

from iterpo.errors import UserInputError
from iterpo.sampling.base import Sampler, TransformersSampler
from iterpo.sampling.vllm_backend import VLLMSampler


def vllm_usable() -> bool:
    """vLLM installed and a CUDA GPU visible."""
    if importlib.util.find_spec("vllm") is None:
        return False
    import torch

    return torch.cuda.is_available()


def choose_backend(name: str) -> str:
    """'auto' -> 'vllm' where vLLM and a GPU are present, else 'transformers'; 'vllm' is checked."""
    if name == "auto":
        return "vllm" if vllm_usable() else "transformers"
    if name == "vllm" and not vllm_usable():
        raise UserInputError(
            "sampling.backend: vllm needs the vllm package and a CUDA GPU "
            "(pip install vllm on a GPU machine), or use 'auto' / 'transformers'"
        )
    return name


def open_sampler(
    backend: str,
    model: Callable[[], Any],
    model_dir: Callable[[], str],
    tokenizer: Any,
    dtype: str,
    gpu_memory_utilization: float,
    seed: int,
) -> Sampler:
    """The sampler of a run's backend ('transformers' or 'vllm', as choose_backend resolved it) for one policy.

    model() gives the policy in memory (transformers); model_dir() a directory holding it (vLLM loads from disk).
    dtype: the weights' dtype while generating.
    """
    if backend == "vllm":
        return VLLMSampler(model_dir, tokenizer.eos_token_id, dtype, gpu_memory_utilization, seed)
    return TransformersSampler(model, tokenizer, dtype)
