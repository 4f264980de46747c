"""The loss contract: a batch of log-probabilities goes in, a LossOutput comes out.

Losses are pure functions of log-probabilities. Each one is a small dataclass
whose fields are its hyperparameters, registered by name:

    @register_loss("dpo")
    @dataclass
    class DPO(PairwiseLoss):
        beta: float = 0.1
        def __call__(self, batch): ...

``get_loss("dpo", beta=0.5)`` builds one; an unknown name or hyperparameter
raises ConfigError listing what exists, so a bad run config fails at load.

A loss declares what it consumes, and the training loop computes exactly that:

- ``data_shape``: "pairs" (PreferenceBatch), "unpaired" (UnpairedBatch: single
  responses labelled desirable or not), "ranked" (RankedBatch: groups of
  responses ordered by score), "scored" (ScoredBatch: every sample of a
  prompt with its reward, for policy-gradient losses) or "demonstrations"
  (ScoredBatch: the responses to imitate, for SFT);
- ``needs``: the optional inputs beyond the policy's sequence log-probs, drawn
  from NEEDS below. A reference-free loss needs nothing, and the loop then
  computes no reference log-probs at all.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

import torch

from iterpo.errors import ConfigError
from iterpo.registry import Registry

NEEDS = {
    "reference": "sequence log-probs under the reference policy",
    "previous": "sequence log-probs under the policy the round started from (pi_t)",
    "win_rate": "estimates of P(y beats the current policy) for chosen and rejected",
    "soft_label": "an empirical probability that the chosen response is preferred",
    "scores": "the judge's scores of chosen and rejected (GPO: their preference scores against the sampling policy)",
    "margin": "a target reward margin per pair (an adaptive margin from preference strength)",
    "aux_samples": "log-probs of extra samples per prompt (from the reference, or the policy's own)",
    "token_stats": "per-token log-probs, reference log-probs and KL(ref || policy), from a live reference model",
    "token_logps": "per-token log-probs of every sample under the policy and a live reference model",
    "side_targets": "log-probs of each pair's side targets (a rationale, a degree label) after their own requests",
}
LIVE_NEEDS = frozenset({"token_stats", "token_logps"})  # needs that hold a reference model during training


@dataclass
class PreferenceBatch:
    """Per-pair tensors for pairwise losses. B = pairs, T = longest response, k = aux samples.

    Only the fields the loss declares in ``needs`` are filled; the rest stay None.
    """

    chosen_logps: torch.Tensor  # (B,) sum of policy token log-probs of the chosen response
    rejected_logps: torch.Tensor  # (B,) same for the rejected response
    ref_chosen_logps: torch.Tensor | None = None  # (B,) under the reference policy   [reference]
    ref_rejected_logps: torch.Tensor | None = None  # (B,)
    chosen_lengths: torch.Tensor | None = None  # (B,) response lengths in tokens (always filled by the loop)
    rejected_lengths: torch.Tensor | None = None  # (B,)
    prev_chosen_logps: torch.Tensor | None = None  # (B,) under the round's starting policy pi_t   [previous]
    prev_rejected_logps: torch.Tensor | None = None  # (B,)
    chosen_win_rate: torch.Tensor | None = None  # (B,) estimate of P(y_w beats pi_t)   [win_rate]
    rejected_win_rate: torch.Tensor | None = None  # (B,) estimate of P(y_l beats pi_t)
    soft_label: torch.Tensor | None = None  # (B,) estimate of P(y_w beats y_l)   [soft_label]
    chosen_score: torch.Tensor | None = None  # (B,) the judge's score of y_w   [scores]
    rejected_score: torch.Tensor | None = None  # (B,) and of y_l
    margin: torch.Tensor | None = None  # (B,) the target reward margin asked of each pair   [margin]
    aux_logps: torch.Tensor | None = None  # (B, k) policy log-probs of extra samples for the prompt   [aux_samples]
    ref_aux_logps: torch.Tensor | None = None  # (B, k) their reference log-probs
    chosen_token_logps: torch.Tensor | None = None  # (B, T) policy log-prob per response token   [token_stats]
    rejected_token_logps: torch.Tensor | None = None  # (B, T)
    ref_chosen_token_logps: torch.Tensor | None = None  # (B, T)
    ref_rejected_token_logps: torch.Tensor | None = None  # (B, T)
    chosen_token_kl: torch.Tensor | None = None  # (B, T) KL(pi_ref || pi_theta) over the vocabulary at each position
    rejected_token_kl: torch.Tensor | None = None  # (B, T)
    chosen_mask: torch.Tensor | None = None  # (B, T) bool, True on real response tokens
    rejected_mask: torch.Tensor | None = None  # (B, T)
    ref_chosen_hidden: torch.Tensor | None = None  # (B, T, H) reference last-layer states at response positions
    ref_rejected_hidden: torch.Tensor | None = None  # (B, T, H)
    side_logps: torch.Tensor | None = (
        None  # (B, S) policy log-prob of each side target after its request   [side_targets]
    )
    side_lengths: torch.Tensor | None = None  # (B, S) their lengths in tokens (1 where padded)
    side_mask: torch.Tensor | None = None  # (B, S) bool, True for real side targets


@dataclass
class UnpairedBatch:
    """Single responses labelled desirable or undesirable (KTO). B = responses.

    The KL fields hold each response's prompt paired with another example's
    response (x_i, y_j), the mismatched pairs KTO uses to estimate its reference
    point z0.
    """

    logps: torch.Tensor  # (B,) policy log-prob of the response
    desirable: torch.Tensor  # (B,) bool label
    ref_logps: torch.Tensor | None = None  # (B,)
    kl_logps: torch.Tensor | None = None  # (B,) policy log-prob of the mismatched response
    ref_kl_logps: torch.Tensor | None = None  # (B,)
    lengths: torch.Tensor | None = None  # (B,)


@dataclass
class RankedBatch:
    """Groups of responses to one prompt, best first. B = groups, n = largest group."""

    logps: torch.Tensor  # (B, n) policy log-probs, padded with 0 where mask is False
    scores: torch.Tensor  # (B, n) judge scores, non-increasing along each row
    mask: torch.Tensor  # (B, n) bool, True for real responses
    lengths: torch.Tensor  # (B, n) response lengths in tokens (1 where padded)
    ref_logps: torch.Tensor | None = None  # (B, n)


@dataclass
class ScoredBatch:
    """A prompt's responses with their rewards: every sample (policy-gradient losses) or the demonstrations (SFT).
    B = prompts, n = largest group, M = response tokens in the batch (filled for token-level losses only)."""

    logps: torch.Tensor  # (B, n) policy log-prob of each sample (summed over its tokens), 0 where mask is False
    rewards: torch.Tensor  # (B, n) the judge's score (or win proportion), 0 where mask is False
    mask: torch.Tensor  # (B, n) bool, True for real samples
    lengths: torch.Tensor  # (B, n) response lengths in tokens (1 where padded)
    ref_logps: torch.Tensor | None = None  # (B, n) under the reference policy   [reference]
    prev_logps: torch.Tensor | None = None  # (B, n) under the policy that sampled them (the round's start) [previous]
    token_logps: torch.Tensor | None = None  # (M,) policy log-prob of each response token   [token_logps]
    ref_token_logps: torch.Tensor | None = None  # (M,) the same under the live reference model
    token_slot: torch.Tensor | None = None  # (M,) long, the sample each token belongs to: b * n + i
    weights: torch.Tensor | None = None  # (B, n) each response's probability when sampling listed them all, else None


@dataclass
class LossOutput:
    loss: torch.Tensor  # () mean over the batch, the value to backpropagate
    losses: torch.Tensor  # (B,) one value per example
    chosen_rewards: torch.Tensor | None = None  # (B,) implicit reward, detached
    rejected_rewards: torch.Tensor | None = None  # (B,)
    extra: dict[str, float] = field(default_factory=dict)  # method-specific metrics (z0, mask sparsity, ...)

    def metrics(self) -> dict[str, float]:
        """Scalar metrics to log: loss, rewards, margin, reward accuracy, and the method's own."""
        out = {"loss": float(self.loss.detach())}
        if self.chosen_rewards is not None and self.rejected_rewards is not None:
            margin = self.chosen_rewards - self.rejected_rewards
            out["reward_chosen"] = float(self.chosen_rewards.mean())
            out["reward_rejected"] = float(self.rejected_rewards.mean())
            out["reward_margin"] = float(margin.mean())
            out["reward_accuracy"] = float((margin > 0).float().mean())
        out.update(self.extra)
        return out


