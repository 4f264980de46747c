import math

import pytest

from iterpo.config import PairingSection
from iterpo.errors import ConfigError
from iterpo.pairing import build_examples, build_strategy, win_rates
from iterpo.records import Judgement, Prompt, Rollout


def _data(scores_by_prompt):
    prompts, rollouts, judgements = [], [], []
    for pid, scores in scores_by_prompt.items():
        prompts.append(Prompt(pid, [{"role": "user", "content": pid}], "1"))
        for i, s in enumerate(scores):
            rollouts.append(Rollout(pid, i, 1, 0, f"{pid}-{i}", [i + 1], "stop"))
            judgements.append(Judgement(pid, i, "j", s, ""))
    return prompts, rollouts, judgements


def _strategy(shape="pairs", **fields):
    return build_strategy(PairingSection(**fields), shape)


def test_correct_chosen_incorrect_rejected_and_skips_counted():
    prompts, rollouts, judgements = _data({"a": [0, 1, 0, 1], "b": [1, 1, 1, 1], "c": [0, 0, 0, 0], "d": [0, 0, 1, 0]})
    result = build_examples(_strategy(), prompts, rollouts, judgements)
    pairs = [(p.prompt_id, p.chosen_idx, p.rejected_idx) for p in result.examples]
    assert pairs == [("a", 1, 0), ("d", 2, 0)]
    assert dict(result.skipped) == {"all responses correct": 1, "no correct response": 1}
    assert all(p.chosen_score == 1.0 and p.rejected_score == 0.0 for p in result.examples)
    sig = 1 / (1 + math.exp(-1))
    a = result.examples[0]
    assert a.soft_label == pytest.approx(sig)
    # two correct and two wrong among K = 4: a correct one beats the sample with (0.5 + 0.5 + sig + sig) / 4
    assert a.chosen_win_rate == pytest.approx((1 + 2 * sig) / 4)
    assert a.rejected_win_rate == pytest.approx((1 + 2 * (1 - sig)) / 4)


def test_win_rates_average_to_one_half():
    rates = win_rates({0: 0.3, 1: 2.0, 2: -1.0})
    assert sum(rates.values()) / 3 == pytest.approx(0.5)
    assert rates[1] > rates[0] > rates[2]


def test_several_pairs_per_prompt_and_duplicates_dropped():
    prompts, rollouts, judgements = _data({"a": [1, 0, 1, 0]})
    rollouts[3].token_ids = list(rollouts[1].token_ids)  # sample 3 repeats sample 1 exactly
    result = build_examples(_strategy(pairs_per_prompt=4), prompts, rollouts, judgements)
    assert [(p.chosen_idx, p.rejected_idx) for p in result.examples] == [(0, 1), (2, 1)]


def test_labelled_responses_with_mismatched_kl_partners():
    prompts, rollouts, judgements = _data({"a": [1, 0, 1], "b": [1, 1, 1], "c": [0, 0, 0]})
    result = build_examples(_strategy("unpaired", pairs_per_prompt=1), prompts, rollouts, judgements)
    got = [(x.prompt_id, x.sample_idx, x.label) for x in result.examples]
    assert got == [("a", 0, True), ("a", 1, False), ("b", 0, True), ("c", 0, False)]
    assert all(x.kl_prompt_id != x.prompt_id for x in result.examples)  # mismatched pairs only
    assert [(x.kl_prompt_id, x.kl_sample_idx) for x in result.examples][:2] == [("b", 0), ("b", 0)]


def test_ranked_groups_span_the_ranking():
    prompts, rollouts, judgements = _data({"a": [0.1, 0.9, 0.5, 0.7, 0.3, 0.2], "b": [1, 1, 1]})
    result = build_examples(_strategy("ranked", group_size=3), prompts, rollouts, judgements)
    (group,) = result.examples
    assert group.sample_idxs == [1, 2, 0] and group.scores == [0.9, 0.5, 0.1]  # best, middle, worst
    assert dict(result.skipped) == {"all responses scored the same": 1}


def test_strategy_must_fit_the_loss_data_shape():
    with pytest.raises(ConfigError, match="produces pairs, but the loss needs ranked"):
        _strategy("ranked", strategy="correct_vs_incorrect")
