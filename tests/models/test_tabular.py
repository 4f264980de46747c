"""The tabular policy and what the loop needs to run it exactly: listed responses, the matrix judge, weights."""

import json
import math
import random

import numpy as np
import pytest
import torch
import yaml

from iterpo import games
from iterpo.config import load_config
from iterpo.errors import ConfigError, DataError
from iterpo.judges import JudgeContext, make_judge
from iterpo.losses import get_loss
from iterpo.losses.base import ScoredBatch
from iterpo.models.chat import encode_prompt
from iterpo.models.loading import load_model
from iterpo.models.packing import sequence_logps
from iterpo.models.tabular import EOS, response_token, table, write_tabular_policy
from iterpo.pairing import Candidate, build_strategy
from iterpo.plan import build_plan
from iterpo.records import Judgement, Prompt, Rollout
from iterpo.sampling.enumerate import enumerate_responses
from iterpo.sampling.generate import generate

from helpers import tiny_config

LOGITS = np.array([[0.3, -1.0, 2.0, 0.0], [1.5, 0.2, -0.7, 0.4]])


@pytest.fixture(scope="module")
def tabular(tmp_path_factory):
    return write_tabular_policy(tmp_path_factory.mktemp("tabular") / "policy", LOGITS)


def _load(path):
    from transformers import AutoTokenizer

    return load_model(str(path), "float64"), AutoTokenizer.from_pretrained(path)


def test_a_responses_log_prob_is_its_table_entrys_log_softmax_exactly(tabular):
    model, tok = _load(tabular)
    assert np.array_equal(table(model), LOGITS)
    want = torch.log_softmax(torch.tensor(LOGITS), dim=-1)  # (C, N)
    prompts = [encode_prompt(tok, [{"role": "user", "content": f"c{k}"}], "a system prompt") for k in range(2)]
    assert prompts == [[2], [3]]  # the prompt is its context token; the template drops everything else
    groups = [(prompts[k], [[response_token(model.config, i), EOS] for i in range(4)]) for k in range(2)]
    got = sequence_logps(model, groups).view(2, 4)  # packed, as training scores them
    assert got.dtype == torch.float64 and torch.allclose(got, want, atol=1e-15, rtol=0)
    assert tok.decode([response_token(model.config, 2), EOS], skip_special_tokens=True) == "y2"


def test_sampling_draws_only_responses_at_their_probabilities(tabular):
    model, tok = _load(tabular)
    outs = generate(model, tok, [[2]], [list(range(4000))], 1.0, 1.0, 4, 256)[0]
    assert {tuple(ids) for ids, _ in outs} <= {(response_token(model.config, i), EOS) for i in range(4)}
    assert all(reason == "stop" for _, reason in outs)
    freq = np.bincount([ids[0] - response_token(model.config, 0) for ids, _ in outs], minlength=4) / len(outs)
    assert np.abs(freq - games.softmax(LOGITS[0])).max() < 0.03  # 4000 draws: standard error below 0.008


def test_listing_every_response_gives_the_exact_distribution_under_temperature(tabular):
    model, tok = _load(tabular)
    out = enumerate_responses(model, EOS, [[2], [3]], 0.5, 1.0, 4)
    for k in range(2):
        assert [ids for ids, _, _ in out[k]] == [[response_token(model.config, i), EOS] for i in range(4)]
        probs = np.array([p for _, _, p in out[k]])
        assert np.abs(probs - games.softmax(LOGITS[k] / 0.5)).max() < 1e-14


def test_listing_a_language_models_responses_is_refused(tiny_model_dir, tokenizer):
    model = load_model(tiny_model_dir)
    with pytest.raises(DataError, match="more than 100 responses"):
        enumerate_responses(model, tokenizer.eos_token_id, [[1, 2, 3]], 1.0, 1.0, 3, limit=100)


def test_bad_logits_are_refused(tmp_path):
    with pytest.raises(ValueError, match="at least 2 responses"):
        write_tabular_policy(tmp_path / "p", [[1.0]])
    with pytest.raises(ValueError, match="finite"):
        write_tabular_policy(tmp_path / "p", [[1.0, float("nan")]])


