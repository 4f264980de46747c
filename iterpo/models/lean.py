"""Decoder layers that keep fewer activations for the backward pass, with the same math.

A Llama-family decoder layer run by autograd keeps, per token, every
intermediate its backward formulas name: the normalised input of each RMSNorm
beside its input, and in the gated MLP ``gate``, ``silu(gate)``, ``up`` and
their product, four vectors of the MLP's width (SmolLM2-135M: 1536 floats
each). Two of those are one elementwise op away from the others. Here the
RMSNorm keeps its input and the (tokens, 1) reciprocal RMS, and the MLP keeps
its input, ``gate`` and ``up`` and recomputes ``silu(gate) * up`` in its
backward: for SmolLM2-135M a third fewer stored activations per token (the
attention's are left alone), for a few elementwise ops per layer.

With ``grads_in_place`` (training) the MLP's and the attention projections'
backward passes also add each weight's gradient straight into ``.grad``
(``addmm_``) instead of handing autograd a new tensor of the weight's size to
add in a pass of its own (on the training benchmark the step time is the same
within run-to-run noise; fewer weight-sized temporaries pass through the heap).

``lean_layers(model)`` switches this on for the modules it knows, by giving each
module instance a forward of its own for the duration (its class, parameters,
hooks and state dict are untouched), and takes it off again on exit. It knows
the RMSNorm, MLP and attention classes of the model families whose code is the
same as Llama's; a module of another class, a LoRA-wrapped projection, a biased
one, or a call under autocast or with mixed dtypes runs the model's own forward.
"""

from __future__ import annotations

import types
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

# transformers classes whose forward is, line for line, LlamaRMSNorm's or LlamaMLP's
RMS_NORMS = {"LlamaRMSNorm", "MistralRMSNorm", "Qwen2RMSNorm", "Qwen3RMSNorm"}
GATED_MLPS = {"LlamaMLP", "MistralMLP", "Qwen2MLP", "Qwen3MLP"}
ATTENTIONS = {"LlamaAttention", "MistralAttention", "Qwen2Attention", "Qwen3Attention"}


class _RMSNorm(torch.autograd.Function):
    """weight * (x / rms(x)), the RMS taken in float32; keeps x and the (..., 1) reciprocal RMS."""

    @staticmethod
    def forward(ctx, x, weight, eps):  # x (..., H), weight (H,)
        wide = x.float()
        rstd = torch.rsqrt(wide.pow(2).mean(-1, keepdim=True) + eps)  # (..., 1)
        ctx.save_for_backward(x, weight, rstd)
        return weight * (wide * rstd).to(x.dtype)

    @staticmethod
    @once_differentiable  # a second derivative through these is not written: a clear error, not a wrong number
    def backward(ctx, grad_out):  # grad_out (..., H)
        x, weight, rstd = ctx.saved_tensors
        normed = x.float() * rstd  # (..., H), recomputed
        grad_weight = None
        if ctx.needs_input_grad[1]:
            grad_weight = (grad_out * normed.to(x.dtype)).reshape(-1, x.shape[-1]).sum(0)
        grad_normed = (grad_out * weight).float()
        # d(x * rstd)/dx applied to grad_normed: rstd * (g - normed * mean(g * normed))
        grad_x = rstd * (grad_normed - normed * (grad_normed * normed).mean(-1, keepdim=True))
        return grad_x.to(x.dtype), grad_weight, None


def _weight_grad(weight: torch.Tensor, grad_out: torch.Tensor, x: torch.Tensor, in_place: bool):
    """d loss / d weight of ``x @ weight.T`` given grad_out: (grad_out rows).T @ (x rows), (out, in).

    ``in_place``: added straight into ``weight.grad`` (made if there is none) and None returned, so autograd
    neither holds a temporary of the weight's size nor adds it in a pass of its own. ``weight`` must then be
    the parameter itself, kept on ctx: what ctx.saved_tensors gives back may be a detached alias of it
    (non-reentrant checkpointing recomputes the forward and saves detached tensors)."""
    rows_out, rows_x = grad_out.reshape(-1, grad_out.shape[-1]), x.reshape(-1, x.shape[-1])
    if not in_place:
        return rows_out.T @ rows_x
    if weight.grad is None:
        weight.grad = rows_out.T @ rows_x
    else:
        weight.grad.addmm_(rows_out.T, rows_x)
    return None


class _Linear(torch.autograd.Function):
    """x @ weight.T without a bias, its weight's gradient added into .grad in place."""

    @staticmethod
    def forward(ctx, x, weight):  # x (..., in), weight (out, in)
        ctx.save_for_backward(x, weight)
        ctx.param = weight  # whose .grad the backward adds to
        return x @ weight.T  # (..., out)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        grad_x = grad_out @ weight if ctx.needs_input_grad[0] else None
        if ctx.needs_input_grad[1]:
            _weight_grad(ctx.param, grad_out, x, in_place=True)
        return grad_x, None


