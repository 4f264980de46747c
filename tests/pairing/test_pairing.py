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


def test_best_vs_worst_drops_ties_and_pairs_inward():
    prompts, rollouts, judgements = _data({"a": [0.2, 0.9, 0.5, 0.1], "b": [0.5, 0.5]})
    result = build_examples(_strategy(strategy="best_vs_worst", pairs_per_prompt=3), prompts, rollouts, judgements)
    assert [(p.chosen_idx, p.rejected_idx) for p in result.examples] == [(1, 3), (2, 0)]
    assert dict(result.skipped) == {"all responses scored the same": 1}


def test_best_vs_random_is_seeded_and_only_lower():
    prompts, rollouts, judgements = _data({"a": [0.2, 0.9, 0.5, 0.1, 0.9]})
    s = _strategy(strategy="best_vs_random", pairs_per_prompt=2)
    runs = [
        [(p.chosen_idx, p.rejected_idx) for p in build_examples(s, prompts, rollouts, judgements, seed=k).examples]
        for k in range(8)
    ]
    assert runs[0] == [
        (p.chosen_idx, p.rejected_idx) for p in build_examples(s, prompts, rollouts, judgements, seed=0).examples
    ]
    assert all(c == 1 and r in (0, 2, 3) for run in runs for c, r in run)  # never the tied best (4)
    assert len({tuple(run) for run in runs}) > 1  # the seed matters


def test_margin_pairs_largest_gaps_first():
    prompts, rollouts, judgements = _data({"a": [0.0, 1.0, 0.6, 0.2]})
    result = build_examples(
        _strategy(strategy="margin", margin=0.5, pairs_per_prompt=10), prompts, rollouts, judgements
    )
    assert [(p.chosen_idx, p.rejected_idx) for p in result.examples] == [(1, 0), (1, 3), (2, 0)]
    with pytest.raises(ConfigError, match="margin must be > 0"):
        _strategy(strategy="margin", margin=0)
    with pytest.raises(ConfigError, match="no option 'beta'"):
        _strategy(strategy="margin", beta=1)


def test_length_control():
    prompts, rollouts, judgements = _data({"a": [1, 1, 0, 0]})
    for r, n in zip(rollouts, [5, 2, 1, 7]):
        r.token_ids = list(range(100 * r.sample_idx, 100 * r.sample_idx + n))
    plain = build_examples(_strategy(strategy="best_vs_worst"), prompts, rollouts, judgements).examples[0]
    short = build_examples(
        _strategy(strategy="best_vs_worst", prefer_shorter=True), prompts, rollouts, judgements
    ).examples[0]
    assert (plain.chosen_idx, plain.rejected_idx) == (0, 2)
    assert (short.chosen_idx, short.rejected_idx) == (1, 3)  # shortest good, longest bad
    # a length penalty turns a long correct response into the worse one
    penal = build_examples(
        _strategy(strategy="best_vs_worst", length_penalty=0.2), prompts, rollouts, judgements
    ).examples[0]
    assert (penal.chosen_idx, penal.rejected_idx) == (1, 3) and penal.chosen_score == pytest.approx(1 - 0.4)


