"""Preference construction: judged rollouts -> training examples of the shape the loss needs.

A strategy sees one prompt's rollouts with their scores and returns its
examples (pairs, labelled single responses, or a ranked group), or a reason why
the prompt gave none; the reasons are counted and reported every round.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import ClassVar

from iterpo.errors import ConfigError
from iterpo.records import Judgement, LabelledResponse, Preference, Prompt, RankedGroup, Rollout
from iterpo.registry import Registry

PAIRING: Registry[type] = Registry("pairing strategy")
register_pairing = PAIRING.register

RECORD_TYPE = {"pairs": Preference, "unpaired": LabelledResponse, "ranked": RankedGroup}
DEFAULT_STRATEGY = {"pairs": "correct_vs_incorrect", "unpaired": "labelled", "ranked": "ranked"}


@dataclass
class PairingResult:
    data_shape: str
    examples: list  # Preference, LabelledResponse or RankedGroup records
    skipped: Counter = field(default_factory=Counter)  # reason -> number of prompts


class Strategy:
    data_shape: ClassVar[str] = "pairs"

    def __init__(self, config):  # PairingSection
        self.config = config

    def examples(self, prompt: Prompt, rollouts: list[Rollout], scores: dict[int, float]) -> tuple[list, str | None]:
        raise NotImplementedError  # pragma: no cover


def _distinct(rollouts: list[Rollout]) -> list[Rollout]:
    """Drop rollouts whose token ids repeat an earlier one (identical responses add nothing)."""
    seen, out = set(), []
    for r in rollouts:
        key = tuple(r.token_ids)
        if key not in seen:
            seen.add(key)
            out.append(r)
    return out


def _sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def win_rates(scores: dict[int, float]) -> dict[int, float]:
    """P(y_i beats the sampling policy) ≈ mean over the K samples j of sigmoid(s_i - s_j), self included.

    SPPO's estimate from PairRM scores (ALGORITHMS.md §6); with verifier scores
    in {0, 1} a correct response gets between 0.5 and 0.73.
    """
    values = list(scores.values())
    return {i: sum(_sigmoid(s - t) for t in values) / len(values) for i, s in scores.items()}


@register_pairing("correct_vs_incorrect")
class CorrectVsIncorrect(Strategy):
    """Pair responses scoring at least ``threshold`` with ones scoring below it.

    Each prompt gives up to ``pairs_per_prompt`` pairs, matching the i-th
    distinct good response with the i-th bad one in sample order, so pairs are
    deterministic. Prompts where every response is good (or every one bad)
    give no pair and are counted as skipped. Each pair carries the soft label
    sigmoid(s_w - s_l) and both responses' win rates among the K samples.
    """

    data_shape = "pairs"

    def examples(self, prompt, rollouts, scores):
        good = _distinct([r for r in rollouts if scores[r.sample_idx] >= self.config.threshold])
        bad = _distinct([r for r in rollouts if scores[r.sample_idx] < self.config.threshold])
        if not good:
            return [], "no correct response"
        if not bad:
            return [], "all responses correct"
        rates = win_rates(scores)
        prefs = []
        for i in range(min(self.config.pairs_per_prompt, max(len(good), len(bad)))):
            c, r = good[i % len(good)], bad[i % len(bad)]
            sc, sr = scores[c.sample_idx], scores[r.sample_idx]
            prefs.append(Preference(prompt.prompt_id, c.sample_idx, r.sample_idx, prompt.text, c.text, r.text, sc, sr,
                                    _sigmoid(sc - sr), rates[c.sample_idx], rates[r.sample_idx]))
        return prefs, None


@register_pairing("labelled")
class Labelled(Strategy):
    """Single responses labelled desirable (score >= threshold) or undesirable, for KTO.

    Up to ``pairs_per_prompt`` distinct responses of each label per prompt; a
    prompt whose responses are all good still contributes desirable examples.
    """

    data_shape = "unpaired"

    def examples(self, prompt, rollouts, scores):
        distinct = _distinct(rollouts)
        good = [r for r in distinct if scores[r.sample_idx] >= self.config.threshold][: self.config.pairs_per_prompt]
        bad = [r for r in distinct if scores[r.sample_idx] < self.config.threshold][: self.config.pairs_per_prompt]
        out = [LabelledResponse(prompt.prompt_id, r.sample_idx, prompt.text, r.text, label, scores[r.sample_idx], "", -1)
               for rs, label in ((good, True), (bad, False)) for r in rs]
        return out, None if out else "no responses"


@register_pairing("ranked")
class Ranked(Strategy):
    """A group of up to ``group_size`` distinct responses ordered by score, best first, for PRO and TPO.

    When more are available the group spans the ranking evenly (best and worst
    always included). Prompts whose responses all scored the same are skipped.
    """

    data_shape = "ranked"

    def examples(self, prompt, rollouts, scores):
        ranked = sorted(_distinct(rollouts), key=lambda r: -scores[r.sample_idx])  # stable: ties keep sample order
        if len({scores[r.sample_idx] for r in ranked}) < 2:
            return [], "all responses scored the same"
        n = min(self.config.group_size, len(ranked))
        picks = sorted({round(i * (len(ranked) - 1) / (n - 1)) for i in range(n)})
        group = [ranked[i] for i in picks]
        return [RankedGroup(prompt.prompt_id, prompt.text, [r.sample_idx for r in group], [r.text for r in group],
                            [scores[r.sample_idx] for r in group])], None


def _assign_kl_partners(examples: list[LabelledResponse]) -> None:
    """Give each example another prompt's response (the next example with a different prompt, cyclically)."""
    n = len(examples)
    for i, e in enumerate(examples):
        partner = next((examples[(i + j) % n] for j in range(1, n) if examples[(i + j) % n].prompt_id != e.prompt_id),
                       examples[(i + 1) % n])
        e.kl_prompt_id, e.kl_sample_idx = partner.prompt_id, partner.sample_idx


def build_examples(strategy: Strategy, prompts: list[Prompt], rollouts: list[Rollout], judgements: list[Judgement]) -> PairingResult:
    by_prompt: dict[str, list[Rollout]] = {}
    for r in rollouts:
        by_prompt.setdefault(r.prompt_id, []).append(r)
    scores: dict[str, dict[int, float]] = {}
    for j in judgements:
        scores.setdefault(j.prompt_id, {})[j.sample_idx] = j.score
    result = PairingResult(strategy.data_shape, [])
    for p in prompts:
        examples, reason = strategy.examples(p, by_prompt.get(p.prompt_id, []), scores.get(p.prompt_id, {}))
        result.examples.extend(examples)
        if reason:
            result.skipped[reason] += 1
    if strategy.data_shape == "unpaired" and result.examples:
        _assign_kl_partners(result.examples)
    return result


def build_strategy(config, data_shape: str) -> Strategy:
    """The configured strategy, or the default one for the loss's data shape."""
    name = config.strategy or DEFAULT_STRATEGY[data_shape]
    cls = PAIRING.get(name)
    if cls.data_shape != data_shape:
        raise ConfigError(f"pairing strategy {name!r} produces {cls.data_shape}, but the loss needs {data_shape}; "
                          f"use e.g. {DEFAULT_STRATEGY[data_shape]!r}")
    return cls(config)