class _GatedMLP(torch.autograd.Function):
    """down(silu(gate(x)) * up(x)) without biases; keeps x, gate(x) and up(x), recomputes the rest."""

    @staticmethod
    def forward(ctx, x, w_gate, w_up, w_down, in_place):  # x (..., H); w_gate, w_up (I, H); w_down (H, I)
        gate = x @ w_gate.T  # (..., I)
        up = x @ w_up.T  # (..., I)
        ctx.save_for_backward(x, gate, up, w_gate, w_up, w_down)
        ctx.in_place = in_place
        ctx.params = (w_gate, w_up, w_down)  # whose .grad the backward adds to, in place
        return (F.silu(gate) * up) @ w_down.T  # (..., H)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):  # grad_out (..., H)
        x, gate, up, w_gate, w_up, w_down = ctx.saved_tensors
        act = F.silu(gate)  # recomputed: the very values the forward multiplied
        sig = torch.sigmoid(gate)
        need_x, need_gate, need_up, need_down = ctx.needs_input_grad[:4]
        p_gate, p_up, p_down = ctx.params
        grad_down = _weight_grad(p_down, grad_out, act * up, ctx.in_place) if need_down else None  # (H, I)
        grad_hidden = grad_out @ w_down  # (..., I): d loss / d (silu(gate) * up)
        grad_up = grad_hidden * act
        # silu'(g) = sig * (1 + g * (1 - sig)), in grad_hidden's and sig's own buffers
        grad_gate = grad_hidden.mul_(up).mul_(sig.mul_(gate * (1 - sig) + 1))
        del act, sig
        grad_x = grad_gate @ w_gate + grad_up @ w_up if need_x else None
        grad_w_gate = _weight_grad(p_gate, grad_gate, x, ctx.in_place) if need_gate else None  # (I, H)
        grad_w_up = _weight_grad(p_up, grad_up, x, ctx.in_place) if need_up else None
        return grad_x, grad_w_gate, grad_w_up, grad_down, None


def _plain_call(x: torch.Tensor, *weights: torch.Tensor) -> bool:
    """Whether the lean function computes exactly what the module would: no autocast, one dtype throughout."""
    return not torch.is_autocast_enabled(x.device.type) and all(w.dtype == x.dtype for w in weights)


def _norm_forward(self, hidden_states):
    if not _plain_call(hidden_states, self.weight):
        return type(self).forward(self, hidden_states)
    return _RMSNorm.apply(hidden_states, self.weight, self.variance_epsilon)


def _into_grad(*weights: torch.Tensor) -> bool:
    """Whether a backward may add these weights' gradients into their .grad itself: leaves that take one,
    under grad mode (training's .backward(); torch.autograd.grad would find nothing returned)."""
    return torch.is_grad_enabled() and all(w.is_leaf and w.requires_grad for w in weights)


def _mlp_forward(self, x, in_place: bool = False):
    weights = (self.gate_proj.weight, self.up_proj.weight, self.down_proj.weight)
    if not _plain_call(x, *weights):
        return type(self).forward(self, x)
    return _GatedMLP.apply(x, *weights, in_place and _into_grad(*weights))


def _linear_forward(self, x):  # only ever switched on for in-place gradients, its one difference
    if not (_plain_call(x, self.weight) and _into_grad(self.weight)):
        return type(self).forward(self, x)
    return _Linear.apply(x, self.weight)


def _plain_linear(module) -> bool:
    return type(module) is torch.nn.Linear and module.bias is None  # not LoRA-wrapped, no bias


def _lean_forwards(model, in_place: bool) -> Iterator[tuple[torch.nn.Module, Any]]:
    """(module, its lean forward) for every module of the model with one that computes the same thing."""
    for module in model.modules():
        kind = type(module).__name__
        if kind in RMS_NORMS and isinstance(getattr(module, "weight", None), torch.nn.Parameter):
            yield module, _norm_forward
        elif kind in GATED_MLPS:
            linears = [getattr(module, name, None) for name in ("gate_proj", "up_proj", "down_proj")]
            if all(_plain_linear(m) for m in linears) and type(getattr(module, "act_fn", None)) in _silu_classes():
                yield module, partial(_mlp_forward, in_place=in_place)
        elif kind in ATTENTIONS and in_place:  # their projections: only the in-place gradient is new
            for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
                linear = getattr(module, name, None)
                if isinstance(linear, torch.nn.Module) and _plain_linear(linear):
                    yield linear, _linear_forward


def _silu_classes() -> tuple[type, ...]:
    """SiLU as a module: PyTorch's and transformers' own (what ACT2FN["silu"] makes)."""
    from transformers.activations import ACT2FN

    return torch.nn.SiLU, type(ACT2FN["silu"])


@contextmanager
def lean_layers(model, grads_in_place: bool = False) -> Iterator[int]:
    """Run the model's RMSNorms and gated MLPs with lean backward passes inside the block; yields how many
    modules were switched (0: none this module knows).

    ``grads_in_place`` (training, where gradients are taken with ``.backward()``): the MLPs' and the
    attention projections' backward passes add their weight gradients into ``.grad`` themselves, so no
    temporary of each weight's size is made and added in a pass of its own (not for a model FSDP shards,
    whose gradients FSDP itself gathers)."""
    from iterpo.models.packing import _sharded

    in_place = grads_in_place and not _sharded(model)
    switched = []
    for module, forward in list(_lean_forwards(model, in_place)):
        if "forward" not in vars(module):
            module.forward = types.MethodType(forward, module)  # the instance's own, shadowing its class's
            switched.append(module)
    try:
        yield len(switched)
    finally:
        for module in switched:
            del module.forward