def test_rso_accepts_by_estimated_optimal_policy():
    from iterpo.pairing import Candidate
    from iterpo.pairing.rejection import RejectionSampling

    prompts, rollouts, judgements = _data({"a": [0.0, 1.0, 2.0, 3.0]})
    cands = [Candidate(r, j, j.score, 0.5) for r, j in zip(rollouts, judgements)]
    first = {beta: [0] * 4 for beta in (0.05, 1.0, 1000.0)}
    for beta in first:
        s = _strategy(strategy="rso", beta=beta, accept=2)
        assert isinstance(s, RejectionSampling)
        for k in range(3000):
            accepted = s.accepted(cands, __import__("random").Random(k))
            assert len(accepted) == 2 and len({c.idx for c in accepted}) == 2
            first[beta][accepted[0].idx] += 1
    assert first[0.05] == [0, 0, 0, 3000]  # small beta: the best is always accepted first
    assert first[1.0][3] > first[1.0][2] > first[1.0][1] > first[1.0][0] > 0  # better responses are kept more often
    assert [c / 3000 for c in first[1000.0]] == pytest.approx([0.25] * 4, abs=0.03)  # large beta: uniform
    # one sweep accepts each candidate with probability exp((r - r_max) / beta)
    s = _strategy(strategy="rso", beta=1.0, accept=4)
    hits = [0] * 4
    for k in range(3000):
        rng = __import__("random").Random(k)
        s.accept = 4
        remaining = list(cands)
        rng.shuffle(remaining)
        for c in remaining:
            hits[c.idx] += rng.random() < math.exp(c.score - 3.0)
    assert [h / 3000 for h in hits] == pytest.approx([math.exp(r - 3.0) for r in range(4)], abs=0.03)
    # accepted responses pair in acceptance order, labelled by score
    result = build_examples(
        _strategy(strategy="rso", beta=1000.0, accept=4, pairs_per_prompt=2), prompts, rollouts, judgements
    )
    assert len(result.examples) == 2 and all(p.chosen_score > p.rejected_score for p in result.examples)
    assert {p.chosen_idx for p in result.examples} | {p.rejected_idx for p in result.examples} == {0, 1, 2, 3}


def test_bald_and_upo_prefer_certain_pairs():
    from iterpo.pairing import bald

    assert bald([1.0, 1.0, 1.0], [0.0, 0.0, 0.0]) == pytest.approx(0.0, abs=1e-12)  # all passes agree
    assert 0 < bald([3.0, -3.0], [0.0, 0.0]) <= math.log(2)
    prompts, rollouts, judgements = _data({"a": [3.0, 2.0, 0.0]})
    judgements[0].samples, judgements[1].samples, judgements[2].samples = [3.0, 3.0], [2.0, 2.0], [4.0, -4.0]
    easy = [
        build_examples(_strategy(strategy="upo"), prompts, rollouts, judgements, seed=k).examples[0] for k in range(200)
    ]
    hard = [
        build_examples(_strategy(strategy="upo", mode="hard"), prompts, rollouts, judgements, seed=k).examples[0]
        for k in range(200)
    ]
    certain = lambda ps: sum((p.chosen_idx, p.rejected_idx) == (0, 1) for p in ps)  # noqa: E731  (the pair the passes agree on)
    # easy: P(pair) ∝ 1 - BALD/log 2, so the pair the passes agree on (weight 1) is drawn most
    w = [1.0, 1 - bald([3.0, 3.0], [4.0, -4.0]) / math.log(2), 1 - bald([2.0, 2.0], [4.0, -4.0]) / math.log(2)]
    assert certain(easy) / 200 == pytest.approx(w[0] / sum(w), abs=0.08) and certain(easy) > 200 / 3
    assert certain(hard) == 0  # hard: ∝ BALD, which is 0 for that pair
    judgements[2].samples = []
    with pytest.raises(ConfigError, match="per-pass scores"):
        build_examples(_strategy(strategy="upo"), prompts, rollouts, judgements)


def test_anchored_rejection_takes_the_initial_models_worst():
    prompts, rollouts, judgements = _data({"a": [0.5, 0.9, 0.6], "b": [0.2, 0.3]})
    first_r, first_j = _data({"a": [0.4, 0.1, 0.7], "b": [0.5, 0.9]})[1:]
    for r in first_r:
        r.round, r.token_ids = 1, [900 + r.sample_idx]
    result = build_examples(_strategy(strategy="anchored"), prompts, rollouts, judgements, initial=(first_r, first_j))
    (pair,) = result.examples
    assert (pair.prompt_id, pair.chosen_idx, pair.rejected_idx, pair.rejected_score) == ("a", 1, 1, 0.1)
    assert pair.rejected == "a-1" and dict(result.skipped) == {
        "best response no better than the initial model's worst": 1
    }


