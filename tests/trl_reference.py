"""Run TRL 1.16's own loss code on log-probs we choose (test-only dependency).

TRL computes its losses inside ``DPOTrainer._compute_loss`` / ``KTOTrainer._compute_loss``
from a model's per-token log-probs. We call those methods on a bare trainer
object with the attributes they read, and a stand-in model that returns the
per-token log-probs we pick, so TRL's loss arithmetic runs unchanged on the
same numbers our losses see.
"""

from __future__ import annotations

from collections import defaultdict
from types import SimpleNamespace

import torch


class _Accelerator:
    device = torch.device("cpu")

    def gather(self, x):
        return x

    gather_for_metrics = gather

    def unwrap_model(self, m):
        return m


class _FixedLogprobModel(torch.nn.Module):
    """Returns the given per-token log-probs (N, T-1) whatever the input."""

    def __init__(self, per_token):
        super().__init__()
        self.per_token = per_token

    def forward(self, input_ids=None, attention_mask=None, labels=None, fused_lm_head=True, **kw):
        lp = self.per_token
        zeros = torch.zeros_like(lp)
        return SimpleNamespace(
            log_probs=lp, entropy=zeros, mean_logits=zeros, is_top1=torch.zeros_like(lp, dtype=torch.bool)
        )


def _layout(logps: list[float], lengths: list[int]):
    """Sequences of one prompt token + a response of the given length whose token log-probs sum to logps.

    Returns input_ids (N, T), completion_mask (N, T) and per-token log-probs (N, T-1),
    zero outside the response (what TRL's fused head gives for label -100).
    """
    T = 1 + max(lengths)
    n = len(logps)
    ids = torch.ones(n, T, dtype=torch.long)
    completion = torch.zeros(n, T, dtype=torch.long)
    per_token = torch.zeros(n, T - 1, dtype=torch.float64)
    for i, (lp, L) in enumerate(zip(logps, lengths)):
        completion[i, 1 : 1 + L] = 1
        per_token[i, :L] = lp / L
    return ids, completion, per_token


def trl_dpo_loss(
    loss_type: str,
    beta: float,
    chosen,
    rejected,
    ref_chosen,
    ref_rejected,
    chosen_len,
    rejected_len,
    label_smoothing: float = 0.0,
) -> float:
    """TRL 1.16 DPOTrainer loss for ONE pair (its loss is a batch mean, so one pair gives the per-pair value)."""
    from trl.trainer.dpo_trainer import DPOTrainer

    ids, completion, per_token = _layout([chosen, rejected], [chosen_len, rejected_len])
    t = object.__new__(DPOTrainer)
    model = _FixedLogprobModel(per_token)
    t.__dict__.update(
        model=model,
        accelerator=_Accelerator(),
        aux_loss_enabled=False,
        ld_alpha=None,
        precompute_ref_logps=True,
        f_divergence_type="reverse_kl",
        loss_types=[loss_type],
        loss_weights=[1.0],
        beta=beta,
        label_smoothing=label_smoothing,
        use_weighting=False,
        _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
        _total_train_tokens=0,
        _tp_size=1,
    )
    inputs = {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "completion_mask": completion,
        "ref_chosen_logps": torch.tensor([ref_chosen], dtype=torch.float64),
        "ref_rejected_logps": torch.tensor([ref_rejected], dtype=torch.float64),
    }
    return float(DPOTrainer._compute_loss(t, model, inputs, return_outputs=False))


def trl_kto_losses(
    beta: float, logps, ref_logps, kl_logps, ref_kl_logps, labels, desirable_weight=1.0, undesirable_weight=1.0
) -> float:
    """TRL 1.16 KTOTrainer loss (the batch mean) for a batch of labelled responses."""
    from trl.trainer.kto_trainer import KTOTrainer

    n = len(logps)
    ids, completion, per_token = _layout(list(logps), [1] * n)
    _, kl_completion, kl_per_token = _layout(list(kl_logps), [1] * n)

    class _Model(torch.nn.Module):
        def forward(self, input_ids=None, attention_mask=None, labels=None, fused_lm_head=True, **kw):
            lp = kl_per_token if input_ids is kl_ids else per_token
            zeros = torch.zeros_like(lp)
            return SimpleNamespace(log_probs=lp, entropy=zeros, mean_logits=zeros)

    kl_ids = ids.clone()
    model = _Model()
    t = object.__new__(KTOTrainer)
    t.__dict__.update(
        model=model,
        accelerator=_Accelerator(),
        aux_loss_enabled=False,
        calculate_KL=True,
        precompute_ref_logps=True,
        loss_type="kto",
        beta=beta,
        desirable_weight=desirable_weight,
        undesirable_weight=undesirable_weight,
        _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
        _total_train_tokens=0,
        _tp_size=1,
    )
    inputs = {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "completion_mask": completion,
        "KL_input_ids": kl_ids,
        "KL_attention_mask": torch.ones_like(ids),
        "KL_completion_mask": kl_completion,
        "label": torch.tensor(labels, dtype=torch.bool),
        "ref_logps": torch.tensor(ref_logps, dtype=torch.float64),
        "ref_KL_logps": torch.tensor(ref_kl_logps, dtype=torch.float64),
    }
    return float(KTOTrainer._compute_loss(t, model, inputs, return_outputs=False))