# ---------------------------------------------------------------- the matrix judge


def _rollouts(texts, weights=None, prompt_id="p"):
    weights = weights or [None] * len(texts)
    return [Rollout(prompt_id, i, 1, 0, t, [], "stop", weight=w) for i, (t, w) in enumerate(zip(texts, weights))]


def _judge(path, tmp_path):
    from iterpo.judges import JudgeCache

    judge = make_judge("matrix", {"path": str(path)})
    judge.setup(JudgeContext(1, 0, JudgeCache()))  # an in-memory cache
    return judge


def test_the_matrix_judges_win_rates_weigh_listed_opponents_by_their_probability(tmp_path):
    rng = np.random.default_rng(0)
    P = games.random_game(4, rng)
    np.save(tmp_path / "game.npy", P)
    judge = _judge(tmp_path / "game.npy", tmp_path)
    pi = games.softmax(rng.normal(size=4))
    prompt = Prompt("p", [{"role": "user", "content": "c0"}])
    verdicts = judge.judge(prompt, _rollouts([f"y{i}" for i in range(4)], list(pi)))
    assert np.abs(np.array([v.win_rate for v in verdicts]) - P @ pi).max() < 1e-15
    assert all(abs(v.beats[j] - P[i, j]) < 1e-15 for i, v in enumerate(verdicts) for j in range(4) if j != i)
    # drawn samples (no weights): SPPO's estimate, self included at 1/2
    drawn = judge.judge(prompt, _rollouts(["y0", "y1", "y1"]))
    assert drawn[0].win_rate == pytest.approx((0.5 + 2 * P[0, 1]) / 3)
    # against another policy's listed responses (Nash-MD's opponents): P mu exactly
    mu = games.softmax(rng.normal(size=4))
    against = judge.judge_against(prompt, _rollouts(["y0", "y3"]), _rollouts([f"y{i}" for i in range(4)], list(mu)))
    assert [v.win_rate for v in against] == pytest.approx([(P @ mu)[0], (P @ mu)[3]], abs=1e-15)


def test_the_matrix_judge_names_what_it_cannot_read(tmp_path):
    (tmp_path / "bad.csv").write_text("0.5,0.7\n0.7,0.5\n")
    with pytest.raises(DataError, match="must equal 1"):
        make_judge("matrix", {"path": str(tmp_path / "bad.csv")})
    with pytest.raises(ConfigError, match="option path"):
        make_judge("matrix", {})
    np.save(tmp_path / "games.npy", np.stack([games.rock_paper_scissors()] * 2))  # one game per context
    judge = _judge(tmp_path / "games.npy", tmp_path)
    with pytest.raises(DataError, match="names none of the 2 games"):
        judge.check_prompt(Prompt("p", [{"role": "user", "content": "what is 2+2?"}]))
    verdicts = judge.judge(Prompt("p", [{"role": "user", "content": "c1"}]), _rollouts(["y0", "Rock!"]))
    assert verdicts[1].failed and "none of the game's responses" in verdicts[1].detail


# ---------------------------------------------------------------- weighted pairs and policy gradients


def _cands(scores, weights, win_rates=None):
    win_rates = win_rates or scores
    return [
        Candidate(r, Judgement("p", r.sample_idx, "j", s, ""), s, w)
        for r, s, w in zip(_rollouts([f"y{i}" for i in range(len(scores))], weights), scores, win_rates)
    ]


def test_all_pairs_are_every_ordered_pair_weighted_by_their_on_policy_probability():
    from iterpo.config import PairingSection

    prompt = Prompt("p", [{"role": "user", "content": "c0"}])
    cands = _cands([0.9, 0.2, 0.5], [0.5, 0.3, 0.2])
    plain, _ = build_strategy(PairingSection(strategy="all_pairs"), "pairs").examples(prompt, cands, random.Random(0))
    assert sorted((x.chosen_idx, x.rejected_idx) for x in plain) == [
        (a, b) for a in range(3) for b in range(3) if a != b
    ]
    assert {x.weight for x in plain} == {1.0}
    weighted, _ = build_strategy(PairingSection(strategy="all_pairs", weighted=True), "pairs").examples(
        prompt, cands, random.Random(0)
    )
    for x in weighted:
        w = [0.5, 0.3, 0.2]
        assert x.weight == pytest.approx(w[x.chosen_idx] * w[x.rejected_idx] * x.soft_label)


