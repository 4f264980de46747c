from decimal import Decimal

import pytest

from iterpo.config import JudgeSection
from iterpo.errors import DataError
from iterpo.judges import build_judge
from iterpo.judges.verifiers import last_number
from iterpo.records import Prompt, Rollout


@pytest.mark.parametrize(
    "text, number",
    [
        ("85", Decimal(85)),
        ("47 + 38 = 85", Decimal(85)),
        ("The answer is 1,234.", Decimal(1234)),
        ("It is -7", Decimal(-7)),
        ("3.50 dollars", Decimal("3.50")),
        ("no digits here", None),
        ("v2 is 12 then 13.", Decimal(13)),
    ],
)
def test_last_number(text, number):
    assert last_number(text) == number


def test_exact_answer_scores_last_number():
    judge = build_judge(JudgeSection(name="exact_answer"))
    prompt = Prompt("p", [{"role": "user", "content": "What is 47 + 38?"}], "85")
    rollouts = [
        Rollout("p", i, 1, 0, t, [1], "stop") for i, t in enumerate(["85", "47 + 38 = 85.", "85 or 86", "none"])
    ]
    scores = [j.score for j in judge.judge(prompt, rollouts)]
    assert scores == [1.0, 1.0, 0.0, 0.0]


def test_exact_answer_needs_an_answer():
    judge = build_judge(JudgeSection(name="exact_answer"))
    with pytest.raises(DataError, match="no 'answer'"):
        judge.judge(Prompt("p", [{"role": "user", "content": "hi"}]), [])
