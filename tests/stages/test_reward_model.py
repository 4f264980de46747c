"""Reward models trained by iterpo: the Bradley-Terry training, the reward_model stage, the learned_reward judge
of later rounds, and `iterpo train-rm`."""

import json

import pytest
import yaml

from iterpo.config import load_config
from iterpo.judges.reward_model import RewardModel
from iterpo.records import Prompt, Rollout
from iterpo.training.reward_model import RewardPair, RewardTraining, split, train_bradley_terry

from helpers import cli, recipe_config, run_config, table


def _pairs(n):
    """Pairs a reward model can learn: the chosen response is always 'yes', the rejected 'no'."""
    return [RewardPair(f"p{i}", [{"role": "user", "content": f"question {i}?"}], "yes", "no") for i in range(n)]


def test_the_held_out_split_is_by_prompt_and_does_not_depend_on_order():
    pairs = _pairs(200) + [RewardPair("p0", [], "a", "b")]
    train, held = split(pairs, 0.25, seed=3)
    assert {p.prompt_id for p in train}.isdisjoint({p.prompt_id for p in held})
    assert 30 < len(held) < 70  # about a quarter of 200 prompts
    again = split(list(reversed(pairs)), 0.25, seed=3)
    assert {id(p) for p in again[1]} == {id(p) for p in held}
    assert split(pairs, 0.0, seed=3)[1] == []


def test_bradley_terry_training_learns_a_separable_preference(tiny_model_dir):
    opts = RewardTraining(epochs=3, lr=1e-3, batch_size=8, heldout=0.25, seed=0)
    model, tok, report = train_bradley_terry(tiny_model_dir, _pairs(48), opts, "cpu")
    assert report.heldout_pairs > 0 and report.train_pairs + report.heldout_pairs == 48
    assert report.heldout_accuracy == 1.0 and report.train_accuracy == 1.0
    assert report.losses[-1] < report.losses[0] < 0.75  # from about log 2
    with pytest.raises(ValueError, match="held-out share"):
        train_bradley_terry(tiny_model_dir, _pairs(1), RewardTraining(heldout=0.999999), "cpu")


def test_a_run_trains_a_reward_model_and_judges_later_rounds_with_it(tiny_model_dir, tmp_path):
    cfg = recipe_config("reward_model", tiny_model_dir, tmp_path / "run")
    cfg["judge"]["fallback"] = "first_token_parity"  # the tiny model never answers right: a judge that splits it
    cfg["round"]["stages"][3].update(lr=1e-3, epochs=1)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(cfg))
    rows, store = run_config(load_config(path))
    report = json.loads(store.path(1, "reward_model.json").read_text())
    assert (
        report["trained"] and report["pairs"] > 0 and report["heldout_pairs"] + report["train_pairs"] == report["pairs"]
    )
    assert report["heldout_accuracy"] is None or 0 <= report["heldout_accuracy"] <= 1
    assert json.loads(store.path(2, "reward_model.json").read_text()) == {"round": 2, "trained": False}
    assert not store.path(2, "reward_model").exists()
    # round 1: the fallback's verdicts (first token parity); round 2: the reward model of round 1
    first = table(store, 1, "judgements.parquet")
    assert {j["judge"] for j in first} == {"learned_reward"} and {j["score"] for j in first} <= {0.0, 1.0}
    rollouts = {(x["prompt_id"], x["sample_idx"]): x for x in table(store, 1, "rollouts.parquet")}
    assert all(j["score"] == float(rollouts[(j["prompt_id"], j["sample_idx"])]["token_ids"][0] % 2 == 0) for j in first)
    second = table(store, 2, "judgements.parquet")
    rm = RewardModel(path=str(store.path(1, "reward_model")))
    from iterpo.config import Config
    from iterpo.tasks.arithmetic import Arithmetic

    config = Config(**cfg)
    prompts = {p.prompt_id: p for p in Arithmetic(config.task, config.run.seed).train_prompts()}
    for x in table(store, 2, "rollouts.parquet")[:6]:
        mine = next(j for j in second if (j["prompt_id"], j["sample_idx"]) == (x["prompt_id"], x["sample_idx"]))
        rollout = Rollout(
            **{k: x[k] for k in ("prompt_id", "sample_idx", "round", "seed", "text", "token_ids", "finish_reason")}
        )
        expected = rm.judge(prompts[x["prompt_id"]], [rollout])[0].score
        assert mine["score"] == pytest.approx(expected, abs=1e-5) and mine["detail"].startswith("reward ")
    assert rows[2]["accuracy"] is not None  # the held-out accuracy stays the verifier's


def test_train_rm_command(tiny_model_dir, tmp_path):
    rows = [{"prompt": f"question {i}?", "chosen": "yes", "rejected": "no"} for i in range(24)]
    rows += [
        {
            "prompt": [{"role": "user", "content": "chat?"}],
            "chosen": [{"role": "assistant", "content": "yes"}],
            "rejected": [{"role": "assistant", "content": "no"}],
        }
    ]
    prefs = tmp_path / "prefs.jsonl"
    prefs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "rm"
    args = ["train-rm", "--preferences", str(prefs), "--model", tiny_model_dir, "--output", str(out)]
    code, stdout, err = cli(*args, "--lr", "1e-3", "--epochs", "2", "--heldout", "0.3")
    assert code == 0, err
    report = json.loads((out / "report.json").read_text())
    assert report["pairs"] == 25 and "held-out pair accuracy" in stdout
    rm = RewardModel(path=str(out / "reward_model"))
    prompt = Prompt("q", [{"role": "user", "content": "question 99?"}])
    yes, no = (Rollout("q", i, 0, 0, t, [1], "stop") for i, t in enumerate(["yes", "no"]))
    assert rm.judge(prompt, [yes])[0].score > rm.judge(prompt, [no])[0].score
    code, _, err = cli(*args)  # the output holds a reward model already
    assert code == 2 and "already holds a reward model" in err
    code, _, err = cli(*args[:-2], "--output", str(tmp_path / "other"), "--heldout", "1.5")
    assert code == 2 and "heldout" in err
