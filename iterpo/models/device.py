"""Where models run: a CUDA GPU, then Apple's MPS, then the CPU, unless the config names one.

Every model iterpo loads (the policy, reference copies, model judges) is
placed with ``resolve_device``; the tensors fed to a model are made on (or
moved to) ``model_device(model)``, so nothing assumes the CPU.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import torch

from iterpo.errors import ConfigError

_NAMES = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


def resolve_device(name: str, what: str = "model.device") -> str:
    """'auto' -> 'cuda' where a CUDA GPU is visible, else 'mps' where Apple's is, else 'cpu'; others are checked."""
    if not _NAMES.fullmatch(name):
        raise ConfigError(f"{what}: {name!r} is not a device; use auto, cpu, cuda, cuda:N or mps")
    if name == "auto":
        if torch.cuda.is_available():
            return "cuda"
        mps = getattr(torch.backends, "mps", None)
        return "mps" if mps is not None and mps.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"{what}: {name} asked for, but no CUDA GPU is visible to PyTorch")
        index = int(name.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise ConfigError(f"{what}: {name} asked for, but only {torch.cuda.device_count()} CUDA GPU(s) are visible")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError(f"{what}: mps asked for, but Apple's MPS is not available here")
    return name


def bf16_by_default(device: str) -> bool:
    """bfloat16 compute is the default on CUDA GPUs that support it (Ampere and later), nowhere else."""
    return device.startswith("cuda") and torch.cuda.is_bf16_supported()


def fast_bfloat16(device: str) -> bool:
    """Whether device multiplies bfloat16 matrices natively: CUDA GPUs of Ampere and later, and CPUs with
    AVX512-BF16 or AMX (Linux; where it cannot be read, no). Elsewhere bfloat16 is emulated, slower than float32."""
    if device.startswith("cuda"):
        return bf16_by_default(device)
    if device != "cpu":
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return bool(re.search(r"\b(avx512_bf16|amx_bf16)\b", flags))


def sampling_dtype(choice: str, model_dtype: str, device: str) -> str:
    """The dtype responses are generated in: sampling.dtype, where 'auto' is bfloat16 for a float32 policy on a
    device with native bfloat16 matrix multiplies (fast_bfloat16), else the policy's own dtype."""
    if choice != "auto":
        return choice
    return "bfloat16" if model_dtype == "float32" and fast_bfloat16(device) else model_dtype


def model_device(model: Any) -> torch.device:
    """The device of a model's parameters (where its inputs must be)."""
    return next(model.parameters()).device


def tensors_to(obj: Any, device: torch.device) -> Any:
    """obj (a dataclass: a pack, a loss batch) with each of its tensors moved to device, in place; returns obj.

    Inputs are built on the CPU; this puts them where the model is (a no-op for those already there)."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if isinstance(value, torch.Tensor) and value.device != device:
            setattr(obj, f.name, value.to(device))
    return obj


def score_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype log-probs are computed in for a model whose logits are dtype: float32, or float64 for a float64
    model (the tabular policy's exact checks), never narrower than the model."""
    return torch.promote_types(dtype, torch.float32)


def model_dtype(model: Any) -> torch.dtype:
    """The dtype of a model's floating-point parameters."""
    return next(p.dtype for p in model.parameters() if p.is_floating_point())


def batch_to(batch: Any, model: Any) -> Any:
    """A loss batch built on the CPU (stored values as float64) moved to the model's device, its stored values
    (the tensors without a graph) in the model's score dtype: float32, or float64 for a float64 model."""
    wide = score_dtype(model_dtype(model))
    for f in dataclasses.fields(batch):
        value = getattr(batch, f.name)
        if isinstance(value, torch.Tensor) and value.dtype == torch.float64 and not value.requires_grad:
            setattr(batch, f.name, value.to(wide))
    return tensors_to(batch, model_device(model))