def test_failed_verdicts_are_left_out_and_counted():
    prompts, rollouts, judgements = _data({"a": [1, 0, 0], "b": [1, 0], "c": [1, 0]})
    judgements[1].failed = True
    judgements[3].failed = judgements[4].failed = True
    judgements[6].failed = True
    result = build_examples(_strategy(strategy="best_vs_worst"), prompts, rollouts, judgements)
    assert [(p.prompt_id, p.chosen_idx, p.rejected_idx) for p in result.examples] == [("a", 0, 2)]
    assert dict(result.skipped) == {"judge failed on every response": 1, "fewer than two distinct judged responses": 1}
    assert result.failed_judgements == 4
    # KTO's labelled responses need only one
    assert len(build_examples(_strategy("unpaired"), prompts, rollouts, judgements).examples) == 3


def test_pairwise_judgements_give_win_rates_and_soft_labels():
    prompts, rollouts, judgements = _data({"a": [0.75, 0.5, 0.25]})
    beats = [[math.nan, 0.8, 0.7], [0.2, math.nan, 0.55], [0.3, 0.45, math.nan]]
    for j, row in zip(judgements, beats):
        j.beats, j.win_rate = row, j.score
    (pair,) = build_examples(_strategy(strategy="best_vs_worst"), prompts, rollouts, judgements).examples
    assert pair.soft_label == 0.7 and (pair.chosen_win_rate, pair.rejected_win_rate) == (0.75, 0.25)


def test_all_samples_keeps_every_sample_with_its_reward_or_win_proportion():
    prompts, rollouts, judgements = _data({"a": [1, 0, 1, 0.5], "b": [1, 1]})
    rollouts[2].text, rollouts[2].token_ids = rollouts[0].text, list(rollouts[0].token_ids)
    result = build_examples(_strategy("scored"), prompts, rollouts, judgements)  # the duplicate stays
    (group,) = result.examples
    assert group.sample_idxs == [0, 1, 2, 3] and group.scores == [1, 0, 1, 0.5]
    assert dict(result.skipped) == {"all samples got the same reward": 1}
    kept = build_examples(_strategy("scored", keep_uniform=True), prompts, rollouts, judgements).examples
    assert [g.prompt_id for g in kept] == ["a", "b"]
    # win proportions: the share of the 3 other samples each beats, ties 1/2; a pairwise judge's own
    # comparison replaces the score comparison where it made one
    judgements[0].beats = [math.nan, 0.9, math.nan, math.nan]
    (group,) = build_examples(_strategy("scored", reward="win_proportion"), prompts, rollouts, judgements).examples
    assert group.scores == pytest.approx([(0.9 + 0.5 + 1) / 3, 0.0, (1 + 0.5 + 1) / 3, (1 + 0 + 0) / 3])
    with pytest.raises(ConfigError, match="reward"):
        _strategy("scored", reward="rank")


def test_demonstrations_correct_distinct_responses_or_the_best():
    prompts, rollouts, judgements = _data({"a": [1, 0, 1, 1, 1], "b": [0, 0.5], "c": [0.2, 0.9, 0.9]})
    rollouts[2].text, rollouts[2].token_ids = rollouts[0].text, list(rollouts[0].token_ids)  # one demonstration
    result = build_examples(_strategy("demonstrations", per_prompt=2), prompts, rollouts, judgements)
    assert [(g.prompt_id, g.sample_idxs) for g in result.examples] == [("a", [0, 3])]
    assert dict(result.skipped) == {"no response reached the threshold": 2}
    best = _strategy("demonstrations", strategy="best", threshold=0.5)
    result = build_examples(best, prompts, rollouts, judgements)
    assert [(g.prompt_id, g.sample_idxs) for g in result.examples] == [("a", [0]), ("b", [1]), ("c", [1])]
