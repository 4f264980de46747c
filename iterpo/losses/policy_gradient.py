"""Losses on a prompt's responses with their rewards (ScoredBatch): policy gradients, and supervised fine-tuning.

Each policy-gradient loss is a surrogate whose gradient is the method's
estimate: the advantages are computed from the rewards and stored log-probs,
without gradients, and multiply the policy's log-probs (or importance ratios).
SFT imitates the responses a pairing strategy selected (the demonstrations).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from iterpo.losses.base import Loss, LossOutput, ScoredBatch, check_range, register_loss, require


def _group_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of each row over its real entries: (B,)."""
    return (values * mask).sum(1) / mask.sum(1).clamp(min=1)


def _output(losses: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, **extra: float) -> LossOutput:
    real = mask.bool()
    return LossOutput(
        loss=losses.mean(),
        losses=losses,
        extra={
            "advantage_abs": float((advantages.abs() * real).sum() / real.sum().clamp(min=1)),
            **extra,
        },
    )


@register_loss("rloo")
@dataclass
class RLOO(Loss):
    """REINFORCE with a leave-one-out baseline (Ahmadian et al. 2024, "Back to Basics: Revisiting
    REINFORCE-Style Optimization for Learning from Human Feedback in LLMs", arXiv 2402.14740, section 3.2).

    For the k samples y_1..y_k of a prompt, with the KL-shaped reward
        R_i = r_i - beta (log pi_old(y_i) - log pi_ref(y_i))
    (pi_old: the policy that sampled them, the round's starting one), the
    advantage is R_i minus the mean of the other samples' rewards,
        A_i = R_i - 1/(k-1) sum_{j != i} R_j,
    and the loss -1/k sum_i A_i log pi_theta(y_i), whose gradient is the
    paper's estimator. A prompt's loss is the mean over its samples; groups of
    one sample have no baseline and contribute nothing. With
    ``reference.policy: previous`` pi_ref is pi_old and the KL term vanishes.
    The update is REINFORCE's: several optimizer steps on one round's samples
    use them off-policy, without an importance ratio (GRPO has one).

    With every response listed and weighted by its probability pi_old(y)
    (sampling.exhaustive, batch.weights), the sums become the expectation they
    estimate: A_i = R_i - E_pi_old[R] and the loss -sum_i pi_old(y_i) A_i
    log pi_theta(y_i), whose gradient is exactly grad E_pi[R] at pi_old (a
    leave-one-out baseline has no meaning without draws).
    """

    reference_cancels = True  # only differences within a prompt
    exact_weights = True

    beta: float = 0.0

    data_shape = "scored"
    needs = frozenset({"reference", "previous"})

    def __post_init__(self):
        check_range("beta", self.beta, 0.0, float("inf"))

    def __call__(self, batch: ScoredBatch) -> LossOutput:
        mask = batch.mask.to(batch.logps.dtype)  # (B, n)
        kl = require(batch.prev_logps, "sampling-policy log-probs") - require(batch.ref_logps, "reference log-probs")
        reward = (batch.rewards - self.beta * kl) * mask  # (B, n)
        if batch.weights is not None:  # exact expectations over listed responses
            w = batch.weights * mask  # (B, n)
            mass = w.sum(1, keepdim=True).clamp(min=1e-300)  # (B, 1)
            advantage = (reward - (w * reward).sum(1, keepdim=True) / mass) * mask  # (B, n)
            losses = -(w * advantage.detach() * batch.logps).sum(1) / mass.squeeze(1)  # (B,)
            return _output(losses, advantage, mask, kl=float(_group_mean(kl * mask, mask).mean()))
        k = mask.sum(1, keepdim=True)  # (B, 1)
        baseline = (reward.sum(1, keepdim=True) - reward) / (k - 1).clamp(min=1)  # mean of the others
        advantage = torch.where(k > 1, reward - baseline, torch.zeros_like(reward)) * mask  # (B, n)
        losses = -_group_mean(advantage.detach() * batch.logps, mask)  # (B,)
        return _output(losses, advantage, mask, kl=float(_group_mean(kl * mask, mask).mean()))


