from iterpo.pairing import CorrectVsIncorrect, build_pairs
from iterpo.records import Judgement, Prompt, Rollout


def _data(scores_by_prompt):
    prompts, rollouts, judgements = [], [], []
    for pid, scores in scores_by_prompt.items():
        prompts.append(Prompt(pid, [{"role": "user", "content": pid}], "1"))
        for i, s in enumerate(scores):
            rollouts.append(Rollout(pid, i, 1, 0, f"{pid}-{i}", [i + 1], "stop"))
            judgements.append(Judgement(pid, i, "j", s, ""))
    return prompts, rollouts, judgements


def test_correct_chosen_incorrect_rejected_and_skips_counted():
    prompts, rollouts, judgements = _data({"a": [0, 1, 0, 1], "b": [1, 1, 1, 1], "c": [0, 0, 0, 0], "d": [0, 0, 1, 0]})
    result = build_pairs(CorrectVsIncorrect(pairs_per_prompt=1), prompts, rollouts, judgements)
    pairs = [(p.prompt_id, p.chosen_idx, p.rejected_idx) for p in result.preferences]
    assert pairs == [("a", 1, 0), ("d", 2, 0)]
    assert dict(result.skipped) == {"all responses correct": 1, "no correct response": 1}
    assert all(p.chosen_score == 1.0 and p.rejected_score == 0.0 for p in result.preferences)


def test_several_pairs_per_prompt_and_duplicates_dropped():
    prompts, rollouts, judgements = _data({"a": [1, 0, 1, 0]})
    rollouts[3].token_ids = list(rollouts[1].token_ids)  # sample 3 repeats sample 1 exactly
    result = build_pairs(CorrectVsIncorrect(pairs_per_prompt=4), prompts, rollouts, judgements)
    assert [(p.chosen_idx, p.rejected_idx) for p in result.preferences] == [(0, 1), (2, 1)]
