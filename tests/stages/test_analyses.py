"""The eval stage's per-round analyses: the formulas against hand-computed values, and a run's figures against
the same figures recomputed from its saved checkpoints and files."""

import json
import math
import random

import pytest
import torch

from iterpo import metrics
from iterpo.config import Config, TaskSection
from iterpo.models.loading import load_model
from iterpo.models.logprobs import score_responses
from iterpo.records import Judgement, Rollout, from_table
from iterpo.tasks.arithmetic import TEMPLATES, Arithmetic

from helpers import run_config, tiny_config

LOGP_W, LOGP_L = [-1.0, -5.0, -3.0], [-2.0, -4.0, -3.0]  # policy: ranks pair 0 right, pair 1 wrong, pair 2 a tie
REF_W, REF_L = [-3.0, -2.0, -10.0], [-1.0, -2.0, -1.0]  # reference: ranks pairs 0 and 2 wrong, pair 1 a tie
P = [0.75, 0.5, 1.0]  # the pairs' preference probabilities


def test_ranking_accuracy_counts_a_tie_as_wrong():
    assert metrics.ranking_accuracy(LOGP_W, LOGP_L) == pytest.approx(1 / 3)
    assert metrics.ranking_accuracy([], []) is None


def test_idealized_ranking_accuracy_by_hand():
    # pair 0: -3 + 1 + logit(0.75)/beta = -2 + ln(3)/beta: > 0 at beta 0.5 (0.197), < 0 at beta 1 (-0.901)
    # pair 1: 0 + logit(0.5)/beta = 0, not > 0; pair 2: p = 1, always right whatever the reference says
    assert metrics.idealized_ranking_accuracy(REF_W, REF_L, P, beta=0.5) == pytest.approx(2 / 3)
    assert metrics.idealized_ranking_accuracy(REF_W, REF_L, P, beta=1.0) == pytest.approx(1 / 3)
    assert metrics.idealized_ranking_accuracy([0.0], [0.0], [0.0], beta=1.0) == 0.0  # p = 0: never ranked first
    with pytest.raises(ValueError, match="beta"):
        metrics.idealized_ranking_accuracy(REF_W, REF_L, P, beta=0.0)


def test_implicit_reward_accuracy_by_hand():
    # pair 0: (-1 + 3) - (-2 + 1) = 3 > 0; pair 1: (-5 + 2) - (-4 + 2) = -1; pair 2: (-3 + 10) - (-3 + 1) = 9
    assert metrics.implicit_reward_accuracy(LOGP_W, LOGP_L, REF_W, REF_L) == pytest.approx(2 / 3)


def test_kl_estimate_is_the_mean_log_ratio_and_converges_to_the_kl():
    assert metrics.kl_estimate([-1.0, -2.0], [-1.5, -1.0]) == pytest.approx(-0.25)
    pi, q = [0.7, 0.2, 0.1], [0.4, 0.4, 0.2]
    exact = sum(a * math.log(a / b) for a, b in zip(pi, q))
    rng = random.Random(0)
    ys = rng.choices(range(3), weights=pi, k=40_000)
    estimate = metrics.kl_estimate([math.log(pi[y]) for y in ys], [math.log(q[y]) for y in ys])
    assert estimate == pytest.approx(exact, abs=0.01)


def test_distinct_n_pools_the_responses_ngrams():
    assert metrics.distinct_n([[1, 2, 1, 2], [1, 2]], 1) == pytest.approx(2 / 6)
    assert metrics.distinct_n([[1, 2, 1, 2], [1, 2]], 2) == pytest.approx(2 / 4)
    assert metrics.distinct_n([[1]], 2) is None


def test_arithmetic_shifted_prompts_are_the_held_out_questions_in_unseen_phrasings():
    task = Arithmetic(TaskSection(name="arithmetic", train_size=20, eval_size=30), seed=0)
    shifted, held_out = task.shifted_prompts(), task.eval_prompts()
    assert len(shifted) == len(held_out) and len({p.prompt_id for p in shifted}) == len(shifted)
    trained = [t.split("{a}")[0] for t in TEMPLATES]
    for s, e in zip(shifted, held_out):
        assert s.answer == e.answer and task.problem_key(s.text) == task.problem_key(e.text)
        assert s.text != e.text and not any(s.text.startswith(t) for t in trained if t)
    assert shifted == task.shifted_prompts()  # fixed: the same for every run


def _eval(run_dir, r):
    return json.loads((run_dir / f"round-{r:03d}" / "eval.json").read_text())


