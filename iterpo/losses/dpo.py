"""The DPO family: pairwise losses on the log-ratios against a reference.

Notation: l(y) = log pi(y|x) - log pi_ref(y|x) summed over the
response tokens, and delta = l(y_w) - l(y_l). The implicit reward of a response
is beta * l(y) unless a docstring says otherwise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F

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


@register_loss("dpo")
@dataclass
class DPO(PairwiseLoss):
    """Direct Preference Optimization (Rafailov et al. 2023, eq. 7).

    loss = -log sigmoid(beta * delta). Same definition as TRL's ``sigmoid``.
    """

    reference_cancels = True  # only differences within a prompt
    exact_weights = True  # over all_pairs weighted (pi(y_w) pi(y_l) P(y_w beats y_l)): the on-policy expectation

    beta: float = 0.1

    def __post_init__(self):
        check_positive("beta", self.beta)

    def __call__(self, batch: PreferenceBatch):
        chosen, rejected = log_ratios(batch)  # (B,), (B,)
        losses = F.softplus(-self.beta * (chosen - rejected))  # = -log sigmoid(beta*delta)
        return pair_output(losses, self.beta * chosen, self.beta * rejected)


@register_loss("margin_dpo")
@dataclass
class MarginDPO(PairwiseLoss):
    """DPO with a per-pair target margin: the adaptive margin of "Secrets of RLHF in Large Language Models
    Part II: Reward Modeling" (Wang et al. 2024, its reward-model loss -log sigmoid(r_w - r_l - m)) put on the
    implicit reward, as ODPO (Amini et al. 2024, "Direct Preference Optimization with an Offset") does with its
    offset.

    loss = -log sigmoid(beta*delta - m), m = the pair's margin (Preference.margin; the ``strength`` stage's
    ``margin`` option sets it from the ensemble's mean preference strength). Pairs the ensemble finds clear
    must be separated by more; m = 0 everywhere is DPO.
    """

    reference_cancels = True  # only differences within a prompt
    needs = frozenset({"reference", "margin"})

    beta: float = 0.1

    def __post_init__(self):
        check_positive("beta", self.beta)

    def __call__(self, batch: PreferenceBatch):
        chosen, rejected = log_ratios(batch)  # (B,), (B,)
        m = require(batch.margin, "target margins")  # (B,)
        losses = F.softplus(m - self.beta * (chosen - rejected))  # = -log sigmoid(beta*delta - m)
        return pair_output(losses, self.beta * chosen, self.beta * rejected, target_margin=m.mean())


@register_loss("cdpo")
@dataclass
class ConservativeDPO(PairwiseLoss):
    """Conservative DPO (Mitchell 2023, "A note on DPO with noisy preferences"): DPO with label smoothing.

    loss = (1 - eps) * -log sigmoid(beta*delta) + eps * -log sigmoid(-beta*delta).
    The gradient vanishes at beta*delta = log((1 - eps) / eps), so margins stay
    bounded instead of growing without limit.
    """

    reference_cancels = True  # only differences within a prompt

    beta: float = 0.1
    label_smoothing: float = 0.1

    def __post_init__(self):
        check_positive("beta", self.beta)
        check_range("label_smoothing", self.label_smoothing, 0.0, 0.5)

    def __call__(self, batch: PreferenceBatch):
        chosen, rejected = log_ratios(batch)
        z = self.beta * (chosen - rejected)
        eps = self.label_smoothing
        losses = (1 - eps) * F.softplus(-z) + eps * F.softplus(z)
        return pair_output(losses, self.beta * chosen, self.beta * rejected)


@register_loss("mcts_dpo")
@dataclass
class MCTSDPO(PairwiseLoss):
    """MCTS-DPO's step-level loss (Xie et al. 2024, "Monte Carlo Tree Search Boosts Reasoning via Iterative
    Preference Learning"): conservative DPO whose label smoothing is each pair's own,
    eps = 1 - soft_label clipped to [0, 0.5]. With ``pairing.strategy: divergence`` and ``visit_smoothing``, the
    soft label carries eps = min(1 - 1 / (1 + N_w / max(1, N_b)), 0.5) from the tree's visit counts, and the
    log-ratios cover only the steps after the divergence point.

    loss = (1 - eps) * -log sigmoid(beta*delta) + eps * -log sigmoid(-beta*delta).
    """

    reference_cancels = True  # only differences within a prompt
    needs = frozenset({"reference", "soft_label"})

    beta: float = 0.1

    def __post_init__(self):
        check_positive("beta", self.beta)

    def __call__(self, batch: PreferenceBatch):
        chosen, rejected = log_ratios(batch)
        z = self.beta * (chosen - rejected)  # (B,)
        eps = (1 - require(batch.soft_label, "soft labels")).clamp(0.0, 0.5)  # (B,)
        losses = (1 - eps) * F.softplus(-z) + eps * F.softplus(z)
        return pair_output(losses, self.beta * chosen, self.beta * rejected)


@register_loss("rdpo")
@dataclass
class RobustDPO(PairwiseLoss):
    """Robust DPO (Chowdhury et al. 2024, "Provably Robust DPO", arXiv 2403.00409; their unbiased loss,
    equation number not verified).

    loss = [(1 - eps) * -log sigmoid(beta*delta) - eps * -log sigmoid(-beta*delta)] / (1 - 2 eps)
    with eps = flip_rate, the probability that a label was flipped. Unbiased:
    (1 - eps) L(z) + eps L(-z) = -log sigmoid(z). A single pair's loss can be
    negative (it is unbounded below), which is expected.
    Verified against an author's implementation: no repository of the paper
    was found, and Anush Kini (its second author) added the loss to TRL as
    ``loss_type="robust"`` (huggingface/trl PR #1653, ``DPOTrainer.dpo_loss`` in
    trl/trainer/dpo_trainer.py): the same expression with label_smoothing =
    flip_rate, on summed log-ratios, rewards beta * l(y); TRL 1.16 still has it.
    """

    reference_cancels = True  # only differences within a prompt

    beta: float = 0.1
    flip_rate: float = 0.1

    def __post_init__(self):
        check_positive("beta", self.beta)
        check_range("flip_rate", self.flip_rate, 0.0, 0.5)

    def __call__(self, batch: PreferenceBatch):
        chosen, rejected = log_ratios(batch)
        z = self.beta * (chosen - rejected)
        eps = self.flip_rate
        losses = ((1 - eps) * F.softplus(-z) - eps * F.softplus(z)) / (1 - 2 * eps)
        return pair_output(losses, self.beta * chosen, self.beta * rejected)


@register_loss("ipo")
@dataclass
class IPO(PairwiseLoss):
    """Identity Preference Optimization (Azar et al. 2024, eq. 17).

    loss = (delta - 1 / (2 beta))^2, beta playing the role of the paper's tau.
    ``length_normalize`` replaces each l(y) by l(y) / |y| (what TRL's ``ipo``
    does, as its authors confirmed to TRL); off by default, as in the paper's
    equation.
    """

    @property
    def reference_cancels(self) -> bool:  # type: ignore[override]
        return not self.length_normalize  # each response's log-ratio over its own length: no constant cancels

    beta: float = 0.1
    length_normalize: bool = False

    def __post_init__(self):
        check_positive("beta", self.beta)

    def __call__(self, batch: PreferenceBatch):
        chosen, rejected = log_ratios(batch)
        if self.length_normalize:
            chosen = chosen / require(batch.chosen_lengths, "response lengths").clamp(min=1)
            rejected = rejected / require(batch.rejected_lengths, "response lengths").clamp(min=1)
        losses = (chosen - rejected - 1 / (2 * self.beta)) ** 2
        return pair_output(losses, self.beta * chosen, self.beta * rejected)


@register_loss("hinge")
@dataclass
class Hinge(PairwiseLoss):
    """SLiC hinge loss on the DPO margin (Zhao et al. 2023, SLiC-HF, calibration loss; as TRL's ``hinge``).

    loss = max(0, 1 - beta * delta).
    """

    reference_cancels = True  # only differences within a prompt

    beta: float = 0.1

    def __post_init__(self):
        check_positive("beta", self.beta)

    def __call__(self, batch: PreferenceBatch):
        chosen, rejected = log_ratios(batch)
        losses = torch.relu(1 - self.beta * (chosen - rejected))
        return pair_output(losses, self.beta * chosen, self.beta * rejected)


@register_loss("rpo")
@dataclass
class RPO(PairwiseLoss):
    """Regularized Preference Optimization (Liu et al. 2024, "Provably mitigating overoptimization
    in RLHF: your SFT loss is implicitly an adversarial regularizer", the DPO+SFT objective).

    loss = -log sigmoid(beta*delta) + sft_weight * (-log pi(y_w|x)), the NLL summed
    over the chosen response's tokens. The reference code writes the weight as
    eta * beta (eta = 0.005 in the paper's runs); sft_weight is that product.
    Not TRL's ``rpo_alpha``, which follows a different paper (Pang et al.).
    """

    reference_cancels = True  # only differences within a prompt

    beta: float = 0.1
    sft_weight: float = 5e-4

    def __post_init__(self):
        check_positive("beta", self.beta)
        check_range("sft_weight", self.sft_weight, 0.0, math.inf)

    def __call__(self, batch: PreferenceBatch):
        chosen, rejected = log_ratios(batch)
        nll = -batch.chosen_logps
        losses = F.softplus(-self.beta * (chosen - rejected)) + self.sft_weight * nll
        return pair_output(losses, self.beta * chosen, self.beta * rejected, nll_chosen=nll.detach().mean())


@register_loss("dpo_nll")
@dataclass
class DPONLL(PairwiseLoss):
    """DPO+NLL, the loss of Iterative Reasoning Preference Optimization (Pang et al. 2024, "Iterative Reasoning
    Preference Optimization", the DPO+NLL objective; TRL's ``rpo_alpha``, and loss_type ["sigmoid", "sft"]).

    loss = -log sigmoid(beta*delta) + nll_weight * (-log pi(y_w|x)) / |y_w|: DPO plus the chosen response's
    negative log-likelihood per token. The paper found the NLL term crucial on reasoning tasks, where DPO alone
    lowers the chosen responses' likelihood along with the rejected ones'; it weighs the two terms equally
    (nll_weight 1, beta 0.1). The NLL here is normalised by the chosen response's length, as TRL implements it.
    Unlike ``rpo`` (Liu et al.), whose NLL is summed over tokens with a small weight.
    """

    reference_cancels = True  # only differences within a prompt

    beta: float = 0.1
    nll_weight: float = 1.0

    def __post_init__(self):
        check_positive("beta", self.beta)
        check_range("nll_weight", self.nll_weight, 0.0, math.inf)

    def __call__(self, batch: PreferenceBatch):
        chosen, rejected = log_ratios(batch)
        assert batch.chosen_lengths is not None  # always filled by the loop
        nll = -batch.chosen_logps / batch.chosen_lengths.clamp(min=1).to(batch.chosen_logps.dtype)  # (B,)
        losses = F.softplus(-self.beta * (chosen - rejected)) + self.nll_weight * nll
        return pair_output(losses, self.beta * chosen, self.beta * rejected, nll_chosen=nll.detach().mean())


@register_loss("nca")
@dataclass
class NCA(PairwiseLoss):
    """Noise Contrastive Alignment, pairwise form (Chen et al. 2024, NCA eq. for K=2; TRL's ``nca_pair``).

    With r = beta * l(y): loss = -log sigmoid(r_w) - 0.5 log sigmoid(-r_w) - 0.5 log sigmoid(-r_l).
    Unlike DPO it acts on each response's reward, not only on the margin.
    """

    beta: float = 0.1

    def __post_init__(self):
        check_positive("beta", self.beta)

    def __call__(self, batch: PreferenceBatch):
        chosen, rejected = log_ratios(batch)
        rw, rl = self.beta * chosen, self.beta * rejected
        losses = F.softplus(-rw) + 0.5 * F.softplus(rw) + 0.5 * F.softplus(rl)
        return pair_output(losses, rw, rl)


@register_loss("exo")
@dataclass
class EXO(PairwiseLoss):
    """Efficient Exact Optimization, pairwise (Ji et al. 2024, eq. 16; TRL's ``exo_pair``).

    KL(q || p) between q = softmax(beta * [l_w, l_l]) and the smoothed label
    p = [1 - eps, eps]: loss = q_w (log q_w - log(1-eps)) + q_l (log q_l - log eps).
    """

    reference_cancels = True  # only differences within a prompt

    beta: float = 0.1
    epsilon: float = 1e-3

    def __post_init__(self):
        check_positive("beta", self.beta)
        check_range("epsilon", self.epsilon, 0.0, 0.5)
        check_positive("epsilon", self.epsilon)

    def __call__(self, batch: PreferenceBatch):
        chosen, rejected = log_ratios(batch)
        z = self.beta * (chosen - rejected)
        losses = torch.sigmoid(z) * (F.logsigmoid(z) - math.log1p(-self.epsilon)) + torch.sigmoid(-z) * (
            F.logsigmoid(-z) - math.log(self.epsilon)
        )
        return pair_output(losses, self.beta * chosen, self.beta * rejected)


@register_loss("bco")
@dataclass
class BCO(PairwiseLoss):
    """Binary Classifier Optimization, pairwise (Jung et al. 2024, arXiv 2404.04656, the BCO loss with its
    reward shift delta).

    With r = beta * l(y): loss = -log sigmoid(r_w - delta) - log sigmoid(-(r_l - delta)),
    delta = running mean, over the batches seen so far in the round, of each
    batch's mean reward mean(r_w, r_l): every call counts once, whatever its
    size. It is updated with the current batch before use and detached.
    Verified against the first author's implementation in TRL (huggingface/trl
    PR #1524, ``loss_type="bco_pair"`` in ``DPOTrainer.dpo_loss``, the same
    update in ``BCOTrainer.bco_loss``): it passes the batch's mean reward, one
    number, to ``RunningMoments.update`` (trl/trainer/utils.py), so each batch
    has weight 1 in the running mean. Port choice: the mean restarts each
    round (``start``), where TRL keeps it for the whole run.
    ``reward_shift: false`` sets delta = 0, which is exactly TRL 1.16's
    ``bco_pair`` (TRL has since dropped the shift).
    """

    per_example: ClassVar[bool] = False  # batch statistics: a micro-batch goes through in one pass

    beta: float = 0.1
    reward_shift: bool = True
    _mean: float = field(default=0.0, init=False, repr=False)
    _count: int = field(default=0, init=False, repr=False)

    def __post_init__(self):
        check_positive("beta", self.beta)

    def start(self, model=None, examples=None) -> None:
        self._mean, self._count = 0.0, 0

    def __call__(self, batch: PreferenceBatch):
        chosen, rejected = log_ratios(batch)
        rw, rl = self.beta * chosen, self.beta * rejected
        delta = 0.0
        if self.reward_shift:
            self._count += 1  # batches seen: each batch's mean reward has weight 1, as in the reference
            self._mean += (float(torch.cat([rw, rl]).detach().mean()) - self._mean) / self._count
            delta = self._mean
        losses = F.softplus(-(rw - delta)) + F.softplus(rl - delta)
        return pair_output(losses, rw, rl, reward_shift=delta)


@register_loss("apo_zero")
@dataclass
class APOZero(PairwiseLoss):
    """Anchored Preference Optimization, zero variant (D'Oosterlinck et al. 2024, eq. 7; TRL's ``apo_zero``).

    loss = (1 - sigmoid(beta * l_w)) + sigmoid(beta * l_l): push the chosen
    likelihood up and the rejected down, each anchored at the reference.
    """

    beta: float = 0.1

    def __post_init__(self):
        check_positive("beta", self.beta)

    def __call__(self, batch: PreferenceBatch):
        chosen, rejected = log_ratios(batch)
        losses = (1 - torch.sigmoid(self.beta * chosen)) + torch.sigmoid(self.beta * rejected)
        return pair_output(losses, self.beta * chosen, self.beta * rejected)


@register_loss("apo_down")
@dataclass
class APODown(PairwiseLoss):
    """Anchored Preference Optimization, down variant (D'Oosterlinck et al. 2024, eq. 8; TRL's ``apo_down``).

    loss = sigmoid(beta * l_w) + (1 - sigmoid(beta * (l_w - l_l))): lower both
    likelihoods, the rejected more, for data whose chosen answers are worse
    than the model's own.
    """

    beta: float = 0.1

    def __post_init__(self):
        check_positive("beta", self.beta)

    def __call__(self, batch: PreferenceBatch):
        chosen, rejected = log_ratios(batch)
        losses = torch.sigmoid(self.beta * chosen) + (1 - torch.sigmoid(self.beta * (chosen - rejected)))
        return pair_output(losses, self.beta * chosen, self.beta * rejected)


@register_loss("irepo")
@dataclass
class IREPO(PairwiseLoss):
    """iREPO (Le et al. 2024, arXiv 2405.15230): regress the implicit reward margin onto the logit of
    an empirical preference probability.

    The paper: "iREPO: implicit Reward Pairwise Difference based Empirical
    Preference Optimization".

    loss = (beta * delta - logit(p))^2 with p = soft_label, the fraction of
    judgements preferring y_w, clipped to [clip, 1 - clip] so hard labels give a
    finite target. Unverified: the squared form follows the paper's abstract (a
    regression of the implicit reward difference onto the logit of the
    empirical preference); its equation, the target's scaling and the clipping
    were not checked, and no reference code was found (no public repository
    of the authors; TRL has no such loss).
    """

    reference_cancels = True  # only differences within a prompt

    beta: float = 0.1
    clip: float = 0.01

    needs = frozenset({"reference", "soft_label"})

    def __post_init__(self):
        check_positive("beta", self.beta)
        check_range("clip", self.clip, 0.0, 0.5)
        check_positive("clip", self.clip)

    def __call__(self, batch: PreferenceBatch):
        chosen, rejected = log_ratios(batch)
        p = require(batch.soft_label, "soft labels").clamp(self.clip, 1 - self.clip)
        target = torch.log(p) - torch.log1p(-p)
        losses = (self.beta * (chosen - rejected) - target) ** 2
        return pair_output(losses, self.beta * chosen, self.beta * rejected, target_margin=target.mean())


@register_loss("soft_dpo")
@dataclass
class SoftDPO(PairwiseLoss):
    """DPO with smoothed soft labels, after SmPO-Diffusion (Lu et al. 2025, ICML, arXiv 2506.02698).

    The paper: "Smoothed Preference Optimization via ReNoise Inversion for
    Aligning Diffusion Models with Varied Human Preferences"; this is its
    smoothed-preference DPO loss (without the ReNoise inversion, which is
    diffusion-specific).

    loss = -log sigmoid(gamma * (2 p - 1) * beta * delta), p = soft_label (the
    judged probability that y_w is better). The weight gamma (2p - 1) is
    positive for p > 1/2, zero at a tie (no gradient) and negative for a
    reversed label; with gamma = 1 a sure label (p = 1) gives plain DPO.
    Verified against the authors' code (JaydenLyh/SmPO, train.py, the training
    loop): ``scale_term = -0.5 * beta_dpo * (2*p - 1) * 10`` multiplies the
    policy-minus-reference difference of the winner-minus-loser denoising
    errors inside -logsigmoid, so gamma = 10 there; the -0.5 is the
    Diffusion-DPO convention that turns denoising errors into log-likelihoods.
    There p = softmax of the two images' min-max-normalised PickScores, the
    winner's entry. Port choices: p comes from the judge's scores (the loop's
    sigmoid(s_w - s_l), a softmax over the two unnormalised scores), and the
    default gamma = 1 keeps beta on DPO's scale (only gamma * beta matters).
    """

    reference_cancels = True  # only differences within a prompt

    beta: float = 0.1
    gamma: float = 1.0

    needs = frozenset({"reference", "soft_label"})

    def __post_init__(self):
        check_positive("beta", self.beta)
        check_positive("gamma", self.gamma)

    def __call__(self, batch: PreferenceBatch):
        chosen, rejected = log_ratios(batch)
        weight = self.gamma * (2 * require(batch.soft_label, "soft labels") - 1)
        losses = F.softplus(-weight * self.beta * (chosen - rejected))
        return pair_output(losses, self.beta * chosen, self.beta * rejected)
