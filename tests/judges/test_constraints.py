import json

import pytest

from iterpo.config import JudgeSection
from iterpo.errors import DataError
from iterpo.judges import build_judge
from iterpo.judges.constraints import chosen_option
from iterpo.records import Prompt, Rollout


def _judge(name, answer, texts):
    prompt = Prompt("p", [{"role": "user", "content": "q"}], answer)
    rollouts = [Rollout("p", i, 1, 0, t, [1], "stop") for i, t in enumerate(texts)]
    return build_judge(JudgeSection(name=name)).judge(prompt, rollouts)


def test_chosen_option_reads_the_committed_letter():
    assert chosen_option("I think the answer is (B).") == "B"
    assert chosen_option("Answer: c") == "C"
    assert chosen_option("A) is wrong because... so (D)") == "D"
    assert chosen_option("**B**") == "B"
    assert chosen_option("No idea.") is None


def test_multiple_choice_scores_and_rejects_bad_answers():
    got = _judge("multiple_choice", "B", ["The answer is B.", "(C)", "hmm"])
    assert [j.score for j in got] == [1.0, 0.0, 0.0] and got[2].detail == "no option"
    with pytest.raises(DataError, match="letter A-J"):
        _judge("multiple_choice", "42", ["x"])


def test_constraints_score_is_the_fraction_met_and_names_the_failures():
    spec = json.dumps({"max_words": 5, "must_include": ["budget"], "forbidden": ["very"], "json": False})
    got = _judge("constraints", spec, ["The budget is fine.", "A very long answer about the budget here", "{}"])
    assert got[0].score == 1.0 and got[0].detail == "all met"
    assert got[1].score == pytest.approx(0.5) and got[1].detail == "failed: max_words, forbidden"
    assert got[2].score == pytest.approx(0.5) and "must_include" in got[2].detail and "json" in got[2].detail
    ok_json = _judge("constraints", json.dumps({"json": True}), ['```json\n{"a": 1}\n```', "{a: 1}"])
    assert [j.score for j in ok_json] == [1.0, 0.0]


@pytest.mark.parametrize(
    "answer,message",
    [
        ("not json", "JSON object"),
        ("{}", "non-empty"),
        ('{"max_lines": 3}', "unknown constraint 'max_lines'"),
        ('{"max_words": "five"}', "takes a int"),
        ('{"regex": "("}', "not a valid pattern"),
    ],
)
def test_bad_constraint_specs_fail_with_the_reason(answer, message):
    with pytest.raises(DataError, match=message):
        _judge("constraints", answer, ["x"])
