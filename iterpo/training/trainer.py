"""iterpo's own PyTorch training loop for preference losses of every data shape.

AdamW (fused, or with a bfloat16 first moment: training/optim.py; or plain SGD,
or L-BFGS to convergence), linear warm-up, gradient accumulation and clipping. A
micro-batch goes through the model packed (models/packing.py: each prompt once,
no padding, the output layer only where response tokens are predicted), in
forward passes of at most ``max_tokens_per_pass`` tokens, its RMSNorms and gated
MLPs keeping fewer activations for the backward (models/lean.py). The reference
log-probs were computed once for the round and come in with the examples,
except where a live reference model is given (token-level losses, or pairs
stored without them).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from contextlib import ExitStack, contextmanager, nullcontext
from typing import Any

import torch

from iterpo.losses import Loss
from iterpo.models.device import bf16_by_default, model_device
from iterpo.models.lean import lean_layers
from iterpo.models.loading import own_memory
from iterpo.models.packing import Layout, packed_attention
from iterpo.training.examples import COLLATE
from iterpo.training.optim import AdamWBf16Mean
from iterpo.training.parallel import DataParallel

LBFGS_ITERATIONS = 200  # the most loss evaluations an L-BFGS step makes (train.optimizer lbfgs)


def reference_model(
    kind: str,
    policy: Any,
    base_path: str,
    dtype: str,
    device: str,
    frozen_copy: bool,
    ema_path: str | None = None,
) -> LiveReference:
    """The reference as a model run without gradients: "previous" is the policy as it is now (a frozen copy when it
    must outlive training's updates); "initial" is the same weights with LoRA adapters off, or the base model;
    "ema" the weight average saved at ema_path (None: round 0's, the base model)."""
    from iterpo.models.loading import is_lora, load_model

    if kind == "previous":
        return LiveReference(copy.deepcopy(policy) if frozen_copy else policy)
    if kind == "ema":
        return LiveReference(load_model(ema_path or base_path, dtype, device=device))
    if kind != "initial":
        raise ValueError(f"reference.policy {kind!r} has no model to run (it is scored per response)")
    if is_lora(policy):
        return LiveReference(policy, adapters_off=True)
    return LiveReference(load_model(base_path, dtype, device=device))


class LiveReference:
    """The reference policy as a model run during training, without gradients.

    ``adapters_off``: the reference is the policy itself with its LoRA adapters
    disabled (the initial model), so no second copy is held.
    """

    def __init__(self, model, adapters_off: bool = False):
        self.model, self.adapters_off = model, adapters_off

    @contextmanager
    def active(self):
        with torch.no_grad(), self.model.disable_adapter() if self.adapters_off else nullcontext():
            yield self.model


def _batch_metrics(batch) -> dict[str, float]:
    """Batch means of the policy's sequence log-probs (summed over response tokens) of chosen and rejected responses."""
    out = {}
    if getattr(batch, "chosen_logps", None) is not None:
        out["logps_chosen"] = float(batch.chosen_logps.detach().mean())
        out["logps_rejected"] = float(batch.rejected_logps.detach().mean())
    return out


def _graph_sum(batch) -> torch.Tensor:
    """The sum of every tensor of a collated batch that the model computed (those that take gradients)."""
    parts = [t.sum() for t in vars(batch).values() if isinstance(t, torch.Tensor) and t.requires_grad]
    return torch.stack(parts).sum()


def train(
    model,
    examples: list,
    loss_fn: Loss,
    config,  # TrainSection
    seed: int,
    pad_id: int = 0,
    progress: Callable[[int], None] | None = None,
    reference: LiveReference | None = None,
    layout: Layout = Layout(),
    parallel: DataParallel | None = None,
) -> list[dict]:
    """Train model in place on examples of loss_fn.data_shape; return one log record per optimizer step.

    ``layout`` chooses how sequences go through the model (models/packing.py);
    every choice gives the same log-probs, the default the fewest tokens.
    ``parallel``: this is one of several processes (torch.distributed) training
    replicas of the model. An optimizer step takes ``grad_accum`` micro-batches
    per process, process k the k-th of every ``processes``; gradients and
    metrics are summed over the processes before the step, so every replica
    takes the same step, the one a single process takes with ``grad_accum *
    processes`` micro-batches (exactly so, up to rounding, for losses whose
    examples are independent: not for KTO's and BCO's batch statistics).
    """
    if not examples:
        return []
    collate = COLLATE[loss_fn.data_shape]
    loss_fn.start(model, examples)
    own = loss_fn.parameters()
    params = [p for p in model.parameters() if p.requires_grad] + own
    own_memory(params)
    # the fused kernel updates each tensor in one pass instead of a dozen elementwise ones; the loss's own
    # parameters in a group of their own, as FSDP's sharded ones cannot share a kernel call with plain tensors
    groups = [{"params": params[: len(params) - len(own)]}] + ([{"params": own}] if own else [])
    if config.optimizer == "sgd":
        optimizer: torch.optim.Optimizer = torch.optim.SGD(groups, lr=config.lr, weight_decay=config.weight_decay)
    elif config.optimizer == "lbfgs":  # each step iterated until the gradient vanishes: the loss's minimiser
        optimizer = torch.optim.LBFGS(
            params,
            lr=config.lr,
            max_iter=LBFGS_ITERATIONS,
            tolerance_grad=1e-11,
            tolerance_change=1e-15,
            history_size=50,
            line_search_fn="strong_wolfe",
        )
    elif config.first_moment == "bfloat16" and _fused_ok(params):  # (it runs the fused kernel on slices)
        optimizer = AdamWBf16Mean(groups, lr=config.lr, weight_decay=config.weight_decay)
    else:
        optimizer = torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay, fused=_fused_ok(params))
    micro = config.batch_size
    # example weights (pairs of sampling.exhaustive's all_pairs, weighted): the step's loss is their weighted mean
    weights = [getattr(e, "weight", 1.0) for e in examples]
    if all(w == 1.0 for w in weights):
        weights = []
    rank, world = (parallel.rank, parallel.processes) if parallel else (0, 1)
    accum = config.grad_accum * world  # micro-batches per optimizer step, over every process
    steps_per_epoch = math.ceil(math.ceil(len(examples) / micro) / accum)
    total_steps = steps_per_epoch * config.epochs
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, config.warmup_steps, total_steps, config.lr_schedule)
    )
    generator = torch.Generator().manual_seed(seed)

    def passes(idx: list[int]) -> list[list[int]]:
        """A micro-batch split into forward passes of at most max_tokens_per_pass tokens (whole examples)."""
        budget = config.max_tokens_per_pass
        if budget is None or not loss_fn.per_example:
            return [idx]
        out: list[list[int]] = [[]]
        tokens = 0
        for i in idx:
            if out[-1] and tokens + examples[i].tokens > budget:
                out.append([])
                tokens = 0
            out[-1].append(i)
            tokens += examples[i].tokens
        return out

    def gradient(group: list[list[int]], mine: list[list[int]], n: int, mass: float) -> tuple[torch.Tensor, dict]:
        """One optimizer step's loss and metrics, its gradient added to the parameters': the mean over the step's
        n examples (weighted: their weighted mean, total weight mass), summed over the processes."""
        metrics: dict[str, float] = {}
        total = 0.0
        every = parallel.passes(len(mine)) if parallel else len(mine)
        for k in range(every):
            # a pass beyond this process's own (sharded training only) repeats the step's first examples and
            # counts for nothing
            idx, counts = (mine[k], True) if k < len(mine) else (group[0][:1], False)
            with autocast:
                batch = collate(model, [examples[i] for i in idx], loss_fn, pad_id, reference, layout)
            if not counts:  # through the model and back (FSDP's gathers), leaving the loss's state alone
                (_graph_sum(batch) * 0.0).backward()
                continue
            out = loss_fn(batch)
            if weights:
                w = torch.tensor([weights[i] for i in idx], dtype=out.losses.dtype, device=out.losses.device)
                value = (out.losses * w).sum() / mass
            else:
                value = out.loss * len(idx) / n
            value.backward()
            total += float(value.detach())
            for key, v in {**out.metrics(), **_batch_metrics(batch)}.items():
                metrics[key] = metrics.get(key, 0.0) + v * len(idx) / n
        if parallel:
            metrics = parallel.sum(params, metrics)
        return torch.tensor(total, dtype=torch.float64), metrics

    log: list[dict] = []
    step = 0
    model.train()
    if config.gradient_checkpointing:
        set_checkpointing(model, True)
    device = model_device(model)
    bf16 = config.bf16 if config.bf16 is not None else bf16_by_default(str(device))
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()
    held = ExitStack()  # the model's modes for training's whole length (gradient checkpointing re-runs forwards)
    try:
        if layout.padding_free:
            held.enter_context(packed_attention(model))
        if layout.lean_layers:
            held.enter_context(lean_layers(model, grads_in_place=layout.grads_in_place))
        for epoch in range(config.epochs):
            order = torch.randperm(len(examples), generator=generator).tolist()
            batches = [order[i : i + micro] for i in range(0, len(order), micro)]
            for s in range(steps_per_epoch):
                group = batches[s * accum : (s + 1) * accum]
                n = sum(len(b) for b in group)
                # this process's passes: the k-th of every `world` micro-batches, each cut to max_tokens_per_pass
                mine = [p for micro_batch in group[rank::world] for p in passes(micro_batch)]
                step_of = (group, mine, n, sum(weights[i] for b in group for i in b) if weights else n)
                metrics: dict[str, float] = {}
                grad_norm = None
                lr = optimizer.param_groups[0]["lr"]
                if isinstance(optimizer, torch.optim.LBFGS):

                    def closure(step_of=step_of, into=metrics) -> torch.Tensor:  # the latest evaluation's metrics
                        optimizer.zero_grad(set_to_none=True)
                        value, found = gradient(*step_of)
                        into.update(found)
                        return value

                    optimizer.step(closure)
                else:
                    metrics = gradient(*step_of)[1]
                    if config.max_grad_norm is not None:
                        grad_norm = (
                            parallel.clip(params, config.max_grad_norm)
                            if parallel
                            else float(torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm))
                        )
                    optimizer.step()
                schedule.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                log.append({"step": step, "epoch": epoch, "examples": n, "lr": lr, "grad_norm": grad_norm, **metrics})
                if progress is not None:
                    progress(n)
    finally:
        held.close()
        if config.gradient_checkpointing:
            set_checkpointing(model, False)
        model.eval()
    return log


