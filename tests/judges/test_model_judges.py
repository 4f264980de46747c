"""Judges backed by models: reward model (with MC dropout), pairwise LM, self-judging, ensembles."""

import math

import pytest
import torch

from iterpo.config import load_config
from iterpo.errors import ConfigError
from iterpo.judges import JudgeCache, JudgeContext, judge_with_cache, make_judge
from iterpo.plan import check_components
from iterpo.records import Prompt, Rollout

from helpers import tiny_llama_config

PROMPT = Prompt("p", [{"role": "user", "content": "What is 2 + 2?"}], "4")
TEXTS = ["4", "The answer is 4.", "five", "I think it is 22"]


def _rollouts(texts=TEXTS):
    return [Rollout("p", i, 1, 0, t, [i + 1], "stop") for i, t in enumerate(texts)]


@pytest.fixture(scope="module")
def reward_model_dir(tmp_path_factory, tokenizer):
    from transformers import LlamaForSequenceClassification

    torch.manual_seed(1)
    cfg = tiny_llama_config(tokenizer, num_labels=1)
    path = tmp_path_factory.mktemp("reward-model")
    LlamaForSequenceClassification(cfg).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def _context(cache=None, **kw):
    return JudgeContext(1, 0, cache if cache is not None else JudgeCache(), **kw)


def test_reward_model_batches_caches_and_reports_mc_dropout(reward_model_dir):
    judge = make_judge("reward_model", {"path": reward_model_dir, "batch_size": 3, "mc_dropout": 8, "dropout": 0.3})
    judge.setup(_context())
    batched = judge.judge(PROMPT, _rollouts())
    single = [judge.judge(PROMPT, [r])[0] for r in _rollouts()]
    assert [j.score for j in batched] == pytest.approx([j.score for j in single], abs=1e-5)
    assert len({round(j.score, 6) for j in batched}) == len(TEXTS)  # different responses, different rewards
    for j in batched:  # dropout passes scatter around the deterministic score
        assert len(j.samples) == 8 and j.uncertainty > 0 and len(set(j.samples)) > 1
    # without dropout every pass is the deterministic score: the passes read the head's real input
    still = make_judge("reward_model", {"path": reward_model_dir, "mc_dropout": 3, "dropout": 0.0})
    for j in still.judge(PROMPT, _rollouts()):
        assert j.samples == pytest.approx([j.score] * 3, abs=1e-5) and j.uncertainty == pytest.approx(0, abs=1e-6)
    # the driver's cache: a second pass asks the model nothing
    cache, calls = JudgeCache(), []
    plain = make_judge("reward_model", {"path": reward_model_dir})
    original = plain.judge
    plain.judge = lambda p, rs: calls.append(len(rs)) or original(p, rs)
    first = judge_with_cache(plain, PROMPT, _rollouts(), cache)
    again = judge_with_cache(plain, PROMPT, _rollouts(), cache)
    assert calls == [4] and [j.score for j in again] == [j.score for j in first] and cache.hits == 4


def test_reward_model_bad_paths_fail_when_the_run_is_planned(tmp_path):
    with pytest.raises(ConfigError, match="local model directory"):
        check_components(load_config(overrides=["judge.name=reward_model", f"judge.path={tmp_path / 'missing'}"]))
    with pytest.raises(ConfigError, match="no option 'temperature'"):
        check_components(
            load_config(overrides=["judge.name=reward_model", f"judge.path={tmp_path}", "judge.temperature=1"])
        )


def test_pairwise_lm_cancels_position_bias_and_caches(tiny_model_dir):
    judge = make_judge("pairwise_lm", {"path": tiny_model_dir})
    cache = JudgeCache()
    judge.setup(_context(cache))
    asked = []
    original = judge.ask
    judge.ask = lambda p, pairs: asked.extend(pairs) or original(p, pairs)
    texts = TEXTS + ["4"]  # a repeated response ties with its twin without being asked about
    verdicts = judge.judge(PROMPT, _rollouts(texts))
    assert len(asked) == 4 * 3  # ordered pairs of the 4 distinct texts
    direct = dict(zip(asked, (p for p, _ in original(PROMPT, asked))))
    # the batched last-position read equals the full model's next-token distribution over "A" and "B"
    from iterpo.judges.pairwise import fill
    from iterpo.models.chat import encode_prompt

    for a, b in asked[:3]:
        ids = encode_prompt(judge._tokenizer, [{"role": "user", "content": fill(judge.template, PROMPT, a, b)}])
        with torch.no_grad():
            logits = judge._model(torch.tensor([ids])).logits[0, -1, judge._letters]
        assert direct[(a, b)] == pytest.approx(float(torch.softmax(logits, -1)[0]), abs=1e-5)
    for i, a in enumerate(texts):
        for j, b in enumerate(texts):
            if a != b:  # both orders averaged
                assert verdicts[i].beats[j] == pytest.approx(0.5 * (direct[(a, b)] + 1 - direct[(b, a)]), abs=1e-5)
                assert verdicts[i].beats[j] + verdicts[j].beats[i] == pytest.approx(1.0)
    assert verdicts[0].beats[4] == 0.5 and math.isnan(verdicts[0].beats[0])
    # SPPO's estimate, self term included: win rates of K samples average 1/2
    assert sum(v.win_rate for v in verdicts) / len(verdicts) == pytest.approx(0.5)
    assert all(v.score == v.win_rate for v in verdicts)
    asked.clear()
    assert [v.score for v in judge.judge(PROMPT, _rollouts(texts))] == [v.score for v in verdicts] and asked == []


