"""Preference construction: judged rollouts -> training examples of the shape the loss needs.

A strategy sees one prompt's judged responses (``Candidate``s, failed verdicts
left out) and returns its examples (pairs, labelled single responses, or a
ranked group), or a reason why the prompt gave none; the reasons are counted
and reported every round. Strategies are dataclasses registered by name: their
fields are options given beside ``strategy`` in the config's pairing section.

The options every strategy shares (pairs_per_prompt, threshold, group_size,
length_penalty, prefer_shorter) live in PairingSection.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from dataclasses import dataclass, field
from typing import ClassVar, Optional

from iterpo.errors import ConfigError
from iterpo.records import Judgement, LabelledResponse, Preference, Prompt, RankedGroup, Rollout
from iterpo.registry import Registry

PAIRING: Registry[type] = Registry("pairing strategy")
register_pairing = PAIRING.register

RECORD_TYPE = {"pairs": Preference, "unpaired": LabelledResponse, "ranked": RankedGroup}
DEFAULT_STRATEGY = {"pairs": "correct_vs_incorrect", "unpaired": "labelled", "ranked": "ranked"}


@dataclass
class Candidate:
    """One judged response of a prompt."""

    rollout: Rollout
    judgement: Judgement
    score: float  # the judge's score minus the length penalty
    win_rate: float  # estimated P(this beats the sampling policy), among the prompt's K samples

    @property
    def idx(self) -> int:
        return self.rollout.sample_idx

    @property
    def length(self) -> int:
        return len(self.rollout.token_ids)


@dataclass
class PairingResult:
    data_shape: str
    examples: list  # Preference, LabelledResponse or RankedGroup records
    skipped: Counter = field(default_factory=Counter)  # reason -> number of prompts
    failed_judgements: int = 0  # responses left out because the judge failed on them


@dataclass
class Strategy:
    data_shape: ClassVar[str] = "pairs"
    uses_initial: ClassVar[bool] = False  # needs the initial model's judged responses (anchored rejection)
    min_candidates: ClassVar[int] = 2  # judged responses a prompt needs before the strategy looks at it

    def __post_init__(self):
        self.config = None  # the PairingSection, set by build_strategy

    def look_ahead(self) -> bool:
        """True when the loop should improve the chosen responses with a look-ahead model (future-guided chosen)."""
        return False

    def examples(self, prompt: Prompt, cands: list[Candidate], rng: random.Random,
                 initial: Optional[list[Candidate]] = None) -> tuple[list, Optional[str]]:
        raise NotImplementedError  # pragma: no cover

    # ---- helpers shared by the strategies

    def ranked(self, cands: list[Candidate]) -> list[Candidate]:
        """Best first; ties keep sample order, or put shorter responses first with prefer_shorter."""
        if self.config.prefer_shorter:
            return sorted(cands, key=lambda c: (-c.score, c.length))
        return sorted(cands, key=lambda c: -c.score)

    def worst_first(self, cands: list[Candidate]) -> list[Candidate]:
        """Worst first; ties keep sample order, or put longer responses first with prefer_shorter."""
        if self.config.prefer_shorter:
            return sorted(cands, key=lambda c: (c.score, -c.length))
        return sorted(cands, key=lambda c: c.score)


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def win_rates(scores: dict[int, float]) -> dict[int, float]:
    """P(y_i beats the sampling policy) ≈ mean over the K samples j of sigmoid(s_i - s_j), self included.

    SPPO's estimate from PairRM scores (ALGORITHMS.md §6); with verifier scores
    in {0, 1} a correct response gets between 0.5 and 0.73. Pairwise judges
    supply their own win rates, from direct comparisons.
    """
    values = list(scores.values())
    return {i: sum(sigmoid(s - t) for t in values) / len(values) for i, s in scores.items()}


def preference(prompt: Prompt, chosen: Candidate, rejected: Candidate) -> Preference:
    """A pair record; the soft label is the pairwise judge's P(chosen beats rejected) when it has one."""
    beats = chosen.judgement.beats
    p = beats[rejected.idx] if rejected.idx < len(beats) and not math.isnan(beats[rejected.idx]) else None
    soft = p if p is not None else sigmoid(chosen.score - rejected.score)
    return Preference(prompt.prompt_id, chosen.idx, rejected.idx, prompt.text, chosen.rollout.text, rejected.rollout.text,
                      chosen.score, rejected.score, soft, chosen.win_rate, rejected.win_rate)