@register_loss("grpo")
@dataclass
class GRPO(Loss):
    """Group Relative Policy Optimization (Shao et al. 2024, "DeepSeekMath", arXiv 2402.03300, eq. 3 with
    outcome supervision, section 4.1.2).

    Each sample's advantage is its reward normalised within its prompt's group,
        A_i = (r_i - mean(r)) / (std(r) + eps)   (std with Bessel's correction, as TRL computes it),
    and each response token t of y_i contributes the clipped surrogate
        min(rho_it A_i, clip(rho_it, 1 - clip, 1 + clip) A_i) - beta D_it,
        rho_it = pi_theta(y_it | ...) / pi_old(y_it | ...),
        D_it = pi_ref/pi_theta - log(pi_ref/pi_theta) - 1   (the paper's unbiased KL estimate, per token),
    averaged over the response's tokens, then over the group; the loss is its
    negative. pi_old, the policy that sampled the round, is the round's
    starting policy: it is held as a live model during training and serves as
    pi_ref too, so GRPO needs ``reference.policy: previous`` (the paper's
    iterative GRPO, section 4.1.3, resets the reference to the current policy
    every iteration). On a round's first step rho = 1 and D = 0.
    ``scale_rewards: false`` leaves out the division by std (Liu et al. 2025,
    "Understanding R1-Zero-Like Training", arXiv 2503.20783). The log-probs are
    the policy's own (temperature 1): with ``sampling.temperature`` below 1 the
    ratio is taken against the untempered sampling policy, not against the
    tempered distribution the samples were drawn from.
    """

    clip: float = 0.2
    beta: float = 0.04
    scale_rewards: bool = True
    eps: float = 1e-4

    data_shape = "scored"
    needs = frozenset({"token_logps"})
    reference_policy = "previous"

    def __post_init__(self):
        check_range("clip", self.clip, 0.0, 1.0)
        check_range("beta", self.beta, 0.0, float("inf"))
        check_range("eps", self.eps, 0.0, float("inf"))

    def advantages(self, batch: ScoredBatch) -> torch.Tensor:
        """(B, n) group-normalised rewards, 0 where mask is False."""
        mask = batch.mask.to(batch.rewards.dtype)
        k = mask.sum(1, keepdim=True)  # (B, 1)
        mean = (batch.rewards * mask).sum(1, keepdim=True) / k.clamp(min=1)
        centred = (batch.rewards - mean) * mask
        if not self.scale_rewards:
            return centred
        std = (centred.pow(2).sum(1, keepdim=True) / (k - 1).clamp(min=1)).sqrt()  # (B, 1), unbiased
        return centred / (std + self.eps)

    def __call__(self, batch: ScoredBatch) -> LossOutput:
        logp = require(batch.token_logps, "per-token log-probs")  # (M,)
        old = require(batch.ref_token_logps, "per-token log-probs of the sampling policy").detach()  # (M,)
        slot = require(batch.token_slot, "each token's sample")  # (M,)
        mask = batch.mask.to(logp.dtype)  # (B, n)
        advantage = self.advantages(batch).detach()  # (B, n)
        a = advantage.reshape(-1)[slot]  # (M,) each token's sample's advantage
        ratio = torch.exp(logp - old)  # (M,)
        surrogate = torch.min(ratio * a, ratio.clamp(1 - self.clip, 1 + self.clip) * a)
        log_ref_ratio = old - logp  # log pi_ref / pi_theta, (M,)
        kl = torch.exp(log_ref_ratio) - log_ref_ratio - 1  # (M,) >= 0
        per_token = surrogate - self.beta * kl  # (M,)
        # mean over each response's tokens, then over the group's samples
        per_sample = torch.zeros(mask.numel(), dtype=logp.dtype, device=logp.device).index_add(0, slot, per_token)
        per_sample = per_sample.view_as(mask) / batch.lengths.clamp(min=1)  # (B, n)
        losses = -_group_mean(per_sample, mask)  # (B,)
        clipped = ((ratio - 1).abs() > self.clip).float().mean()
        return _output(losses, advantage, mask, kl=float(kl.detach().mean()), clipped=float(clipped))


@register_loss("sft")
@dataclass
class SFT(Loss):
    """Supervised fine-tuning on selected responses: their negative log-likelihood per token.

    With the ``correct`` strategy this is rejection-sampling fine-tuning, iterated: each round trains on the
    policy's own samples the verifier accepted (STaR, Zelikman et al. 2022, "STaR: Bootstrapping Reasoning
    With Reasoning"; RFT, Yuan et al. 2023, arXiv 2308.01825; ReST-EM, Singh et al. 2023, arXiv 2312.06585);
    with ``best``, each prompt's best response (OLAPH's SFT step, Jeong et al. 2024). A prompt's loss is
    -sum of its demonstrations' token log-probs / their total tokens; the batch's, the mean over prompts.
    """

    data_shape = "demonstrations"
    needs = frozenset()

    def __call__(self, batch: ScoredBatch) -> LossOutput:
        mask = batch.mask.to(batch.logps.dtype)  # (B, n)
        tokens = (batch.lengths * mask).sum(1).clamp(min=1)  # (B,)
        losses = -(batch.logps * mask).sum(1) / tokens  # (B,) mean NLL per token
        return LossOutput(loss=losses.mean(), losses=losses, extra={"demonstrations": float(mask.sum(1).mean())})
