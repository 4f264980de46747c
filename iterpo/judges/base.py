"""The judge contract: (prompt, rollouts) -> one Judgement per rollout.

A judge is a dataclass registered by name; its fields are its options, given in
the run config beside ``name`` (``judge: {name: reward_model, path: ./rm}``).
Unknown or invalid options fail when the config loads. Heavy state (models,
connections) is created lazily, on first use, so checking a config is cheap.

Judges that compare responses with each other (pairwise judges, the policy
judging itself) read the round's context: the policy, the tokenizer, a seed
and the run's judgement cache (``setup``). Judges that score each response
alone are ``pointwise``: the driver caches their verdicts per (judge identity,
prompt, response) and calls them only on responses it has not seen.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from iterpo.errors import JudgeFailure
from iterpo.records import Judgement, Prompt, Rollout
from iterpo.registry import Registry


@dataclass
class JudgeContext:
    """What a judge may use in a round, beyond the prompt and responses."""

    round: int
    seed: int  # the run seed; judges derive their own seeds from it
    cache: Any  # JudgeCache: judges that cache their own units (comparisons) use it
    policy: Callable[[], Any] | None = None  # () -> the policy being judged (the model that sampled the round)
    tokenizer: Any = None
    system_prompt: str | None = None
    trained: Callable[[int, str], str | None] | None = None  # (round k, stage kind) -> the model such a stage of
    # the run trained in round k (a reward_model stage's reward model, an adversary stage's discriminator), or None


_QUOTED = re.compile(r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"")


@dataclass
class Tally:
    """How a judge fared in one stage: units judged (cached or asked) and units that failed, by reason."""

    unit: str = "responses"  # what a unit is: "responses" (pointwise judges) or "comparisons" (pairwise ones)
    units: int = 0
    failed: int = 0
    reasons: Counter = field(default_factory=Counter)

    def add(self, units: int, failures: list[str]) -> None:
        self.units += units
        self.failed += len(failures)
        # Reasons count by kind: quoted replies (which differ every time) are elided.
        self.reasons.update(_QUOTED.sub("'...'", why)[:120] for why in failures)


class Judge:
    name: ClassVar[str] = "judge"
    pointwise: ClassVar[bool] = True  # a response's verdict depends only on (prompt, response)
    verifier: ClassVar[bool] = False  # checks against the prompt's reference answer (usable as the eval metric)
    uses_policy: ClassVar[bool] = False  # judges with the policy itself (its identity changes every round)
    local: ClassVar[bool] = False  # judges with what the run itself made (e.g. its reward models): never on workers
    explains: ClassVar[bool] = False  # writes its reasoning: Judgement.rationale (pointwise) or .rationales (pairwise)
    volatile_options: ClassVar[tuple[str, ...]] = ()  # options that do not change verdicts (timeouts, concurrency)
    unit: ClassVar[str] = "responses"  # what one verdict judges, for failure counts ("comparisons" for pairwise judges)
    context: JudgeContext | None = None

    def check(self) -> None:
        """Fail early (before a run starts) when this machine cannot run the judge; default: nothing to check."""

    def check_prompt(self, prompt: Prompt) -> None:
        """Raise DataError when this judge cannot judge responses to prompt: a verifier reads its reference
        answer before any response, so judging no response checks the answer (missing, no number, bad spec)."""
        if self.verifier:
            self.judge(prompt, [])

    def setup(self, context: JudgeContext) -> None:
        """Called before a round's judging with that round's context."""
        self.context = context

    def identity(self) -> str:
        """Names the judge and every option that can change a verdict: the cache key's first part."""
        options: dict[str, Any] = (
            {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in self.volatile_options}
            if dataclasses.is_dataclass(self)
            else {}
        )
        ident = f"{self.name}:{json.dumps(options, sort_keys=True, default=str)}"
        if self.uses_policy and self.context is not None:
            ident += f"@policy-after-round-{self.context.round - 1}"
        return ident

    def judge(self, prompt: Prompt, rollouts: list[Rollout]) -> list[Judgement]:  # pragma: no cover
        raise NotImplementedError

    def answer_of(self, text: str) -> str | None:
        """The final answer a verifier reads in a response (what it compares with the reference answer), so that
        responses can vote on a question without one; None: it reads none, or the judge does not extract one."""
        return None

    def tally(self) -> Tally:
        """This stage's counts (judge_with_cache keeps them for pointwise judges; others keep their own)."""
        if "_tally" not in self.__dict__:
            self._tally = Tally(self.unit)
        return self._tally

    def reset_tally(self) -> None:
        self.__dict__.pop("_tally", None)

    def outage(self) -> str | None:
        """Why the judge cannot be asked at all any more (e.g. its endpoint is down), or None while it works."""
        return None


JUDGES: Registry[type[Judge]] = Registry("judge")
register_judge = JUDGES.register


def make_judge(name: str, options: dict) -> Judge:
    """The judge ``name`` with ``options``; ConfigError names an unknown or invalid option."""
    return JUDGES.create(name, options)


