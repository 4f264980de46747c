"""Verifiers for multiple-choice answers and for format constraints (in the spirit of IFEval)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from iterpo.errors import DataError
from iterpo.judges.base import Judge, register_judge
from iterpo.records import Judgement, Prompt, Rollout
from iterpo.tasks.constraints import CHECKS

# "The answer is (B)", "Answer: B", "**C**", "(D)" ... the last one written wins.
_CHOICE = re.compile(
    r"(?:answer\s*(?:is|:)?\s*[\(\[]?\s*([A-J])\b)|(?:[\(\[]([A-J])[\)\]])|(?:\b([A-J])\)(?!\w))|(?:^\s*\**([A-J])\**[\.\)]?\s*$)",
    re.IGNORECASE | re.MULTILINE,
)


def chosen_option(text: str) -> str | None:
    """The option letter a response commits to, or None."""
    matches = [next(g for g in m.groups() if g) for m in _CHOICE.finditer(text)]
    return matches[-1].upper() if matches else None


@register_judge("multiple_choice")
@dataclass
class MultipleChoice(Judge):
    """Score 1.0 when the response's chosen option letter equals the prompt's answer (e.g. "B")."""

    name = "multiple_choice"
    verifier = True

    def answer_of(self, text: str) -> str | None:
        return chosen_option(text)

    def judge(self, prompt: Prompt, rollouts: list[Rollout]) -> list[Judgement]:
        want = (prompt.answer or "").strip().strip("()").upper()
        if not re.fullmatch(r"[A-J]", want):
            raise DataError(
                f"prompt {prompt.prompt_id}: multiple_choice needs an answer letter A-J, got {prompt.answer!r}"
            )
        out = []
        for r in rollouts:
            got = chosen_option(r.text)
            out.append(Judgement(r.prompt_id, r.sample_idx, self.name, float(got == want), got or "no option"))
        return out


def parse_constraints(prompt: Prompt) -> dict:
    """The prompt's answer as a constraint mapping, validated: DataError names the prompt and the bad key."""
    try:
        spec = json.loads(prompt.answer or "")
    except ValueError:
        raise DataError(
            f"prompt {prompt.prompt_id}: the constraints judge needs 'answer' to be a JSON object of "
            f"constraints, got {prompt.answer!r}"
        ) from None
    if not isinstance(spec, dict) or not spec:
        raise DataError(f"prompt {prompt.prompt_id}: constraints must be a non-empty JSON object")
    for key, value in spec.items():
        if key not in CHECKS:
            raise DataError(f"prompt {prompt.prompt_id}: unknown constraint {key!r}; known: {', '.join(CHECKS)}")
        kind = CHECKS[key][1]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise DataError(f"prompt {prompt.prompt_id}: constraint {key!r} takes a {kind.__name__}, got {value!r}")
        if key == "regex":
            assert isinstance(value, str)  # the kind CHECKS gives 'regex', checked just above
            try:
                re.compile(value)
            except re.error as exc:
                raise DataError(
                    f"prompt {prompt.prompt_id}: constraint 'regex' is not a valid pattern: {exc}"
                ) from None
    return spec


@register_judge("constraints")
@dataclass
class Constraints(Judge):
    """Score = the fraction of the prompt's constraints the response meets (1.0 = all).

    The prompt's ``answer`` is a JSON object, e.g.
    {"max_words": 50, "must_include": ["budget"], "forbidden": ["very"], "json": false}.
    The detail lists the constraints that failed.
    """

    name = "constraints"
    verifier = True

    def judge(self, prompt: Prompt, rollouts: list[Rollout]) -> list[Judgement]:
        spec = parse_constraints(prompt)
        out = []
        for r in rollouts:
            failed = [k for k, v in spec.items() if not CHECKS[k][0](r.text, v)]
            score = 1.0 - len(failed) / len(spec)
            out.append(
                Judgement(
                    r.prompt_id,
                    r.sample_idx,
                    self.name,
                    score,
                    "all met" if not failed else "failed: " + ", ".join(failed),
                )
            )
        return out