def test_rloo_over_listed_responses_is_the_exact_policy_gradient():
    logits = torch.tensor([[0.3, -1.0, 2.0, 0.0]], dtype=torch.float64, requires_grad=True)
    pi = torch.softmax(logits.detach(), -1)
    r = torch.tensor([[0.2, 0.9, 0.4, 0.6]], dtype=torch.float64)
    batch = ScoredBatch(
        logps=torch.log_softmax(logits, -1),
        rewards=r,
        mask=torch.ones(1, 4, dtype=torch.bool),
        lengths=torch.ones(1, 4, dtype=torch.float64),
        ref_logps=torch.log(pi),
        prev_logps=torch.log(pi),
        weights=pi,
    )
    out = get_loss("rloo")(batch)
    mean = float((pi * r).sum())
    assert float(out.loss.detach()) == pytest.approx(-float((pi * (r - mean) * torch.log(pi)).sum()), abs=1e-15)
    out.loss.backward()
    # d E_pi[r] / d logits = pi (r - E_pi[r]): the loss's gradient is its negative
    assert torch.allclose(-logits.grad, pi * (r - mean), atol=1e-15, rtol=0)


def test_win_proportions_over_listed_responses_are_exact():
    from iterpo.pairing.shapes import win_proportions

    P = games.rock_paper_scissors()
    pi = [0.5, 0.3, 0.2]
    cands = _cands([0.0, 0.0, 0.0], pi)
    for i, c in enumerate(cands):
        c.judgement.beats = list(P[i])
    assert win_proportions(cands) == pytest.approx(list(P @ np.array(pi)), abs=1e-15)


# ---------------------------------------------------------------- configs the mode refuses


def _plan(tmp_path, model_dir, **overrides):
    cfg = tiny_config(model_dir, tmp_path / "run", **overrides)
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    return build_plan(load_config(tmp_path / "cfg.yaml"))


def test_losses_written_for_drawn_samples_refuse_listed_responses(tiny_model_dir, tmp_path):
    with pytest.raises(ConfigError, match="no exact form over listed.*exact: .*dpo.*online_ipo"):
        _plan(tmp_path, tiny_model_dir, **{"sampling.exhaustive": True, "loss.name": "ipo"})


def test_a_judge_stage_with_opponents_needs_a_pairwise_judge(tiny_model_dir, tmp_path):
    stages = [
        {"stage": "sample", "name": "sample_mix", "mixture": 0.1},
        "sample",
        {"stage": "judge", "opponents": "sample_mix"},
        "pair",
        "reference",
        "train",
    ]
    with pytest.raises(ConfigError, match="takes a pairwise judge"):
        _plan(tmp_path, tiny_model_dir, **{"round.stages": stages})
    with pytest.raises(ConfigError, match="names no earlier sample stage"):
        _plan(tmp_path, tiny_model_dir, **{"round.stages": ["sample", {"stage": "judge", "opponents": "nope"}]})


def test_lbfgs_trains_in_one_process_without_weight_decay():
    from pydantic import ValidationError

    from iterpo.config import TrainSection

    with pytest.raises(ValidationError, match="lbfgs runs in one process"):
        TrainSection(optimizer="lbfgs", weight_decay=0.1)


def test_the_tabular_round_trips_through_a_run_directory(tabular, tmp_path):
    """A checkpoint saved by the loop loads as the same tabular policy."""
    from iterpo.models.loading import save_policy

    model, tok = _load(tabular)
    save_policy(model, tok, tmp_path / "ckpt")
    again = load_model(str(tmp_path / "ckpt"), "float64")
    assert np.array_equal(table(again), LOGITS) and type(again).__name__ == "TabularPolicy"
    assert json.loads((tmp_path / "ckpt" / "config.json").read_text())["model_type"] == "iterpo_tabular"
    assert math.isclose(float(torch.softmax(torch.tensor(LOGITS[0]), 0).sum()), 1.0)
