"""Self-play losses: regress log-ratios onto win rates against the current policy.

These target a Nash equilibrium of the preference game rather than a
Bradley-Terry reward. pi_t is the policy the round started from; its log-probs
arrive as ``prev_*`` (equal to the reference's when reference.policy is
'previous').
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from iterpo.losses.base import (
    PairwiseLoss,
    PreferenceBatch,
    check_positive,
    check_range,
    log_ratios,
    pair_output,
    register_loss,
    require,
)


def _ratios_to_previous(batch: PreferenceBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """(lp(y_w) - log pi_t(y_w), same for y_l), each (B,)."""
    pw = require(batch.prev_chosen_logps, "log-probs under the previous policy")
    pl = require(batch.prev_rejected_logps, "log-probs under the previous policy")
    return batch.chosen_logps - pw, batch.rejected_logps - pl


@register_loss("sppo")
@dataclass
class SPPO(PairwiseLoss):
    """Self-Play Preference Optimization (Wu et al. 2024, Algorithm 1, eq. 4.7; uclaml/SPPO code).

    loss = 1/2 [(l_t(y_w) - eta (P_w - 1/2))^2 + (l_t(y_l) - eta (P_l - 1/2))^2]
    with l_t the log-ratio against pi_t and P_y the estimated win rate of y
    against pi_t (from the judge's scores among the K samples of the prompt).
    The minimiser approximates pi_{t+1} ∝ pi_t exp(eta P(y beats pi_t)).
    eta = 1/beta with the paper's beta = 0.001.
    """

    eta: float = 1000.0

    needs = frozenset({"previous", "win_rate"})

    def __post_init__(self):
        check_positive("eta", self.eta)

    def __call__(self, batch: PreferenceBatch):
        lw, ll = _ratios_to_previous(batch)
        pw = require(batch.chosen_win_rate, "win-rate estimates")
        pl = require(batch.rejected_win_rate, "win-rate estimates")
        losses = 0.5 * ((lw - self.eta * (pw - 0.5)) ** 2 + (ll - self.eta * (pl - 0.5)) ** 2)
        return pair_output(losses, lw / self.eta, ll / self.eta)


@register_loss("gpo")
@dataclass
class GPO(PairwiseLoss):
    """General Preference Optimization (Zhang et al. 2024, "General Preference Modeling with Preference
    Representations for Aligning Language Models", sec. 5): SPPO's regression with a general preference
    model's score of each response against the sampling policy in place of its win rate minus 1/2:

        loss = 1/2 [(l_t(y_w) - eta s_w)^2 + (l_t(y_l) - eta s_l)^2]

    with l_t the log-ratio against pi_t and s_y = mean over the K samples y' of s(y > y') - s(y' > y), the
    skew-symmetric score the ``general_preference`` judge reports as each response's score (zero on average, as
    P - 1/2 is). The minimiser approximates pi_{t+1} ∝ pi_t exp(eta s(y > pi_t))."""

    eta: float = 1000.0

    needs = frozenset({"previous", "scores"})

    def __post_init__(self):
        check_positive("eta", self.eta)

    def __call__(self, batch: PreferenceBatch):
        lw, ll = _ratios_to_previous(batch)
        sw = require(batch.chosen_score, "preference scores")
        sl = require(batch.rejected_score, "preference scores")
        losses = 0.5 * ((lw - self.eta * sw) ** 2 + (ll - self.eta * sl) ** 2)
        return pair_output(losses, lw / self.eta, ll / self.eta)


@register_loss("sppo_hard")
@dataclass
class SPPOHard(PairwiseLoss):
    """SPPO with hard labels (Wu et al. 2024, eq. 4.7 with P = 1 for the winner and 0 for the loser;
    TRL's ``sppo_hard``).

    loss = (l(y_w) - 1/(2 beta))^2 + (l(y_l) + 1/(2 beta))^2, log-ratios against the reference.
    """

    beta: float = 0.1

    def __post_init__(self):
        check_positive("beta", self.beta)

    def __call__(self, batch: PreferenceBatch):
        lw, ll = log_ratios(batch)
        losses = (lw - 0.5 / self.beta) ** 2 + (ll + 0.5 / self.beta) ** 2
        return pair_output(losses, self.beta * lw, self.beta * ll)


@register_loss("inpo")
@dataclass
class INPO(PairwiseLoss):
    """Iterative Nash Policy Optimization (Zhang et al. 2024, the loss of their Algorithm 1).

    Online mirror descent toward pi_{t+1} ∝ pi_t^(1 - eta tau) pi_ref^(eta tau) exp(eta P(y beats pi_t)):
        h = [lp(y_w) - lp(y_l)] - eta tau [lr(y_w) - lr(y_l)] - (1 - eta tau) [lt(y_w) - lt(y_l)]
        loss = (h - eta / 2)^2
    with lr under the reference and lt under pi_t. The public run script's
    ``eta = 0.005`` is 1/eta here and its ``ratio = 1/3`` is eta * tau, which
    the defaults reproduce (eta = 200, tau = 1/600).
    """

    reference_cancels = True  # only differences within a prompt

    eta: float = 200.0
    tau: float = 1.0 / 600.0

    needs = frozenset({"reference", "previous"})

    def __post_init__(self):
        check_positive("eta", self.eta)
        check_range("eta * tau", self.eta * self.tau, 0.0, 1.0, hi_open=False)

    def __call__(self, batch: PreferenceBatch):
        mix = self.eta * self.tau
        ref_w, ref_l = log_ratios(batch)  # lp - lr
        prev_w, prev_l = _ratios_to_previous(batch)  # lp - lt
        # h = mix * (lp - lr)_w-l + (1 - mix) * (lp - lt)_w-l: a convex mix of the two log-ratio margins
        h = mix * (ref_w - ref_l) + (1 - mix) * (prev_w - prev_l)
        losses = (h - self.eta / 2) ** 2
        return pair_output(losses, prev_w / self.eta, prev_l / self.eta)


@register_loss("online_ipo")
@dataclass
class OnlineIPO(PairwiseLoss):
    """Online IPO against an opponent policy (Calandriello et al. 2024; the loss EGPO (Zhou et al.
    2025) and Nash-MP (Tiapkin et al. 2025) take steps on).

    loss = (delta - (P_w - P_l) / beta)^2, delta the log-ratio margin against the
    reference and P_y the estimated probability that y beats the opponent (the
    policy that produced the round's samples). The tabular minimiser is the
    regularised best response log pi = log pi_ref + P pi_s / beta + c.
    """

    reference_cancels = True  # only differences within a prompt
    exact_weights = True  # over all_pairs with exact win rates: EGPO's loss with y, y' uniform

    beta: float = 0.1

    needs = frozenset({"reference", "win_rate"})

    def __post_init__(self):
        check_positive("beta", self.beta)

    def __call__(self, batch: PreferenceBatch):
        lw, ll = log_ratios(batch)
        pw = require(batch.chosen_win_rate, "win-rate estimates")
        pl = require(batch.rejected_win_rate, "win-rate estimates")
        losses = (lw - ll - (pw - pl) / self.beta) ** 2
        return pair_output(losses, self.beta * lw, self.beta * ll)


@register_loss("nash_mp")
@dataclass
class NashMP(PairwiseLoss):
    """Nash Mirror Prox's proximal step (Tiapkin et al. 2025, "Accelerating Nash Learning from Human
    Feedback via Mirror Prox"), as a squared regression like online IPO.

    With a = 1/(1 + eta), the step's target is log pi = a log pi_t + (1 - a)(log pi_ref + P pi_s / beta) + c,
    pi_t the round's starting policy, pi_ref the fixed reference and P pi_s the win rate against the opponent
    (the policy that sampled the pair: pi_t in the half step, the half-step policy in the full step). On pairs:
        h = [lp(y_w) - lp(y_l)] - a [lt(y_w) - lt(y_l)] - (1 - a) [lr(y_w) - lr(y_l)]
        loss = (h - (1 - a)(P_w - P_l) / beta)^2
    whose tabular minimiser is the target. eta is the paper's proximal step, beta its KL regularisation.
    """

    reference_cancels = True  # only differences within a prompt
    exact_weights = True  # over all_pairs with exact win rates, as online IPO

    eta: float = 1.0
    beta: float = 0.1

    needs = frozenset({"reference", "previous", "win_rate"})

    def __post_init__(self):
        check_positive("eta", self.eta)
        check_positive("beta", self.beta)

    def __call__(self, batch: PreferenceBatch):
        a = 1.0 / (1.0 + self.eta)
        ref_w, ref_l = log_ratios(batch)  # lp - lr
        prev_w, prev_l = _ratios_to_previous(batch)  # lp - lt
        h = a * (prev_w - prev_l) + (1 - a) * (ref_w - ref_l)  # = margin - a lt-margin - (1 - a) lr-margin
        pw = require(batch.chosen_win_rate, "win-rate estimates")
        pl = require(batch.rejected_win_rate, "win-rate estimates")
        losses = (h - (1 - a) * (pw - pl) / self.beta) ** 2
        return pair_output(losses, prev_w, prev_l)
