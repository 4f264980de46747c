"""Listwise losses on groups of responses to one prompt, ranked by the judge (best first)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from iterpo.losses.base import Loss, LossOutput, RankedBatch, check_positive, check_range, register_loss, require


def _best_and_worst(values: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """values at the first and at the last real position of each row, (B,) each."""
    last = mask.long().sum(dim=1) - 1  # (B,)
    return values[:, 0], values.gather(1, last.unsqueeze(1)).squeeze(1)


@register_loss("pro")
@dataclass
class PRO(Loss):
    """Preference Ranking Optimization (Song et al. 2023, "Preference Ranking Optimization for Human
    Alignment", arXiv 2306.17492).

    With s_i = lp(y_i)/|y_i| (no reference model) and scores r_1 >= ... >= r_n:
        L_rank = sum_k -log[ exp(s_k T_kk) / (exp(s_k T_kk) + sum_{i>k} exp(s_i T_ki)) ],
        T_ki = r_k - r_i,  T_kk = max_{i>k} T_ki,
    plus sft_weight * (n - 1)^2 * (-lp(y_1)), the summed NLL of the best response.
    Verified against the authors' code (AlibabaResearch/DAMO-ConvAI,
    PRO/train/utils/process_manager.py, ``ProcessManager.compute_loss``): the
    same length-normalised scores over response tokens, raw reward-model
    scores as temperatures, each rank term averaged over the batch and summed
    over k, and sft_weight * (n - 1)^2 times the mean summed NLL of the
    response at ``sft_index`` (0, the best, in its data scripts);
    sft_weight 0.05 as in its training scripts. Differences: the reference
    code adds 1e-10 inside the log, this uses the exact log-sum-exp; groups
    there all have the same n, here n is each group's own size.
    """

    sft_weight: float = 0.05

    data_shape = "ranked"
    needs = frozenset()

    def __post_init__(self):
        check_range("sft_weight", self.sft_weight, 0.0, float("inf"))

    def __call__(self, batch: RankedBatch) -> LossOutput:
        s = batch.logps / batch.lengths.clamp(min=1)  # (B, n)
        r, mask = batch.scores, batch.mask.bool()
        B, n = s.shape
        rank = torch.zeros(B, dtype=s.dtype, device=s.device)
        for k in range(n - 1):
            later = mask & (torch.arange(n, device=s.device) > k)  # (B, n) candidates ranked below y_k
            active = mask[:, k] & later.any(dim=1)  # (B,) rows where y_k exists and has a successor
            t = (r[:, k : k + 1] - r).masked_fill(~later, 0.0)  # (B, n) T_ki
            t_kk = t.masked_fill(~later, float("-inf")).max(dim=1).values.masked_fill(~active, 0.0)  # (B,)
            logits = (s * t).masked_fill(~later, float("-inf"))  # (B, n)
            pos = s[:, k] * t_kk  # (B,)
            lse = torch.logsumexp(torch.cat([pos.unsqueeze(1), logits], dim=1), dim=1)
            rank = rank + torch.where(active, lse - pos, torch.zeros_like(pos))
        n_real = mask.sum(dim=1).to(s.dtype)
        sft = self.sft_weight * (n_real - 1) ** 2 * (-batch.logps[:, 0])
        losses = rank + sft
        best, worst = _best_and_worst(s.detach(), mask)
        return LossOutput(
            loss=losses.mean(),
            losses=losses,
            chosen_rewards=best,
            rejected_rewards=worst,
            extra={"rank_loss": float(rank.detach().mean()), "sft_loss": float(sft.detach().mean())},
        )


@register_loss("tpo")
@dataclass
class TPO(Loss):
    """Tree Preference Optimization's ranking loss (Liao et al. 2024; MrBlankness/TPO ``lambda_rank_loss``).

    With r_i = mean over tokens of the log-ratio l_t(y_i) (the official code's
    per-response reward when a response is one step) and judge scores s_i:
        loss = mean over pairs with s_i != s_j of -log sigmoid(beta (r_i - r_j) sign(s_i - s_j)).
    Deviations, both deliberate: the official code wraps the rank loss in
    -log sigmoid(beta * L_rank), which decreases as L_rank grows (apparently a
    sign error); here beta scales the rewards inside the plain rank loss.
    Tied pairs, which add a constant log 2 in the official code, are left out.
    Step-wise tree weighting needs step-segmented responses and is not done.
    """

    beta: float = 0.5

    data_shape = "ranked"
    needs = frozenset({"reference"})

    def __post_init__(self):
        check_positive("beta", self.beta)

    def __call__(self, batch: RankedBatch) -> LossOutput:
        ratio = batch.logps - require(batch.ref_logps, "reference log-probs")  # (B, n)
        rew = self.beta * ratio / batch.lengths.clamp(min=1)  # (B, n)
        mask = batch.mask.bool()
        sign = torch.sign(batch.scores.unsqueeze(2) - batch.scores.unsqueeze(1))  # (B, n, n) sign(s_i - s_j)
        valid = mask.unsqueeze(2) & mask.unsqueeze(1) & (sign != 0)  # (B, n, n)
        pair = F.softplus(-(rew.unsqueeze(2) - rew.unsqueeze(1)) * sign)  # -log sigmoid(...)
        count = valid.sum(dim=(1, 2)).clamp(min=1)
        losses = (pair * valid).sum(dim=(1, 2)) / count
        best, worst = _best_and_worst(rew.detach(), mask)
        return LossOutput(loss=losses.mean(), losses=losses, chosen_rewards=best, rejected_rewards=worst)
