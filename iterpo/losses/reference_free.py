"""Reference-free pairwise losses: no reference model is loaded or scored for these."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from iterpo.losses.base import PairwiseLoss, PreferenceBatch, check_positive, check_range, pair_output, register_loss, require


def _mean_logps(batch: PreferenceBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """Length-normalised log-probs lp(y) / |y| of chosen and rejected, each (B,)."""
    lw = require(batch.chosen_lengths, "response lengths").clamp(min=1)
    ll = require(batch.rejected_lengths, "response lengths").clamp(min=1)
    return batch.chosen_logps / lw, batch.rejected_logps / ll


@register_loss("simpo")
@dataclass
class SimPO(PairwiseLoss):
    """Simple Preference Optimization (Meng et al. 2024, the SimPO objective).

    loss = -log sigmoid(beta * lp(y_w)/|y_w| - beta * lp(y_l)/|y_l| - gamma).
    The implicit reward is beta times the mean token log-prob; gamma is the
    target reward margin. Defaults follow the paper's range (beta 2, gamma/beta 1/2).
    """

    beta: float = 2.0
    gamma: float = 1.0

    needs = frozenset()

    def __post_init__(self):
        check_positive("beta", self.beta)
        check_range("gamma", self.gamma, 0.0, float("inf"))

    def __call__(self, batch: PreferenceBatch):
        mw, ml = _mean_logps(batch)
        rw, rl = self.beta * mw, self.beta * ml
        losses = F.softplus(-(rw - rl - self.gamma))
        return pair_output(losses, rw, rl)


@register_loss("orpo")
@dataclass
class ORPO(PairwiseLoss):
    """Odds Ratio Preference Optimization (Hong et al. 2024, L_SFT + lambda * L_OR).

    loss = NLL(y_w) / |y_w| + weight * -log sigmoid(log odds(y_w) - log odds(y_l)),
    odds(y) = P / (1 - P) with P = exp(lp(y) / |y|), the per-token geometric
    mean probability. The NLL is averaged over the chosen response's tokens
    per pair (TRL averages over all chosen tokens of a batch instead).
    The reported rewards are weight * lp(y)/|y|, as TRL logs them.
    """

    weight: float = 0.1

    needs = frozenset()

    def __post_init__(self):
        check_positive("weight", self.weight)

    def __call__(self, batch: PreferenceBatch):
        mw, ml = _mean_logps(batch)
        # log(P / (1 - P)) = m - log(1 - exp(m)); -expm1(m) = 1 - exp(m) stays accurate for m near 0
        log_odds = (mw - torch.log(-torch.expm1(mw))) - (ml - torch.log(-torch.expm1(ml)))
        odds_term = F.softplus(-log_odds)
        losses = -mw + self.weight * odds_term
        return pair_output(losses, self.weight * mw, self.weight * ml,
                           nll_chosen=(-mw).detach().mean(), log_odds_ratio=log_odds.detach().mean())
