"""iterpo's own PyTorch training loop for pairwise preference losses.

AdamW, linear warm-up, gradient accumulation and clipping. Chosen and rejected
responses of a micro-batch go through the model in one forward pass; the
reference log-probs were computed once for the round and come in with the pairs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from iterpo.losses import PairwiseLoss, PreferenceBatch
from iterpo.models.logprobs import response_logps


@dataclass
class TrainPair:
    prompt_ids: list[int]  # (P,) prompt tokens
    chosen_ids: list[int]  # (Tc,) chosen response tokens
    rejected_ids: list[int]  # (Tr,) rejected response tokens
    ref_chosen_logp: Optional[float] = None  # reference log-prob of the chosen response
    ref_rejected_logp: Optional[float] = None


def _batch_inputs(model, pairs: list[TrainPair], pad_id: int) -> PreferenceBatch:
    B = len(pairs)
    logps = response_logps(
        model,
        [p.prompt_ids for p in pairs] * 2,
        [p.chosen_ids for p in pairs] + [p.rejected_ids for p in pairs],
        pad_id,
    )  # (2B,): chosen first, then rejected
    ref = None
    if pairs[0].ref_chosen_logp is not None:
        ref = (
            torch.tensor([p.ref_chosen_logp for p in pairs], dtype=torch.float32),
            torch.tensor([p.ref_rejected_logp for p in pairs], dtype=torch.float32),
        )
    return PreferenceBatch(
        chosen_logps=logps[:B],
        rejected_logps=logps[B:],
        ref_chosen_logps=ref[0] if ref else None,
        ref_rejected_logps=ref[1] if ref else None,
        chosen_lengths=torch.tensor([len(p.chosen_ids) for p in pairs]),
        rejected_lengths=torch.tensor([len(p.rejected_ids) for p in pairs]),
    )


def train_on_pairs(
    model,
    pairs: list[TrainPair],
    loss_fn: PairwiseLoss,
    config,  # TrainSection
    seed: int,
    pad_id: int = 0,
    progress: Optional[Callable[[int], None]] = None,
) -> list[dict]:
    """Train model in place; return one log record per optimizer step."""
    if not pairs:
        return []
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    micro = config.batch_size
    steps_per_epoch = math.ceil(math.ceil(len(pairs) / micro) / config.grad_accum)
    warmup = config.warmup_steps
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / (warmup + 1)) if warmup else 1.0)
    generator = torch.Generator().manual_seed(seed)
    log: list[dict] = []
    step = 0
    model.train()
    try:
        for epoch in range(config.epochs):
            order = torch.randperm(len(pairs), generator=generator).tolist()
            batches = [order[i : i + micro] for i in range(0, len(order), micro)]
            for s in range(steps_per_epoch):
                group = batches[s * config.grad_accum : (s + 1) * config.grad_accum]
                n_pairs = sum(len(b) for b in group)
                metrics: dict[str, float] = {}
                for idx in group:
                    out = loss_fn(_batch_inputs(model, [pairs[i] for i in idx], pad_id))
                    (out.loss * len(idx) / n_pairs).backward()  # mean over the pairs of the step
                    for k, v in out.metrics().items():
                        metrics[k] = metrics.get(k, 0.0) + v * len(idx) / n_pairs
                grad_norm = None
                if config.max_grad_norm is not None:
                    grad_norm = float(torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm))
                lr = optimizer.param_groups[0]["lr"]
                optimizer.step()
                schedule.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                log.append({"step": step, "epoch": epoch, "pairs": n_pairs, "lr": lr,
                            "grad_norm": grad_norm, **metrics})
                if progress is not None:
                    progress(n_pairs)
    finally:
        model.eval()
    return log