def test_pairwise_template_is_checked():
    with pytest.raises(ConfigError, match="unknown placeholder"):
        make_judge("pairwise_lm", {"template": "{prompt} {response_a} {response_b} {oops}"})
    with pytest.raises(ConfigError, match="must contain"):
        make_judge("pairwise_lm", {"template": "{prompt} {response_a}"})


def test_self_judge_averages_readable_scores_and_records_failures(tiny_model_dir, tokenizer, monkeypatch):
    from iterpo.judges.self_judge import read_score

    assert read_score("Relevant and clear.\nScore: 4") == 4.0
    assert (
        read_score("score = 3.5 ... Score: 2") == 2.0 and read_score("Score: 9") is None and read_score("great") is None
    )
    assert read_score("**Score:** 3") == 3.0 and read_score("The score of 2 is a perfect fit") == 2.0
    assert read_score("I rate it 4/5.") == 4.0 and read_score("4 out of 5, overall") == 4.0

    replies = {0: ["Good. Score: 4", "Score: 2", "no idea"], 1: ["nothing", "still nothing", "nope"]}
    seen = {}

    def fake_generate(model, tok, prompts, seeds, temperature, top_p, max_new_tokens, batch_size):
        seen["seeds"] = seeds
        return [[(tok.encode(t, add_special_tokens=False), "stop") for t in replies[i]] for i in range(len(prompts))]

    import iterpo.sampling

    monkeypatch.setattr(iterpo.sampling, "generate", fake_generate)
    judge = make_judge("self_judge", {"samples": 3})
    judge.setup(_context(policy=lambda: None, tokenizer=tokenizer))
    good, bad = judge.judge(PROMPT, _rollouts(TEXTS[:2]))
    assert good.score == 3.0 and good.samples == [4.0, 2.0] and not good.failed
    assert bad.failed and "no score in 3 evaluations" in bad.detail
    assert len({s for row in seen["seeds"] for s in row}) == 6  # one seed per evaluation
    assert "@policy-after-round-0" in judge.identity()  # the judge is the policy: its verdicts are per round


def test_self_judge_runs_the_real_policy(tiny_model_dir, tokenizer):
    from iterpo.models.loading import load_model

    model = load_model(tiny_model_dir)
    judge = make_judge("self_judge", {"samples": 2, "max_new_tokens": 8})
    judge.setup(_context(policy=lambda: model, tokenizer=tokenizer))
    verdicts = judge.judge(PROMPT, _rollouts(TEXTS[:2]))
    # a random model writes no score: recorded as failed with the reason, never guessed
    assert [v.failed for v in verdicts] == [True, True] and all("no score" in v.detail for v in verdicts)


def test_ensemble_mean_vote_and_disagreement():
    judges = [{"name": "exact_answer"}, {"name": "constraints"}]
    prompt = Prompt("p", [{"role": "user", "content": "2+2?"}], "4")
    with pytest.raises(ConfigError, match="at least two"):
        make_judge("ensemble", {"judges": judges[:1]})
    # exact_answer reads the number; a second exact_answer-like member: multiple ways to agree
    mean = make_judge("ensemble", {"judges": [{"name": "exact_answer"}, {"name": "first_token_parity"}]})
    mean.setup(_context())
    rollouts = [
        Rollout("p", 0, 1, 0, "4", [2], "stop"),
        Rollout("p", 1, 1, 0, "4", [3], "stop"),
        Rollout("p", 2, 1, 0, "5", [3], "stop"),
    ]
    v = mean.judge(prompt, rollouts)
    assert [x.score for x in v] == [1.0, 0.5, 0.0] and [x.uncertainty for x in v] == [0.0, 0.5, 0.0]
    assert v[1].samples == [1.0, 0.0] and "exact_answer=1" in v[1].detail
    vote = make_judge(
        "ensemble",
        {
            "judges": [{"name": "exact_answer"}, {"name": "first_token_parity"}, {"name": "exact_answer"}],
            "combine": "vote",
        },
    )
    vote.setup(_context())
    v = vote.judge(prompt, rollouts)
    assert [x.score for x in v] == pytest.approx([1.0, 2 / 3, 0.0])
    assert [x.uncertainty for x in v] == pytest.approx([0.0, 2 / 3, 0.0])
