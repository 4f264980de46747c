"""Preference construction: judged rollouts -> training examples of the shape the loss needs.

A strategy sees one prompt's judged responses (``Candidate``s, failed verdicts
left out) and returns its examples (pairs, labelled single responses, or a
ranked group), or a reason why the prompt gave none; the reasons are counted
and reported every round. Strategies are dataclasses registered by name: their
fields are options given beside ``strategy`` in the config's pairing section.

The options every strategy shares (pairs_per_prompt, threshold, group_size,
length_penalty, prefer_shorter) live in PairingSection.

This module holds the contract and the helpers strategies share; each family
of strategies has its own module, and build.py applies one to a round.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

from iterpo.records import Judgement, LabelledResponse, Preference, Prompt, RankedGroup, Rollout
from iterpo.registry import Registry

if TYPE_CHECKING:
    from iterpo.config import PairingSection

Example = Preference | LabelledResponse | RankedGroup  # one training example, of one of the data shapes

# the scored and demonstrations shapes store RankedGroup records too: a prompt's responses with their rewards
RECORD_TYPE = {
    "pairs": Preference,
    "unpaired": LabelledResponse,
    "ranked": RankedGroup,
    "scored": RankedGroup,
    "demonstrations": RankedGroup,
}
DEFAULT_STRATEGY = {
    "pairs": "correct_vs_incorrect",
    "unpaired": "labelled",
    "ranked": "ranked",
    "scored": "all_samples",
    "demonstrations": "correct",
}


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
    def source(self) -> str:
        return self.rollout.source

    @property
    def length(self) -> int:
        return self.rollout.policy_tokens


@dataclass
class PairingResult:
    data_shape: str
    examples: list[Example]  # Preference, LabelledResponse or RankedGroup records
    skipped: Counter[str] = field(default_factory=Counter)  # reason -> number of prompts
    failed_judgements: int = 0  # responses left out because the judge failed on them
    without_rationale: int = 0  # pairing.rationale: pairs whose judge gave no written reason


@dataclass
class Strategy:
    data_shape: ClassVar[str] = "pairs"
    uses_initial: ClassVar[bool] = False  # needs the initial model's judged responses (anchored rejection)
    min_candidates: ClassVar[int] = 2  # judged responses a prompt needs before the strategy looks at it
    keeps_duplicates: ClassVar[bool] = False  # sees every sample, repeated responses included (estimators)

    def __post_init__(self) -> None:
        self.config: PairingSection | None = None  # set by build_strategy

    def look_ahead(self) -> bool:
        """True when the loop should improve the chosen responses with a look-ahead model (future-guided chosen)."""
        return False

    def examples(
        self, prompt: Prompt, cands: list[Candidate], rng: random.Random, initial: list[Candidate] | None = None
    ) -> tuple[list[Example], str | None]:
        raise NotImplementedError  # pragma: no cover

    # ---- helpers shared by the strategies

    def shared(self) -> PairingSection:
        """The pairing section's shared options; build_strategy sets them before the strategy is used."""
        if self.config is None:
            raise RuntimeError(f"pairing strategy {type(self).__name__} has no config: build it with build_strategy")
        return self.config

    def ranked(self, cands: list[Candidate]) -> list[Candidate]:
        """Best first; ties keep sample order, or put shorter responses first with prefer_shorter."""
        if self.shared().prefer_shorter:
            return sorted(cands, key=lambda c: (-c.score, c.length))
        return sorted(cands, key=lambda c: -c.score)

    def worst_first(self, cands: list[Candidate]) -> list[Candidate]:
        """Worst first; ties keep sample order, or put longer responses first with prefer_shorter."""
        if self.shared().prefer_shorter:
            return sorted(cands, key=lambda c: (c.score, -c.length))
        return sorted(cands, key=lambda c: c.score)


PAIRING: Registry[type[Strategy]] = Registry("pairing strategy")
register_pairing = PAIRING.register


def scored_apart(rollouts: list[Rollout], score: dict[tuple[str, int], float]) -> list[tuple[Rollout, Rollout]]:
    """Every (higher, lower) pair of one prompt's responses that score[(prompt_id, sample_idx)] sets apart, in
    sample order: each response with each one scored lower; responses without a score are left out. Four
    samples with one scored higher give three pairs."""
    judged = sorted((x for x in rollouts if (x.prompt_id, x.sample_idx) in score), key=lambda x: x.sample_idx)
    values = [score[(x.prompt_id, x.sample_idx)] for x in judged]
    return [(w, lo) for w, sw in zip(judged, values) for lo, sl in zip(judged, values) if sw > sl]


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def win_rates(scores: dict[int, float]) -> dict[int, float]:
    """P(y_i beats the sampling policy) ≈ mean over the K samples j of sigmoid(s_i - s_j), self included.

    SPPO's estimate from PairRM scores (Wu et al. 2024, Self-Play Preference Optimization, section 3:
    the win rate of a response against the K samples of its prompt); with verifier scores
    in {0, 1} a correct response gets between 0.5 and 0.73. Pairwise judges
    supply their own win rates, from direct comparisons.
    """
    values = list(scores.values())
    return {i: sum(sigmoid(s - t) for t in values) / len(values) for i, s in scores.items()}


def preference(prompt: Prompt, chosen: Candidate, rejected: Candidate) -> Preference:
    """A pair record; the soft label is the pairwise judge's P(chosen beats rejected) when it compared the two
    (responses of one source, the same round), else sigmoid of their score difference."""
    beats = chosen.judgement.beats if chosen.source == rejected.source else []
    p = beats[rejected.idx] if rejected.idx < len(beats) and not math.isnan(beats[rejected.idx]) else None
    soft = p if p is not None else sigmoid(chosen.score - rejected.score)
    return Preference(
        prompt.prompt_id,
        chosen.idx,
        rejected.idx,
        prompt.text,
        chosen.rollout.text,
        rejected.rollout.text,
        chosen.score,
        rejected.score,
        soft,
        chosen.win_rate,
        rejected.win_rate,
        chosen_source=chosen.source,
        rejected_source=rejected.source,
    )


def distinct(cands: list[Candidate]) -> list[Candidate]:
    """Drop responses whose token ids repeat an earlier one (identical responses add nothing)."""
    seen, out = set(), []
    for c in cands:
        key = tuple(c.rollout.token_ids)
        if key not in seen:
            seen.add(key)
            out.append(c)
    return out
