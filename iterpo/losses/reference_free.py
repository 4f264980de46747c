"""Reference-free pairwise losses: no reference model is loaded or scored for these."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from iterpo.losses.base import (
    PairwiseLoss,
    PreferenceBatch,
    check_positive,
    check_range,
    pair_output,
    register_loss,
    require,
)


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
    target reward margin. Verified against the authors' code
    (princeton-nlp/SimPO, scripts/simpo_trainer.py, ``SimPOTrainer.simpo_loss``
    with its default ``loss_type="sigmoid"``, label_smoothing 0, sft_weight 0):
    -logsigmoid(beta * (mean lp(y_w) - mean lp(y_l) - gamma_beta_ratio)), the
    means over response tokens, rewards beta * mean lp(y). Same loss with
    gamma = beta * gamma_beta_ratio: this port takes the margin itself.
    Defaults beta 2, gamma 1 are that repository's recommended starting
    gamma_beta_ratio 0.5 (README) at beta 2 (its Llama-3-8B-Base config).
    Not ported: its optional hinge, label smoothing and SFT terms.
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
    mean probability over the response tokens. Verified against the authors'
    code (xfactlab/orpo, src/orpo_trainer.py, ``ORPOTrainer.compute_loss``):
    the same log odds (with log1p(-exp(.))), -log sigmoid of their difference
    times alpha = weight, added to the chosen NLL; weight 0.1 is the alpha of
    its Mistral-ORPO-beta script (its argparse default is 1.0). Deliberate
    deviations in the NLL term only: it is the mean over the chosen
    response's tokens per pair, where the reference takes the model's
    cross-entropy averaged over all chosen tokens of the batch and, unless
    run with --disable_prompt_loss, over the prompt tokens too (TRL's ORPO
    also includes the prompt); the loop scores response tokens only, and a
    per-pair loss lets micro-batches split. The reported rewards are
    weight * lp(y)/|y|, as TRL logs them.
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
        return pair_output(
            losses,
            self.weight * mw,
            self.weight * ml,
            nll_chosen=(-mw).detach().mean(),
            log_odds_ratio=log_odds.detach().mean(),
        )
