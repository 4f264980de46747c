"""What AdamW's state costs per step when it is kept in less memory: time and bytes per parameter, three layouts.

The training benchmark's floor (benchmarks/train_memory.py) is weights, gradients and AdamW's two float32 moments:
16 bytes per parameter, 2 GB for SmolLM2-135M-Instruct. The moments are half of it. This script measures what
keeping them in bfloat16 would cost in optimizer-step time on this machine, on tensors of SmolLM2-135M's shapes
with random gradients (no model is loaded), and how far the weights drift from float32 AdamW's over the steps:

- float32 moments, PyTorch's fused AdamW kernel (iterpo's trainer): 8 bytes of state per parameter.
- bfloat16 first moment (iterpo.training.optim, ``train.first_moment: bfloat16``): the same fused kernel run on
  1 MiB slices, each slice's first moment widened to float32 before and rounded back after; 6 bytes.
- both moments bfloat16 (not in iterpo; measured here as the next step down): PyTorch operations on 1 MiB slices,
  the second moment rounded stochastically (at beta2 = 0.999 one step moves it by about 0.1%, under half of
  bfloat16's 0.4-0.8% spacing, so rounding to nearest would lose every update); 4 bytes.

    python benchmarks/optimizer_state.py              # 10 steps of each after the first, alternating
    python benchmarks/optimizer_state.py --steps 20

Columns: state bytes per parameter and in MB for the model; the median seconds of an optimizer step after the
first (which allocates the state), and that against the fused kernel's; how far the weights drifted from
float32 AdamW's (the largest difference of any weight after the last step) as a multiple of the largest change
one step makes.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch

from iterpo.training.optim import AdamWBf16Mean

HIDDEN, INTERMEDIATE, KV, VOCAB, LAYERS = 576, 1536, 192, 49152, 30  # SmolLM2-135M-Instruct
LR, BETAS, EPS, DECAY = 1e-5, (0.9, 0.999), 1e-8, 0.0
SLICE = 1 << 18  # elements per slice: 1 MiB of float32


def shapes() -> list[tuple[int, ...]]:
    layer = [(HIDDEN, HIDDEN), (KV, HIDDEN), (KV, HIDDEN), (HIDDEN, HIDDEN)]  # attention q, k, v, o
    layer += [(INTERMEDIATE, HIDDEN), (INTERMEDIATE, HIDDEN), (HIDDEN, INTERMEDIATE), (HIDDEN,), (HIDDEN,)]
    return [(VOCAB, HIDDEN), (HIDDEN,)] + layer * LAYERS  # tied embedding, final norm, the layers


class Fused:
    """torch.optim.AdamW(fused=True): float32 moments."""

    bytes_per_param = 8

    def __init__(self, params: list[torch.Tensor]) -> None:
        self.opt = torch.optim.AdamW(params, lr=LR, betas=BETAS, eps=EPS, weight_decay=DECAY, fused=True)

    def step(self) -> None:
        self.opt.step()


class Bf16FirstMoment:
    """iterpo's AdamWBf16Mean (train.first_moment: bfloat16)."""

    bytes_per_param = 6

    def __init__(self, params: list[torch.Tensor]) -> None:
        self.opt = AdamWBf16Mean(params, lr=LR, betas=BETAS, eps=EPS, weight_decay=DECAY)

    def step(self) -> None:
        self.opt.step()


class Bf16Moments:
    """Both moments in bfloat16 in PyTorch operations on slices; the second rounded stochastically."""

    bytes_per_param = 4

    def __init__(self, params: list[torch.Tensor]) -> None:
        self.params = params
        self.m = [torch.zeros_like(p, dtype=torch.bfloat16) for p in params]
        self.v = [torch.zeros_like(p, dtype=torch.bfloat16) for p in params]
        self.t = 0
        self.generator = torch.Generator().manual_seed(0)

    @torch.no_grad()
    def step(self) -> None:
        self.t += 1
        b1, b2 = BETAS
        correction1, root2 = 1 - b1**self.t, math.sqrt(1 - b2**self.t)
        for p, m, v in zip(self.params, self.m, self.v):
            p_, g_, m_, v_ = p.view(-1), p.grad.view(-1), m.view(-1), v.view(-1)
            for s in range(0, p_.numel(), SLICE):
                g = g_[s : s + SLICE]
                m32 = m_[s : s + SLICE].float().lerp_(g, 1 - b1)
                v32 = v_[s : s + SLICE].float().mul_(b2).addcmul_(g, g, value=1 - b2)
                p_[s : s + SLICE].addcdiv_(m32, v32.sqrt().div_(root2).add_(EPS), value=-LR / correction1)
                m_[s : s + SLICE].copy_(m32)
                # stochastic rounding: random low 16 bits added to the float32 pattern, then cut off (v32 >= 0)
                bits = v32.view(torch.int32)
                noise = torch.randint(0, 1 << 16, bits.shape, dtype=torch.int32, generator=self.generator)
                bits.add_(noise).bitwise_and_(-(1 << 16))
                v_[s : s + SLICE].copy_(v32)


def model_params(seed: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(s, generator=generator) * 0.02) for s in shapes()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=10)
    args = ap.parse_args()
    layouts = [Fused, Bf16FirstMoment, Bf16Moments]
    params = {k: model_params(0) for k in layouts}
    n = sum(p.numel() for p in params[Fused])
    optimizers = {k: k(params[k]) for k in layouts}
    seconds: dict[type, list[float]] = {k: [] for k in layouts}
    generator = torch.Generator().manual_seed(1)
    largest_update = 0.0
    for _ in range(args.steps + 1):
        grads = [torch.randn(p.shape, generator=generator) * 1e-3 for p in params[Fused]]
        before = [p.detach().clone() for p in params[Fused]] if not largest_update else None
        for k in layouts:  # the same gradients for every layout, one after another
            for p, g in zip(params[k], grads):
                p.grad = g
            start = time.perf_counter()
            optimizers[k].step()
            seconds[k].append(time.perf_counter() - start)
        if before is not None:  # the first step moves every weight by about lr (Adam's first step is sign-like)
            largest_update = max(float((p.detach() - b).abs().max()) for p, b in zip(params[Fused], before))
    fused = statistics.median(seconds[Fused][1:])
    print(
        f"{n / 1e6:.1f} M parameters; {args.steps} steps after the first; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads\n"
    )
    print("| moments | state B/param | state MB | s/step | vs fused | drift (x largest step) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    names = {Fused: "float32 (fused AdamW)", Bf16FirstMoment: "bfloat16 first", Bf16Moments: "bfloat16 both"}
    for k in layouts:
        t = statistics.median(seconds[k][1:])
        drift = max(float((p - q).detach().abs().max()) for p, q in zip(params[k], params[Fused])) / largest_update
        print(
            f"| {names[k]} | {k.bytes_per_param} | {k.bytes_per_param * n / 2**20:.0f} | {t:.3f} | "
            f"{t / fused:.2f}x | {drift:.3f} |"
        )


if __name__ == "__main__":
    main()