def lr_factor(step: int, warmup: int, total: int, schedule: str) -> float:
    """The learning rate of optimizer step ``step`` (0-based) of ``total``, as a fraction of train.lr: a linear
    rise over the first ``warmup`` steps, then constant or falling towards 0 ('linear', 'cosine') so that the
    last step still moves (1 / (total - warmup) of lr for 'linear', as transformers' linear schedule)."""
    if step < warmup:
        return (step + 1) / (warmup + 1)
    if schedule == "constant" or total <= warmup:
        return 1.0
    done = (step - warmup) / (total - warmup)  # 0 at the first step after warmup, < 1 at the last
    if schedule == "linear":
        return 1.0 - done
    return 0.5 * (1.0 + math.cos(math.pi * done))


def set_checkpointing(model, on: bool) -> None:
    """Gradient checkpointing of the model's layers on or off (non-reentrant, PyTorch's recommended form: it takes
    keyword arguments and inputs that need no gradient), by transformers' name for it: ``activation_checkpointing_*``
    where the model has them (transformers 5.x, where the ``gradient_checkpointing_*`` names are deprecated aliases
    due to go in v6), else the older names."""
    if hasattr(model, "activation_checkpointing_enable"):
        if on:
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.activation_checkpointing_disable()
    elif on:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_disable()


def _fused_ok(params) -> bool:
    """The fused AdamW kernel takes floating-point tensors on CPU and CUDA."""
    return all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)
