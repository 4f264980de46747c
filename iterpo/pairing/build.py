"""Applying a strategy to a round: each prompt's judged responses become candidates, then examples."""

from __future__ import annotations

import random

from iterpo.errors import ConfigError
from iterpo.pairing.base import (
    DEFAULT_STRATEGY,
    PAIRING,
    Candidate,
    PairingResult,
    Strategy,
    distinct,
    sigmoid,
    win_rates,
)
from iterpo.pairing.side import degree_targets, rationale_of, rationale_target
from iterpo.records import Judgement, LabelledResponse, Preference, Prompt, Rollout, by_prompt


def _assign_kl_partners(examples: list[LabelledResponse]) -> None:
    """Give each example another prompt's response (the next example with a different prompt, cyclically)."""
    n = len(examples)
    for i, e in enumerate(examples):
        partner = next(
            (examples[(i + j) % n] for j in range(1, n) if examples[(i + j) % n].prompt_id != e.prompt_id),
            examples[(i + 1) % n],
        )
        e.kl_prompt_id, e.kl_sample_idx, e.kl_source = partner.prompt_id, partner.sample_idx, partner.source


def candidates(
    rollouts: list[Rollout],
    judgements: dict[int, Judgement],
    length_penalty: float = 0.0,
    keep_duplicates=False,
    opponents: list[float] | None = None,
) -> list[Candidate]:
    """One prompt's judged responses, failed verdicts left out, duplicates dropped (unless keep_duplicates).

    Win rates come from the pairwise judge when it gave them, else from the
    scores of all K samples (duplicates included: they are draws of the policy);
    against ``opponents`` (another policy's samples' scores, e.g. Nash-MD's
    mixture) when given: mean_j sigmoid(s - s_j) over them.
    """
    ok = [r for r in rollouts if r.sample_idx in judgements and not judgements[r.sample_idx].failed]
    scores = {r.sample_idx: judgements[r.sample_idx].score - length_penalty * r.policy_tokens for r in ok}
    estimated = win_rates(scores) if scores else {}
    if opponents:
        estimated = {i: sum(sigmoid(s - t) for t in opponents) / len(opponents) for i, s in scores.items()}
    cands = []
    for r in ok:
        j = judgements[r.sample_idx]
        own = j.win_rate if j.win_rate is not None and not opponents else estimated[r.sample_idx]
        cands.append(Candidate(r, j, scores[r.sample_idx], own))
    return cands if keep_duplicates else distinct(cands)


def add_side_targets(pair: Preference, by_key: dict, rationale: bool, degrees: int) -> int:
    """Give pair its side targets (iterpo.pairing.side); 1 when a rationale was asked for and the judge gave none."""
    missing = 0
    if rationale:
        chosen = by_key.get((pair.chosen_source, pair.chosen_idx))
        rejected = by_key.get((pair.rejected_source, pair.rejected_idx))  # None: e.g. the initial model's
        reason = rationale_of(chosen, rejected) if chosen is not None and rejected is not None else None
        if reason:
            pair.side.append(rationale_target(pair, reason))
        else:
            missing = 1
    if degrees:
        pair.side.extend(degree_targets(pair, degrees))
    return missing


def build_examples(
    strategy: Strategy,
    prompts: list[Prompt],
    rollouts: list[Rollout],
    judgements: list[Judgement],
    seed: int = 0,
    initial: tuple[list[Rollout], list[Judgement]] | None = None,
    opponents: dict[str, list[float]] | None = None,
) -> PairingResult:
    """Apply strategy to every prompt.

    ``initial``: the initial model's judged rollouts, for strategies that anchor on them. ``opponents``: per
    prompt, the scores of another policy's samples, which win rates are then taken against.
    """

    def group(rs: list[Rollout], js: list[Judgement]):
        verdicts: dict[str, dict[int, Judgement]] = {}
        for j in js:
            verdicts.setdefault(j.prompt_id, {})[j.sample_idx] = j
        return by_prompt(rs), verdicts

    of_prompt, verdicts = group(rollouts, judgements)
    first = group(*initial) if initial is not None else None
    penalty = strategy.shared().length_penalty
    result = PairingResult(strategy.data_shape, [])
    result.failed_judgements = sum(j.failed for j in judgements)
    for p in prompts:
        cands = candidates(
            of_prompt.get(p.prompt_id, []),
            verdicts.get(p.prompt_id, {}),
            penalty,
            strategy.keeps_duplicates,
            (opponents or {}).get(p.prompt_id),
        )
        if not cands:
            result.skipped["judge failed on every response" if of_prompt.get(p.prompt_id) else "no responses"] += 1
            continue
        if len(cands) < strategy.min_candidates:
            result.skipped["fewer than two distinct judged responses"] += 1
            continue
        anchor = candidates(first[0].get(p.prompt_id, []), first[1].get(p.prompt_id, {}), penalty) if first else None
        rng = random.Random(f"{seed}/{p.prompt_id}")
        examples, reason = strategy.examples(p, cands, rng, anchor)
        config = strategy.shared()
        if config.rationale or config.degrees:
            by_key = {(c.source, c.idx): c for c in cands}
            for x in examples:
                if isinstance(x, Preference):
                    result.without_rationale += add_side_targets(x, by_key, config.rationale, config.degrees)
        result.examples.extend(examples)
        if reason:
            result.skipped[reason] += 1
    if strategy.data_shape == "unpaired" and result.examples:
        labelled = [e for e in result.examples if isinstance(e, LabelledResponse)]
        if len(labelled) != len(result.examples):  # an unpaired strategy makes LabelledResponse records only
            raise TypeError(f"pairing strategy {type(strategy).__name__} made unpaired examples of another type")
        _assign_kl_partners(labelled)
    return result


def build_strategy(config, data_shape: str) -> Strategy:
    """The configured strategy (with its options), or the default one for the loss's data shape."""
    name = config.strategy or DEFAULT_STRATEGY[data_shape]
    cls = PAIRING.get(name)
    if cls.data_shape != data_shape:
        raise ConfigError(
            f"pairing strategy {name!r} produces {cls.data_shape}, but the loss needs {data_shape}; "
            f"use e.g. {DEFAULT_STRATEGY[data_shape]!r}"
        )
    options = config.options() if hasattr(config, "options") else {}
    strategy = PAIRING.create(name, options, hint=" (and the shared pairing fields)")
    strategy.config = config
    return strategy
