"""Verifiers: judges that check a response against the prompt's reference answer."""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

from iterpo.errors import DataError
from iterpo.judges.base import Judge, register_judge
from iterpo.records import Judgement, Prompt, Rollout

# A number: optional sign, digits with optional thousands commas, optional decimals.
_NUMBER = re.compile(r"(?<![\w.])-?\d{1,3}(?:,\d{3})+(?:\.\d+)?|(?<![\w.])-?\d+(?:\.\d+)?")


def last_number(text: str) -> Decimal | None:
    """The last number written in text ("1,234", "-7", "3.50"), or None."""
    matches = _NUMBER.findall(text)
    if not matches:
        return None
    try:
        return Decimal(matches[-1].replace(",", ""))
    except InvalidOperation:  # pragma: no cover - the pattern only admits valid numbers
        return None


@register_judge("exact_answer")
@dataclass
class ExactAnswer(Judge):
    """Score 1.0 when the last number in the response equals the reference answer, else 0.0."""

    name = "exact_answer"
    verifier = True

    def answer_of(self, text: str) -> str | None:
        got = last_number(text)
        return None if got is None else str(got)

    def judge(self, prompt: Prompt, rollouts: list[Rollout]) -> list[Judgement]:
        if prompt.answer is None:
            raise DataError(f"prompt {prompt.prompt_id} has no 'answer', which the exact_answer judge needs")
        expected = last_number(prompt.answer)
        if expected is None:
            raise DataError(f"prompt {prompt.prompt_id}: answer {prompt.answer!r} holds no number")
        out = []
        for r in rollouts:
            got = last_number(r.text)
            if got is None:
                score, detail = 0.0, "no number"
            else:
                score, detail = float(got == expected), f"{got}"
            out.append(Judgement(r.prompt_id, r.sample_idx, self.name, score, detail))
        return out
