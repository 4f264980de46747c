"""AdamW with its first moment stored in bfloat16: 6 bytes of optimizer state per parameter instead of 8.

AdamW (Loshchilov & Hutter, 2019, "Decoupled Weight Decay Regularization")
keeps two running averages per parameter, the gradient's (first moment, m) and
its square's (second moment, v). For float32 weights they are half of
training's fixed memory: weights, gradients, m and v are 4 bytes each.

Here m is stored in bfloat16 and v in float32. Each step works in 1 MiB slices:
a slice of m is widened to float32, PyTorch's fused AdamW kernel updates the
slice's weights, m and v in float32 as ``torch.optim.AdamW(fused=True)`` does,
and m is rounded back to bfloat16 (to nearest). Within a step the arithmetic
is AdamW's; between steps m carries bfloat16's 8 significant bits. Storing
AdamW's moments in bfloat16 is what DeepSeek-V3 trains with (DeepSeek-AI,
2024, "DeepSeek-V3 Technical Report", section 3.3.3). Only the first moment:
a step moves it by (1 - beta1) = 10% of the way to the new gradient, far above
bfloat16's resolution (0.4-0.8% relative), while at beta2 = 0.999 a step moves
v by about 0.1%, which rounding to nearest would lose every time.

The slices keep the temporaries small (1 MiB on the CPU; a whole widened copy
of SmolLM2-135M's tied embedding would be 113 MB). On 2 CPU cores a step takes
0.2 s for SmolLM2-135M against the fused kernel's 0.1 s
(benchmarks/optimizer_state.py), about 3% of a training step of the training
benchmark's.
"""

from __future__ import annotations

import torch

CPU_SLICE = 1 << 18  # elements per slice on the CPU: 1 MiB of float32, held in cache between the three passes
DEVICE_SLICE = 1 << 22  # on a GPU: 16 MiB, few enough kernel launches for a model of billions of parameters


def _local(t: torch.Tensor) -> torch.Tensor:
    """This process's part of a tensor FSDP shards (a DTensor), else the tensor."""
    to_local = getattr(t, "to_local", None)
    return to_local() if to_local is not None else t


class AdamWBf16Mean(torch.optim.Optimizer):
    """AdamW (no AMSGrad) whose first moment is kept in bfloat16 for float32 parameters (others keep both
    moments in their own dtype, as ``torch.optim.AdamW``). Parameters on the CPU or a CUDA device."""

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
    ):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:  # no gradient this step: left alone, as AdamW leaves it
                    continue
                weight, grad = _local(p), _local(p.grad)
                state = self.state[p]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float32, device=weight.device)
                    mean_dtype = torch.bfloat16 if weight.dtype == torch.float32 else weight.dtype
                    flat = dict(memory_format=torch.contiguous_format)
                    state["exp_avg"] = torch.zeros_like(weight, dtype=mean_dtype, **flat)
                    state["exp_avg_sq"] = torch.zeros_like(weight, **flat)
                state["step"] += 1
                # flat views of the same storage (a copy of a weight laid out otherwise, written back below)
                w = weight if weight.is_contiguous() else weight.contiguous()
                parts = [t.view(-1) for t in (w, grad.contiguous(), state["exp_avg"], state["exp_avg_sq"])]
                size = CPU_SLICE if w.device.type == "cpu" else DEVICE_SLICE
                for s in range(0, parts[0].numel(), size):
                    w_, g_, m_, v_ = (t[s : s + size] for t in parts)
                    wide = m_.to(w_.dtype)  # (slice,) float32: a copy; m itself when the dtypes agree
                    torch._fused_adamw_(
                        [w_],
                        [g_],
                        [wide],
                        [v_],
                        [],
                        [state["step"]],
                        lr=group["lr"],
                        beta1=beta1,
                        beta2=beta2,
                        weight_decay=group["weight_decay"],
                        eps=group["eps"],
                        amsgrad=False,
                        maximize=False,
                    )
                    if wide is not m_:
                        m_.copy_(wide)  # rounded to the nearest bfloat16
                if w is not weight:
                    weight.copy_(w)
        return loss
