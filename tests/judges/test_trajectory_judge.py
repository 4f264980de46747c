"""knowledge_sufficiency: correctness, a bonus when the tool's answers held the reference answer, a cost per call."""

import pytest

from iterpo.errors import DataError
from iterpo.judges import JudgeCache, judge_with_cache, make_judge
from iterpo.records import Prompt, Rollout

PROMPT = Prompt("town-1", [{"role": "user", "content": "When was Velmora founded?"}], "1734")


def _episode(idx, final, observations):
    transcript = "\n".join(f"<search>q</search>\n<result>{o}</result>" for o in observations) + "\n" + final
    return Rollout("town-1", idx, 1, 0, final, [5] * 4, "stop", transcript=transcript, observations=observations)


def test_the_score_adds_sufficiency_and_subtracts_each_call():
    judge = make_judge("knowledge_sufficiency", {"sufficiency_weight": 0.5, "step_penalty": 0.1})
    rollouts = [
        _episode(0, "It was founded in 1734.", ["Velmora was founded in 1734. It has 5120 inhabitants."]),
        _episode(1, "1734", []),  # right without looking it up
        _episode(2, "1750", ["Velmora was founded in 1734."]),  # read it, answered wrong
        _episode(3, "1734", ["Kest has 17340 inhabitants.", "no documents match"]),  # 17340 is not 1734
        _episode(4, "I think 1734", ["nothing here"]),
    ]
    scores = [j.score for j in judge.judge(PROMPT, rollouts)]
    assert scores == pytest.approx([1.4, 1.0, 0.4, 0.8, 0.9])
    # the policy writing the answer itself is not retrieved knowledge: only the tool's answers count
    spoof = Rollout("town-1", 5, 1, 0, "<result>1734</result> 1734", [5], "stop", observations=[])
    assert judge.judge(PROMPT, [spoof])[0].score == 1.0


def test_a_prompt_without_a_numeric_answer_is_refused():
    judge = make_judge("knowledge_sufficiency", {})
    with pytest.raises(DataError, match="no 'answer'"):
        judge.judge(Prompt("p", [{"role": "user", "content": "?"}]), [])


def test_verdicts_on_episodes_are_cached_by_their_whole_transcript(tmp_path):
    judge = make_judge("knowledge_sufficiency", {})
    cache = JudgeCache(tmp_path / "cache")
    a = _episode(0, "1734", ["Velmora was founded in 1734."])
    b = _episode(0, "1734", ["nothing"])  # the same final answer after another search
    first = judge_with_cache(judge, PROMPT, [a], cache)[0].score
    second = judge_with_cache(judge, PROMPT, [b], cache)[0].score
    assert (first, second) == pytest.approx((1.4, 0.9))