class Loss:
    """Base of every registered loss; see the module docstring for the contract."""

    data_shape: ClassVar[str] = "pairs"
    needs: ClassVar[frozenset[str]] = frozenset({"reference"})
    aux_source: ClassVar[str | None] = None  # "reference" or "policy": where aux samples must come from
    # the reference policy the method is defined against ("previous": the round's starting policy), if it fixes one
    reference_policy: ClassVar[str | None] = None
    # reference log-probs enter only through differences between responses to the same prompt, so a constant
    # per prompt in them cancels (what reference.policy extrapolated, known up to such a constant, needs)
    reference_cancels: ClassVar[bool] = False
    # Each example's loss depends on that example alone, so a micro-batch may go through the model in
    # several passes with the same result. False for losses with batch statistics (KTO's z0, BCO's shift).
    per_example: ClassVar[bool] = True
    # Exact over listed responses (sampling.exhaustive): the loss over every response, weighted by its
    # probability (scored data: batch.weights), or over every pair (all_pairs) with exact win rates, is the
    # expectation the method is defined by. Other losses are written for drawn samples and refuse the mode.
    exact_weights: ClassVar[bool] = False

    @property
    def needs_reference(self) -> bool:
        return "reference" in self.needs

    def start(self, model: torch.nn.Module | None = None, examples: Sequence[object] | None = None) -> None:
        """Called when training on a round's data begins: reset running statistics, build any heads."""

    def parameters(self) -> list[torch.nn.Parameter]:
        """Trainable parameters the loss owns (SparsePO's mask head); trained with the policy."""
        return []

    # batch: the PreferenceBatch, UnpairedBatch or RankedBatch of the loss's data_shape (each loss narrows it)
    def __call__(self, batch: Any) -> LossOutput:  # pragma: no cover
        raise NotImplementedError


