"""Sampling from the geometric mixture of two policies, token by token (Nash-MD's opponent).

Nash-MD (Munos et al. 2023, "Nash Learning from Human Feedback", section 6)
plays against mu(y | x) proportional to pi(y | x)^(1 - w) ref(y | x)^w. Its
practical form, used here as in the paper's experiments, mixes each next
token: log mu(. | prefix) = (1 - w) log pi(. | prefix) + w log ref(. | prefix)
+ const. ``GeometricMixture`` runs the policy and the reference side by side,
each with its own KV cache, and hands the mixed log-probabilities to the same
seeded decoding loop as any model (iterpo.sampling.generate), so a sample
still depends on its seed alone. The transformers backend only: vLLM runs one
model per engine.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import torch

from iterpo.models.device import score_dtype


class PairCache:
    """Two KV caches that are grown, repeated and pruned together."""

    def __init__(self, first: Any, second: Any):
        self.caches = (first, second)

    def batch_repeat_interleave(self, repeats: int) -> None:
        for cache in self.caches:
            cache.batch_repeat_interleave(repeats)

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        for cache in self.caches:
            cache.batch_select_indices(indices)


class GeometricMixture(torch.nn.Module):
    """A causal LM whose next-token log-probs are (1 - weight) log pi + weight log ref (unnormalised: a constant
    per position, which sampling ignores)."""

    def __init__(self, policy: Any, reference: Any, weight: float):
        super().__init__()
        if not 0.0 <= weight <= 1.0:
            raise ValueError(f"the mixture weight must be in [0, 1], got {weight}")
        self.policy, self.reference, self.weight = policy, reference, weight  # reference: a LiveReference
        self.config = policy.config

    def new_cache(self) -> PairCache:
        from iterpo.sampling.generate import _new_cache

        with self.reference.active() as ref:
            return PairCache(_new_cache(self.policy), _new_cache(ref))

    def forward(self, input_ids, attention_mask, position_ids, use_cache=True, past_key_values=None, **kwargs):
        from iterpo.sampling.generate import _cache_kwarg

        first, second = past_key_values.caches
        inputs = dict(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=True)
        mine = self.policy(**inputs, **kwargs, **{_cache_kwarg(self.policy): first}).logits
        with self.reference.active() as ref:
            theirs = ref(**inputs, **kwargs, **{_cache_kwarg(ref): second}).logits
        w, wide = self.weight, score_dtype(mine.dtype)
        mixed = (1 - w) * torch.log_softmax(mine.to(wide), dim=-1) + w * torch.log_softmax(theirs.to(wide), dim=-1)
        return SimpleNamespace(logits=mixed)