def distinct(cands: list[Candidate]) -> list[Candidate]:
    """Drop responses whose token ids repeat an earlier one (identical responses add nothing)."""
    seen, out = set(), []
    for c in cands:
        key = tuple(c.rollout.token_ids)
        if key not in seen:
            seen.add(key)
            out.append(c)
    return out


# ---------------------------------------------------------------- pairs


@register_pairing("correct_vs_incorrect")
@dataclass
class CorrectVsIncorrect(Strategy):
    """Pair responses scoring at least ``threshold`` with ones scoring below it.

    Each prompt gives up to ``pairs_per_prompt`` pairs, matching the i-th
    distinct good response with the i-th bad one (in sample order, or shortest
    good with longest bad under prefer_shorter), so pairs are deterministic.
    Prompts where every response is good (or every one bad) give no pair.
    """

    def examples(self, prompt, cands, rng, initial=None):
        t = self.config.threshold
        good = self.ranked([c for c in cands if c.score >= t]) if self.config.prefer_shorter else [c for c in cands if c.score >= t]
        bad = self.worst_first([c for c in cands if c.score < t]) if self.config.prefer_shorter else [c for c in cands if c.score < t]
        if not good:
            return [], "no correct response"
        if not bad:
            return [], "all responses correct"
        n = min(self.config.pairs_per_prompt, max(len(good), len(bad)))
        return [preference(prompt, good[i % len(good)], bad[i % len(bad)]) for i in range(n)], None