@pytest.fixture(scope="module")
def analysed_run(tiny_model_dir, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("analysed") / "run"
    cfg = tiny_config(tiny_model_dir, run_dir, **{"judge.name": "parity_verifier", "eval.analyses": True})
    cfg["eval"].update(pair_samples=4, kl_samples=2)
    config = Config(**cfg)
    run_config(config)
    return run_dir, config


def test_a_rounds_figures_equal_those_recomputed_from_its_checkpoints(analysed_run, tiny_model_dir, tokenizer):
    run_dir, config = analysed_run
    from iterpo.io import read_parquet

    rollouts = from_table(read_parquet(run_dir / "round-000" / "heldout_rollouts.parquet"), Rollout)
    verdicts = from_table(read_parquet(run_dir / "round-000" / "heldout_judgements.parquet"), Judgement)
    score = {(j.prompt_id, j.sample_idx): j.score for j in verdicts}
    assert {x.source for x in rollouts} == {"heldout", "shifted"} and len(rollouts) == 2 * 4 * 4
    task = Arithmetic(config.task, config.run.seed)
    prompts = {p.prompt_id: p for p in task.eval_prompts() + task.shifted_prompts()}

    def pairs_of(source):  # by hand: per prompt, each response with each one it scores higher than
        out = []
        for pid in dict.fromkeys(x.prompt_id for x in rollouts if x.source == source):
            group = sorted(
                (x for x in rollouts if x.prompt_id == pid and x.source == source), key=lambda x: x.sample_idx
            )
            out += [(w, lo) for w in group for lo in group if score[(pid, w.sample_idx)] > score[(pid, lo.sample_idx)]]
        return out

    def logps(model_dir, pairs):
        model = load_model(str(model_dir), "float32", device="cpu")
        from iterpo.models.chat import encode_prompt

        prompt_ids = [encode_prompt(tokenizer, prompts[x.prompt_id].messages, None) for p in pairs for x in p]
        with torch.no_grad():
            return score_responses(
                model, prompt_ids, [x.token_ids for p in pairs for x in p], 8, tokenizer.pad_token_id
            )

    for source, prefix in (("heldout", ""), ("shifted", "shifted_")):
        pairs = pairs_of(source)
        assert pairs and all(score[(w.prompt_id, w.sample_idx)] == 1.0 for w, _ in pairs)
        found = _eval(run_dir, 2)["analyses"]
        policy = logps(run_dir / "round-002" / "checkpoint", pairs)
        reference = logps(run_dir / "round-001" / "checkpoint", pairs)  # reference.policy previous
        assert found[prefix + "pairs"] == len(pairs)
        assert found[prefix + "ranking_accuracy"] == pytest.approx(metrics.ranking_accuracy(policy[0::2], policy[1::2]))
        assert found[prefix + "implicit_reward_accuracy"] == pytest.approx(
            metrics.implicit_reward_accuracy(policy[0::2], policy[1::2], reference[0::2], reference[1::2])
        )
        p = [1 / (1 + math.exp(-1.0))] * len(pairs)  # scores 1 and 0: sigmoid(1), as the pairing's soft labels
        assert found[prefix + "ranking_accuracy_ideal"] == pytest.approx(
            metrics.idealized_ranking_accuracy(reference[0::2], reference[1::2], p, 0.1)
        )
        first = _eval(run_dir, 0)["analyses"]
        initial = logps(tiny_model_dir, pairs)
        assert first[prefix + "ranking_accuracy"] == pytest.approx(
            metrics.ranking_accuracy(initial[0::2], initial[1::2])
        )


def test_kl_win_rate_and_diversity_are_reported_per_round(analysed_run):
    run_dir, _ = analysed_run
    first = _eval(run_dir, 0)
    assert "kl_reference" not in first["analyses"] and "win_rate_vs_initial" not in first["analyses"]
    for r in (1, 2):
        e = _eval(run_dir, r)
        found = e["analyses"]
        assert found["kl_samples"] == 4 * 2
        assert math.isfinite(found["kl_reference"]) and math.isfinite(found["kl_initial"])
        if r == 1:  # the reference of round 1 is the starting model
            assert found["kl_reference"] == found["kl_initial"]
        assert 0 < found["distinct_1"] <= 1 and 0 < found["distinct_2"] <= 1
        # the run's judge is the eval judge: per prompt, this round's greedy score against round 0's
        outcomes = [metrics.outcome(a["score"], b["score"]) for a, b in zip(e["items"], first["items"])]
        assert found["win_rate_vs_initial"] == pytest.approx(sum(outcomes) / len(outcomes))
        assert found["length"] == pytest.approx(6.0, abs=6.0)


def test_rerunning_the_evaluations_reads_the_same_held_out_pairs(analysed_run, tmp_path):
    run_dir, config = analysed_run
    before = {r: _eval(run_dir, r) for r in (0, 1, 2)}
    for r in (0, 2):
        (run_dir / f"round-{r:03d}" / "eval.json").unlink()
    run_config(config)
    assert {r: _eval(run_dir, r) for r in (0, 1, 2)} == before


def test_the_analyses_change_nothing_the_run_trains_on(analysed_run, tiny_model_dir, tmp_path):
    run_dir, config = analysed_run
    plain = config.model_copy(deep=True)
    plain.run.dir, plain.eval.analyses, plain.eval.shifted = str(tmp_path / "plain"), False, 0
    run_config(plain)
    for r in (1, 2):
        for name in ("rollouts.parquet", "preferences.parquet", "train.jsonl", "checkpoint/model.safetensors"):
            assert (run_dir / f"round-{r:03d}" / name).read_bytes() == (
                tmp_path / "plain" / f"round-{r:03d}" / name
            ).read_bytes()
        with_analyses, without = _eval(run_dir, r), _eval(tmp_path / "plain", r)
        assert with_analyses.pop("analyses") and with_analyses.pop("shifted_items")
        with_analyses.pop("shifted_accuracy")
        assert with_analyses == without  # the held-out answers do not depend on the shifted ones in their batches


def test_the_shifted_prompts_are_answered_and_judged_beside_the_held_out_ones(analysed_run):
    run_dir, config = analysed_run
    task = Arithmetic(config.task, config.run.seed)
    shifted = task.shifted_prompts()[: config.eval.shifted]
    assert len(shifted) == 4  # eval_size 4: every held-out question once more, in an unseen phrasing
    for r in (0, 1, 2):
        e = _eval(run_dir, r)
        items = e["shifted_items"]
        assert [x["prompt_id"] for x in items] == [p.prompt_id for p in shifted]
        assert e["shifted_accuracy"] == pytest.approx(sum(x["score"] for x in items) / len(items))
        assert not {x["prompt_id"] for x in items} & {x["prompt_id"] for x in e["items"]}