def build_judge(config) -> Judge:
    """The judge a JudgeSection (or any object with ``name`` and ``options()``) describes."""
    options = config.options() if hasattr(config, "options") else {}
    return make_judge(config.name, options)


def prompt_key(prompt: Prompt) -> str:
    """Everything about a prompt a judge may read: its messages and reference answer."""
    return json.dumps([prompt.messages, prompt.answer], sort_keys=True)


def cache_key(*parts: str) -> str:
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()


def check_model_dir_option(path: str) -> None:
    """ValueError unless the option path names a local directory (a judge's model)."""
    if not path or not Path(path).is_dir():
        raise ValueError(f"option path must be a local model directory, got {path!r}")


def check_range(name: str, value: float, lo: float, hi: float) -> None:
    if not lo <= value <= hi:
        raise ValueError(f"option {name} must lie in [{lo}, {hi}], got {value!r}")


Ask = Callable[[Prompt, list[Rollout]], list[Judgement]]  # judges responses to a prompt: Judge.judge, or elsewhere


def _keys(judge: Judge, prompt: Prompt, rollouts: list[Rollout]) -> dict[int, str]:
    ident, pkey = judge.identity(), prompt_key(prompt)
    # an episode's verdict may read its whole transcript, not only the final answer
    return {
        r.sample_idx: cache_key(ident, pkey, r.text)
        if r.transcript is None
        else cache_key(ident, pkey, r.text, r.transcript)
        for r in rollouts
    }


def uncached(judge: Judge, prompt: Prompt, rollouts: list[Rollout], cache: Any) -> list[Rollout]:
    """The rollouts a pointwise judge would be asked about: those without a cached verdict (nothing is counted)."""
    keys = _keys(judge, prompt, rollouts)
    return [r for r in rollouts if cache.peek(keys[r.sample_idx]) is None]


def judge_with_cache(
    judge: Judge, prompt: Prompt, rollouts: list[Rollout], cache: Any, ask: Ask | None = None
) -> list[Judgement]:
    """The judge's verdicts on rollouts, asking it only about responses the cache has not seen.

    Pointwise verdicts are cached here by (identity, prompt, response text);
    other judges cache their own units (e.g. one comparison) through their context.
    ``ask`` stands for judge.judge (e.g. verdicts already obtained on a cluster's workers).
    """
    if not judge.pointwise:
        return (ask or judge.judge)(prompt, rollouts)
    keys = _keys(judge, prompt, rollouts)
    found: dict[int, Judgement] = {}
    for r in rollouts:
        hit = cache.get(keys[r.sample_idx])
        if hit is not None:
            found[r.sample_idx] = Judgement(r.prompt_id, r.sample_idx, judge.name, **hit)
    todo = [r for r in rollouts if r.sample_idx not in found]
    if todo:
        for j in (ask or judge.judge)(prompt, todo):
            found[j.sample_idx] = j
            if not j.failed:
                value = {"score": j.score, "detail": j.detail, "uncertainty": j.uncertainty, "samples": list(j.samples)}
                if j.rationale is not None:
                    value["rationale"] = j.rationale
                cache.put(keys[j.sample_idx], value)
    verdicts = [found[r.sample_idx] for r in rollouts]
    judge.tally().add(len(verdicts), [j.detail for j in verdicts if j.failed])
    return verdicts


def judge_all(
    judge: Judge,
    prompts: list[Prompt],
    rollouts: dict[str, list[Rollout]],
    cache,
    flush_every: int,
    max_failed_share: float,
    advance: Callable[[int], None] = lambda n: None,
    ask: Ask | None = None,
) -> list[Judgement]:
    """Every prompt's rollouts judged through the cache, flushed every ``flush_every`` prompts and at the end.

    Raises JudgeFailure, after saving every verdict obtained so far, when the
    judge reports an outage (it stops at once: asking on would only fail), or
    when more than ``max_failed_share`` of the stage's units failed. Isolated
    failures below that share are returned as failed verdicts, as before.
    """
    judge.reset_tally()
    verdicts: list[Judgement] = []
    try:
        for n, p in enumerate(prompts, start=1):
            verdicts += judge_with_cache(judge, p, rollouts[p.prompt_id], cache, ask)
            advance(1)
            if judge.outage():
                raise JudgeFailure(
                    f"judge {judge.name} stopped answering after {n} of {len(prompts)} prompts: "
                    f"{judge.outage()}. Every verdict obtained so far is saved; a resume asks "
                    "only for the ones still missing"
                )
            if n % flush_every == 0:
                cache.flush()
    finally:
        cache.flush()
    t = judge.tally()
    if t.units and t.failed > max_failed_share * t.units:
        reasons = "; ".join(f"{why} ({count})" for why, count in t.reasons.most_common(3))
        raise JudgeFailure(
            f"judge {judge.name}: {t.failed} of {t.units} {t.unit} failed ({t.failed / t.units:.0%}, "
            f"above judge.max_failed_share {max_failed_share:g}); most common: {reasons}. The "
            "verdicts that succeeded are saved and a resume asks again only the failed ones; fix the "
            "judge, or raise judge.max_failed_share to go on without them"
        )
    return verdicts