@register_pairing("best_vs_worst")
@dataclass
class BestVsWorst(Strategy):
    """The highest-scored response against the lowest (Self-Rewarding, SPPO); ties give no pair.

    With ``pairs_per_prompt`` > 1, the 2nd best against the 2nd worst and so on,
    while the chosen still scores strictly higher.
    """

    def examples(self, prompt, cands, rng, initial=None):
        best, worst = self.ranked(cands), self.worst_first(cands)
        pairs = []
        for i in range(min(self.config.pairs_per_prompt, len(cands) // 2)):
            if best[i].score <= worst[i].score:
                break
            pairs.append(preference(prompt, best[i], worst[i]))
        return pairs, None if pairs else "all responses scored the same"


@register_pairing("best_vs_random")
@dataclass
class BestVsRandom(Strategy):
    """The highest-scored response against randomly drawn lower-scored ones (seeded per round and prompt)."""

    def examples(self, prompt, cands, rng, initial=None):
        best = self.ranked(cands)[0]
        lower = [c for c in cands if c.score < best.score]
        if not lower:
            return [], "all responses scored the same"
        picks = rng.sample(lower, min(self.config.pairs_per_prompt, len(lower)))
        return [preference(prompt, best, r) for r in picks], None


@register_pairing("margin")
@dataclass
class Margin(Strategy):
    """Every pair whose scores differ by at least ``margin`` (largest gaps first, at most pairs_per_prompt)."""

    margin: float = 0.5
    """Smallest score difference that makes a pair; smaller differences count as ties and are dropped."""

    def __post_init__(self):
        super().__post_init__()
        if self.margin <= 0:
            raise ValueError(f"option margin must be > 0, got {self.margin}")

    def examples(self, prompt, cands, rng, initial=None):
        pairs = [(a, b) for a in cands for b in cands if a.score - b.score >= self.margin]
        if not pairs:
            return [], f"no two responses {self.margin} apart"
        tie = (lambda ab: ab[0].length - ab[1].length) if self.config.prefer_shorter else (lambda ab: 0)
        pairs.sort(key=lambda ab: (-(ab[0].score - ab[1].score), tie(ab)))
        return [preference(prompt, a, b) for a, b in pairs[: self.config.pairs_per_prompt]], None


@register_pairing("rso")
@dataclass
class RejectionSampling(Strategy):
    """RSO (Liu et al. 2023, "Statistical Rejection Sampling Improves Preference Optimization").

    Treats the K samples as draws from the policy and keeps a subsample
    distributed as the estimated optimal policy pi*(y) ∝ pi(y) exp(r(y)/beta):
    visit the candidates in random order and accept each with probability
    exp((r(y) - r_max) / beta), r_max the best remaining reward, until
    ``accept`` are accepted; sweep the remaining ones again while too few are
    (the procedure of the paper's reference code).
    The accepted responses are paired in acceptance order, (1st, 2nd),
    (3rd, 4th), ..., each labelled by its scores; ties give no pair.
    """

    beta: float = 0.5
    """Temperature of the optimal policy: small beta keeps only the best responses, large beta is uniform."""
    accept: int = 4
    """Responses to accept per prompt (RSO: 8 of 64)."""

    def __post_init__(self):
        super().__post_init__()
        if self.beta <= 0 or self.accept < 2:
            raise ValueError(f"options beta > 0 and accept >= 2 are required, got beta={self.beta}, accept={self.accept}")

    def accepted(self, cands: list[Candidate], rng: random.Random) -> list[Candidate]:
        """Sweeps over the remaining candidates in random order; each sweep measures against its best remaining reward."""
        remaining, out = list(cands), []
        while remaining and len(out) < self.accept:
            r_max = max(c.score for c in remaining)
            rng.shuffle(remaining)
            kept = []
            for c in remaining:
                if len(out) < self.accept and rng.random() < math.exp((c.score - r_max) / self.beta):
                    out.append(c)
                else:
                    kept.append(c)
            remaining = kept
        return out

    def examples(self, prompt, cands, rng, initial=None):
        chosen = self.accepted(cands, rng)
        pairs = []
        for a, b in zip(chosen[0::2], chosen[1::2]):
            if a.score != b.score:
                w, l = (a, b) if a.score > b.score else (b, a)
                pairs.append(preference(prompt, w, l))
        pairs = pairs[: self.config.pairs_per_prompt]
        return pairs, None if pairs else "accepted responses scored the same"


def bald(samples_a: list[float], samples_b: list[float]) -> float:
    """BALD of the pairwise estimate P(a beats b) = sigmoid(s_a - s_b) over S stochastic passes.

    H[mean_t p_t] - mean_t H[p_t] (binary entropies, nats): the part of the
    predictive uncertainty due to the judge's own uncertainty. 0 when all
    passes agree; at most log 2.
    """
    ps = [sigmoid(a - b) for a, b in zip(samples_a, samples_b)]

    def h(p: float) -> float:
        p = min(max(p, 1e-12), 1 - 1e-12)
        return -(p * math.log(p) + (1 - p) * math.log(1 - p))

    mean = sum(ps) / len(ps)
    return max(0.0, h(mean) - sum(h(p) for p in ps) / len(ps))


@register_pairing("upo")
@dataclass
class Uncertainty(Strategy):
    """UPO (Wang et al. 2024): sample pairs by the judge's certainty about them.

    Candidate pairs are all (better, worse) pairs, ties dropped. Each gets the
    BALD of P(better beats worse) across the judge's stochastic passes (a
    reward model's MC-dropout passes, or an ensemble's members); pairs are
    drawn without replacement with probability ∝ 1 - BALD/log 2 (``easy``,
    the paper's default) or ∝ BALD (``hard``).
    """

    mode: str = "easy"
    """'easy': prefer pairs the judge is sure about; 'hard': prefer uncertain ones."""

    def __post_init__(self):
        super().__post_init__()
        if self.mode not in ("easy", "hard"):
            raise ValueError(f"option mode must be 'easy' or 'hard', got {self.mode!r}")

    def examples(self, prompt, cands, rng, initial=None):
        if any(len(c.judgement.samples) < 2 for c in cands):
            raise ConfigError("pairing strategy 'upo' needs a judge with per-pass scores: a reward_model judge with "
                              "mc_dropout >= 2, or an ensemble")
        pairs = [(a, b) for a in cands for b in cands if a.score > b.score]
        if not pairs:
            return [], "all responses scored the same"
        uncertainty = [bald(a.judgement.samples, b.judgement.samples) / math.log(2) for a, b in pairs]
        weights = [(1 - u if self.mode == "easy" else u) + 1e-9 for u in uncertainty]
        out = []
        for _ in range(min(self.config.pairs_per_prompt, len(pairs))):
            i = rng.choices(range(len(pairs)), weights)[0]
            out.append(preference(prompt, *pairs[i]))
            weights[i] = 0.0
        return out, None


@register_pairing("anchored")
@dataclass
class Anchored(Strategy):
    """Temporal Self-Rewarding's anchored rejection (2025): the rejected response comes from the initial model.

    Chosen: the best of this round's responses. Rejected: the worst-judged of
    the initial model's responses to the prompt (round 1's samples, kept in the
    run directory), so the contrast does not shrink as the policy improves.
    In round 1 the two coincide with best-vs-worst.

    With ``future_guided``, the paper's second half: a look-ahead copy of the
    policy trains on these pairs, answers their prompts, and its best judged
    answer replaces a pair's chosen when it scores higher (see the loop's
    ``future_guided``).
    """

    uses_initial = True
    min_candidates = 1
    future_guided: bool = False
    """Replace chosen responses by a look-ahead model's better answers (costs one extra training and sampling pass)."""

    def look_ahead(self) -> bool:
        return self.future_guided

    def examples(self, prompt, cands, rng, initial=None):
        if not initial:
            return [], "no judged response of the initial model"
        best = self.ranked(cands)[0]
        worst = self.worst_first(initial)[0]
        if best.score <= worst.score:
            return [], "best response no better than the initial model's worst"
        return [preference(prompt, best, worst)], None


# ---------------------------------------------------------------- other shapes


@register_pairing("labelled")
@dataclass
class Labelled(Strategy):
    """Single responses labelled desirable (score >= threshold) or undesirable, for KTO.

    Up to ``pairs_per_prompt`` distinct responses of each label per prompt; a
    prompt whose responses are all good still contributes desirable examples.
    """

    data_shape = "unpaired"
    min_candidates = 1

    def examples(self, prompt, cands, rng, initial=None):
        t, n = self.config.threshold, self.config.pairs_per_prompt
        good = [c for c in cands if c.score >= t][:n]
        bad = [c for c in cands if c.score < t][:n]
        out = [LabelledResponse(prompt.prompt_id, c.idx, prompt.text, c.rollout.text, label, c.score, "", -1)
               for cs, label in ((good, True), (bad, False)) for c in cs]
        return out, None if out else "no responses"


@register_pairing("ranked")
@dataclass
class Ranked(Strategy):
    """A group of up to ``group_size`` distinct responses ordered by score, best first, for PRO and TPO.

    When more are available the group spans the ranking evenly (best and worst
    always included). Prompts whose responses all scored the same are skipped.
    """

    data_shape = "ranked"

    def examples(self, prompt, cands, rng, initial=None):
        ranked = self.ranked(cands)
        if len({c.score for c in ranked}) < 2:
            return [], "all responses scored the same"
        n = min(self.config.group_size, len(ranked))
        picks = sorted({round(i * (len(ranked) - 1) / (n - 1)) for i in range(n)})
        group = [ranked[i] for i in picks]
        return [RankedGroup(prompt.prompt_id, prompt.text, [c.idx for c in group], [c.rollout.text for c in group],
                            [c.score for c in group])], None


# ---------------------------------------------------------------- driver


def _assign_kl_partners(examples: list[LabelledResponse]) -> None:
    """Give each example another prompt's response (the next example with a different prompt, cyclically)."""
    n = len(examples)
    for i, e in enumerate(examples):
        partner = next((examples[(i + j) % n] for j in range(1, n) if examples[(i + j) % n].prompt_id != e.prompt_id),
                       examples[(i + 1) % n])
        e.kl_prompt_id, e.kl_sample_idx = partner.prompt_id, partner.sample_idx


def candidates(rollouts: list[Rollout], judgements: dict[int, Judgement], length_penalty: float = 0.0) -> list[Candidate]:
    """One prompt's judged responses, failed verdicts left out, duplicates dropped.

    Win rates come from the pairwise judge when it gave them, else from the
    scores of all K samples (duplicates included: they are draws of the policy).
    """
    ok = [r for r in rollouts if r.sample_idx in judgements and not judgements[r.sample_idx].failed]
    scores = {r.sample_idx: judgements[r.sample_idx].score - length_penalty * len(r.token_ids) for r in ok}
    estimated = win_rates(scores) if scores else {}
    cands = []
    for r in ok:
        j = judgements[r.sample_idx]
        cands.append(Candidate(r, j, scores[r.sample_idx], j.win_rate if j.win_rate is not None else estimated[r.sample_idx]))
    return distinct(cands)


def build_examples(strategy: Strategy, prompts: list[Prompt], rollouts: list[Rollout], judgements: list[Judgement],
                   seed: int = 0, initial: Optional[tuple[list[Rollout], list[Judgement]]] = None) -> PairingResult:
    """Apply strategy to every prompt. ``initial``: the initial model's judged rollouts (strategies that anchor on them)."""
    def group(rs: list[Rollout], js: list[Judgement]):
        by_prompt: dict[str, list[Rollout]] = {}
        for r in rs:
            by_prompt.setdefault(r.prompt_id, []).append(r)
        verdicts: dict[str, dict[int, Judgement]] = {}
        for j in js:
            verdicts.setdefault(j.prompt_id, {})[j.sample_idx] = j
        return by_prompt, verdicts

    by_prompt, verdicts = group(rollouts, judgements)
    first = group(*initial) if initial is not None else None
    penalty = strategy.config.length_penalty
    result = PairingResult(strategy.data_shape, [])
    result.failed_judgements = sum(j.failed for j in judgements)
    for p in prompts:
        cands = candidates(by_prompt.get(p.prompt_id, []), verdicts.get(p.prompt_id, {}), penalty)
        if not cands:
            result.skipped["judge failed on every response" if by_prompt.get(p.prompt_id) else "no responses"] += 1
            continue
        if len(cands) < strategy.min_candidates:
            result.skipped["fewer than two distinct judged responses"] += 1
            continue
        anchor = candidates(first[0].get(p.prompt_id, []), first[1].get(p.prompt_id, {}), penalty) if first else None
        rng = random.Random(f"{seed}/{p.prompt_id}")
        examples, reason = strategy.examples(p, cands, rng, anchor)
        result.examples.extend(examples)
        if reason:
            result.skipped[reason] += 1
    if strategy.data_shape == "unpaired" and result.examples:
        _assign_kl_partners(result.examples)
    return result


def build_strategy(config, data_shape: str) -> Strategy:
    """The configured strategy (with its options), or the default one for the loss's data shape."""
    name = config.strategy or DEFAULT_STRATEGY[data_shape]
    cls = PAIRING.get(name)
    if cls.data_shape != data_shape:
        raise ConfigError(f"pairing strategy {name!r} produces {cls.data_shape}, but the loss needs {data_shape}; "
                          f"use e.g. {DEFAULT_STRATEGY[data_shape]!r}")
    options = config.options() if hasattr(config, "options") else {}
    strategy = PAIRING.create(name, options, hint=" (and the shared pairing fields)")
    strategy.config = config
    return strategy
