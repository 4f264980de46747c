"""Preference construction: judged rollouts -> training examples.

A strategy sees one prompt's rollouts with their scores and returns pairs
(chosen, rejected), or a reason why the prompt gave none; the reasons are
counted and reported every round.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from collections import Counter

from iterpo.records import Judgement, Preference, Prompt, Rollout
from iterpo.registry import Registry

PAIRING: Registry[type] = Registry("pairing strategy")
register_pairing = PAIRING.register


@dataclass
class PairingResult:
    preferences: list[Preference]
    skipped: Counter = field(default_factory=Counter)  # reason -> number of prompts


@register_pairing("correct_vs_incorrect")
class CorrectVsIncorrect:
    """Pair correct responses (score 1) with incorrect ones (score < 1).

    Each prompt gives up to ``pairs_per_prompt`` pairs, matching the i-th
    distinct correct response with the i-th incorrect one in sample order, so
    pairs are deterministic. Prompts where every response is correct (or every
    one wrong) give no pair and are counted as skipped.
    """

    def __init__(self, pairs_per_prompt: int = 1):
        self.pairs_per_prompt = pairs_per_prompt

    def pair(self, prompt: Prompt, rollouts: list[Rollout], judgements: list[Judgement]) -> tuple[list[Preference], str | None]:
        scores = {j.sample_idx: j.score for j in judgements}
        good = _distinct([r for r in rollouts if scores[r.sample_idx] >= 1.0])
        bad = _distinct([r for r in rollouts if scores[r.sample_idx] < 1.0])
        if not good:
            return [], "no correct response"
        if not bad:
            return [], "all responses correct"
        prefs = []
        for i in range(min(self.pairs_per_prompt, max(len(good), len(bad)))):
            c, r = good[i % len(good)], bad[i % len(bad)]
            prefs.append(
                Preference(prompt.prompt_id, c.sample_idx, r.sample_idx, prompt.text, c.text, r.text,
                           scores[c.sample_idx], scores[r.sample_idx])
            )
        return prefs, None


def _distinct(rollouts: list[Rollout]) -> list[Rollout]:
    """Drop rollouts whose token ids repeat an earlier one (identical responses add nothing)."""
    seen, out = set(), []
    for r in rollouts:
        key = tuple(r.token_ids)
        if key not in seen:
            seen.add(key)
            out.append(r)
    return out


def build_pairs(strategy, prompts: list[Prompt], rollouts: list[Rollout], judgements: list[Judgement]) -> PairingResult:
    by_prompt: dict[str, list[Rollout]] = {}
    for r in rollouts:
        by_prompt.setdefault(r.prompt_id, []).append(r)
    judged: dict[str, list[Judgement]] = {}
    for j in judgements:
        judged.setdefault(j.prompt_id, []).append(j)
    result = PairingResult([])
    for p in prompts:
        prefs, reason = strategy.pair(p, by_prompt.get(p.prompt_id, []), judged.get(p.prompt_id, []))
        result.preferences.extend(prefs)
        if reason:
            result.skipped[reason] += 1
    return result


def build_strategy(config):
    return PAIRING.get(config.strategy)(pairs_per_prompt=config.pairs_per_prompt)