class PairwiseLoss(Loss):
    data_shape: ClassVar[str] = "pairs"


LOSSES: Registry[type[Loss]] = Registry("loss")
register_loss = LOSSES.register


def loss_hyperparameters(name: str) -> dict[str, object]:
    """Hyperparameter names of a registered loss with their defaults."""
    cls = LOSSES.get(name)
    if not dataclasses.is_dataclass(cls):  # every registered loss is a dataclass: its fields are its hyperparameters
        raise TypeError(f"loss {name!r} is registered but is not a dataclass")
    return {f.name: f.default for f in dataclasses.fields(cls) if f.init}


def get_loss(name: str, **hyperparams: Any) -> Loss:
    """Build the registered loss ``name``; unknown hyperparameters raise ConfigError."""
    known = loss_hyperparameters(name)
    unknown = sorted(set(hyperparams) - set(known))
    if unknown:
        raise ConfigError(
            f"loss {name!r} has no hyperparameter {', '.join(map(repr, unknown))}; "
            f"it takes: {', '.join(known) or 'none'}"
        )
    try:
        return LOSSES.get(name)(**hyperparams)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"loss {name!r}: {exc}") from exc


def list_losses() -> list[str]:
    return LOSSES.names()


# ---------------------------------------------------------------- helpers shared by the loss modules


def log_ratios(batch: PreferenceBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """(l(y_w), l(y_l)) = policy minus reference log-probs, each (B,)."""
    if batch.ref_chosen_logps is None or batch.ref_rejected_logps is None:
        raise ValueError("this loss needs reference log-probs in the batch")
    return batch.chosen_logps - batch.ref_chosen_logps, batch.rejected_logps - batch.ref_rejected_logps


V = TypeVar("V")


def require(value: V | None, what: str) -> V:
    if value is None:
        raise ValueError(f"this loss needs {what} in the batch")
    return value


def check_positive(name: str, value: float) -> None:
    if not value > 0:
        raise ValueError(f"{name} must be > 0, got {value}")


def check_range(name: str, value: float, lo: float, hi: float, hi_open: bool = True) -> None:
    ok = lo <= value < hi if hi_open else lo <= value <= hi
    if not ok:
        raise ValueError(f"{name} must be in [{lo}, {hi}{')' if hi_open else ']'}, got {value}")


def pair_output(
    losses: torch.Tensor,
    chosen_rewards: torch.Tensor | None,
    rejected_rewards: torch.Tensor | None,
    **extra: float | torch.Tensor,
) -> LossOutput:
    """LossOutput for per-pair losses, rewards detached."""
    return LossOutput(
        loss=losses.mean(),
        losses=losses,
        chosen_rewards=None if chosen_rewards is None else chosen_rewards.detach(),
        rejected_rewards=None if rejected_rewards is None else rejected_rewards.detach(),
        extra={k: float(v) for k, v in extra.items()},
    )
