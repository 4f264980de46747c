"""What a training process does differently when it is one of several (torch.distributed).

Two ways to split the work, both giving the steps one process takes with
``grad_accum x processes`` micro-batches:

- replicas (the default): every process holds the whole model and optimizer;
  before each step the gradients are summed over the processes.
- sharded (``train.fsdp``): PyTorch FSDP (``fully_shard``) splits every
  decoder layer's parameters, gradients and optimizer state over the
  processes, gathering a layer's weights only while it runs. For models that
  do not fit one device. FSDP sums the sharded gradients itself in the
  backward pass; what it does not hold (a loss's own parameters) is summed
  here.
"""

from __future__ import annotations

import math

import torch


def _is_sharded(t: torch.Tensor) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)


class DataParallel:
    """This process's place among the training processes, and the sums across them."""

    def __init__(self, rank: int, processes: int, sharded: bool = False):
        self.rank, self.processes, self.sharded = rank, processes, sharded

    def passes(self, mine: int) -> int:
        """How many forward passes every process runs in this step: the most any process has.

        Sharded, each forward pass gathers weights from all processes, so all must run as many; a process with
        fewer passes of its own runs passes that count for nothing (weight 0). Replicas need none of that.
        """
        if not self.sharded:
            return mine
        import torch.distributed as dist

        most = torch.tensor([mine])
        dist.all_reduce(most, op=dist.ReduceOp.MAX)
        return int(most)

    def sum(self, params: list, metrics: dict[str, float]) -> dict[str, float]:
        """Sum the gradients FSDP does not hold, and the step's metrics, over the processes (in place)."""
        import torch.distributed as dist

        replicated = [p for p in params if not _is_sharded(p)]
        # Which parameters got a gradient in some process: the others keep none, as in one process (so the
        # optimizer leaves them alone, e.g. experts no token was routed to).
        used = torch.tensor([p.grad is not None for p in replicated], dtype=torch.int32)
        dist.all_reduce(used)
        for p, anywhere in zip(replicated, used.tolist()):
            if not anywhere:
                continue
            if p.grad is None:  # this process had no micro-batch in this step, or p took no part in it
                p.grad = torch.zeros_like(p)
            dist.all_reduce(p.grad)
        names = sorted(metrics)
        gathered: list = [None] * self.processes
        dist.all_gather_object(gathered, metrics)
        totals = {k: sum(m.get(k, 0.0) for m in gathered) for k in sorted({k for m in gathered for k in m})}
        return {k: totals[k] for k in names + [k for k in totals if k not in names]}

    def clip(self, params: list, max_norm: float) -> float:
        """Scale the gradients to a global norm of at most max_norm, as torch.nn.utils.clip_grad_norm_ does in one
        process; the norm before scaling. A sharded gradient's norm is summed over its shards."""
        if not self.sharded:
            return float(torch.nn.utils.clip_grad_norm_(params, max_norm))
        import torch.distributed as dist

        grads = [p.grad for p in params if p.grad is not None]
        sharded = torch.zeros((), dtype=torch.float64)
        whole = torch.zeros((), dtype=torch.float64)
        for g in grads:
            if _is_sharded(g):
                sharded += g.to_local().double().pow(2).sum().cpu()
            else:  # the same on every process (summed already)
                whole += g.double().pow(2).sum().cpu()
        dist.all_reduce(sharded)
        norm = math.sqrt(float(sharded + whole))
        coefficient = min(1.0, max_norm / (norm + 1e-6))
        if coefficient < 1.0:
            for g in grads:
                g.mul_(coefficient)
        return norm


def shard(model, mesh=None) -> None:
    """FSDP over the processes, in place: each decoder layer its own unit, the rest (embeddings, final norm,
    output layer) the root's; sharded gradients are summed over the processes, not averaged. Each process keeps
    its shards on the mesh's device (a model loaded on the CPU moves there shard by shard)."""
    from torch.distributed.fsdp import FSDPModule, fully_shard

    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    layer_types = set(getattr(inner, "_no_split_modules", None) or [])
    if not layer_types:
        raise ValueError(
            f"{type(inner).__name__} names no decoder layer class (_no_split_modules): FSDP cannot wrap it"
        )
    for module in list(model.modules()):
        if type(module).__name__ in layer_types:
            fully_shard(module, mesh=mesh)
    fully_shard(model, mesh=mesh)
    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.set_gradient_divide_factor(1.0)
            module.set_force_sum_reduction_for_comms(True)  # a plain sum, which every backend has (gloo included)


def full_state_dict(model) -> dict:
    """The whole model's weights on the CPU, gathered from every process (all must call it)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
