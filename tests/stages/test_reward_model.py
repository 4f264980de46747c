"""Reward models trained by iterpo: the Bradley-Terry training, the reward_model stage, the learned_reward judge
of later rounds, and `iterpo train-rm`."""

import json
import math

import pytest
import torch
import yaml

from iterpo.config import load_config
from iterpo.judges.reward_model import GeneralPreference, RewardModel, skew_scores
from iterpo.records import Prompt, Rollout
from iterpo.training.reward_model import (
    RewardPair,
    RewardTraining,
    save_reward_model,
    split,
    train_preference_model,
)

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
    model, tok, report = train_preference_model(tiny_model_dir, _pairs(48), opts, "cpu")
    assert report.heldout_pairs > 0 and report.train_pairs + report.heldout_pairs == 48
    assert report.heldout_accuracy == 1.0 and report.train_accuracy == 1.0
    assert report.losses[-1] < report.losses[0] < 0.75  # from about log 2
    with pytest.raises(ValueError, match="held-out share"):
        train_preference_model(tiny_model_dir, _pairs(1), RewardTraining(heldout=0.999999), "cpu")


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


def test_a_general_preference_model_is_skew_symmetric_and_can_hold_a_cycle():
    v = torch.nn.functional.normalize(torch.randn(5, 4), dim=-1)
    s = skew_scores(v)
    assert torch.allclose(s, -s.T) and torch.allclose(s.diagonal(), torch.zeros(5))
    # three embeddings 120 degrees apart: rock beats scissors beats paper beats rock, which no reward can rank
    angles = torch.tensor([0.0, 2.0944, 4.1888])
    v = torch.stack([angles.cos(), angles.sin(), torch.zeros(3), torch.zeros(3)], dim=1)
    s = skew_scores(v)
    assert s[0, 1] > 0 and s[1, 2] > 0 and s[2, 0] > 0
    assert s[0, 1] == pytest.approx(math.sin(2.0944), abs=1e-4)


def test_a_general_preference_model_trains_on_pairs(tiny_model_dir):
    opts = RewardTraining(kind="general_preference", dims=4, tau=0.1, epochs=3, lr=1e-3, batch_size=8, heldout=0.25)
    model, tok, report = train_preference_model(tiny_model_dir, _pairs(48), opts, "cpu")
    assert model.config.num_labels == 4 and model.config.iterpo_preference_model["kind"] == "general_preference"
    assert report.heldout_accuracy == 1.0 and report.train_accuracy == 1.0
    assert report.losses[-1] < report.losses[0]


def test_the_general_preference_judge_gives_gpo_scores_and_sppo_win_rates(tiny_model_dir, tmp_path):
    pairs = [RewardPair(f"p{i}", [{"role": "user", "content": f"q{i}"}], "yes", "no") for i in range(24)]
    opts = RewardTraining(kind="general_preference", epochs=3, lr=3e-3, heldout=0.0)
    model, tok, _ = train_preference_model(tiny_model_dir, pairs, opts, "cpu")
    save_reward_model(model, tok, tmp_path / "gpm")
    judge = GeneralPreference(path=str(tmp_path / "gpm"))
    prompt = Prompt("q", [{"role": "user", "content": "q99"}])
    rollouts = [Rollout("q", i, 1, 0, t, [1], "stop") for i, t in enumerate(["yes", "no", "maybe"])]
    out = judge.judge(prompt, rollouts)
    assert out[0].score > out[1].score and sum(j.score for j in out) == pytest.approx(0.0, abs=1e-6)
    assert sum(j.win_rate for j in out) / 3 == pytest.approx(0.5) and out[0].beats[0] == 0.5
    assert out[0].beats[1] == pytest.approx(1 - out[1].beats[0])
    with pytest.raises(Exception, match="even number"):
        bt, tok2, _ = train_preference_model(tiny_model_dir, pairs[:4], RewardTraining(epochs=1, heldout=0.0), "cpu")
        save_reward_model(bt, tok2, tmp_path / "bt")
        GeneralPreference(path=str(tmp_path / "bt")).judge(prompt, rollouts)


def test_gpo_recipe_trains_a_gpm_and_judges_later_rounds_with_it(tiny_model_dir, tmp_path):
    cfg = recipe_config("gpo", tiny_model_dir, tmp_path / "run")
    cfg["judge"]["fallback"] = "first_token_parity"
    cfg["round"]["stages"][3].update(lr=1e-3, epochs=1)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(cfg))
    rows, store = run_config(load_config(path))
    assert json.loads(store.path(1, "reward_model.json").read_text())["trained"]
    for r in (1, 2):
        judged = table(store, r, "judgements.parquet")
        by_prompt = {}
        for j in judged:
            by_prompt.setdefault(j["prompt_id"], []).append(j)
        for js in by_prompt.values():  # preference scores against the round's samples average zero
            assert sum(j["score"] for j in js) == pytest.approx(0.0, abs=1e-6)
        details = {j["detail"].split("(")[1].split(")")[0] for j in judged}
        assert details == ({"fallback first_token_parity"} if r == 1 else {"general preference model"})
        prefs = table(store, r, "preferences.parquet")
        assert prefs and all(p["chosen_score"] > p["rejected_score"] for p in prefs)
        log = [json.loads(x) for x in store.path(r, "train.jsonl").read_text().splitlines()]
        assert log and all("loss" in x for x in log)


DROP, MARGIN = 0.002, 3.0


def test_an_ensembles_strength_flips_drops_and_smooths_pairs(tiny_model_dir, tmp_path, monkeypatch):
    cfg = recipe_config("rm_strength", tiny_model_dir, tmp_path / "run")
    cfg["judge"] = {"name": "token_sum"}  # graded scores of the random model (it cannot judge itself)
    cfg["run"]["rounds"] = 1
    cfg["round"]["stages"][3].update(lr=1e-3, members=3)
    cfg["round"]["stages"][4].update(drop_below=DROP, margin=MARGIN)  # the tiny models' strengths are small
    cfg["loss"] = {"name": "margin_dpo", "beta": 0.1}  # trains on the adaptive margins
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(cfg))
    rows, store = run_config(load_config(path))
    trained = json.loads(store.path(1, "reward_model.json").read_text())
    assert trained["members"] == 3 and sorted(p.name for p in store.path(1, "reward_model").iterdir()) == [
        "member-0",
        "member-1",
        "member-2",
    ]
    report = json.loads(store.path(1, "strength.json").read_text())
    before = table(store, 1, "preferences.parquet")
    after = table(store, 1, "strength_preferences.parquet")
    assert report["pairs"] == len(before) and report["kept"] == len(after) == len(before) - report["dropped"]
    # recomputed by hand: each pair's mean reward difference under the three members
    members = [RewardModel(path=str(store.path(1, "reward_model") / f"member-{m}")) for m in range(3)]
    from iterpo.config import Config
    from iterpo.tasks import build_task

    config = Config(**cfg)
    prompts = {p.prompt_id: p for p in build_task(config.task, config.run.seed).train_prompts()}
    flipped = dropped = 0
    kept = iter(after)
    for x in before:
        pair = [Rollout(x["prompt_id"], k, 1, 0, t, [], "stop") for k, t in enumerate((x["chosen"], x["rejected"]))]
        d = [m.judge(prompts[x["prompt_id"]], pair) for m in members]
        mean = sum(w.score - lo.score for w, lo in d) / 3
        if mean < 0.0:
            flipped, mean = flipped + 1, -mean
        if mean < DROP:
            dropped += 1
            continue
        y = next(kept)
        was_flipped = y["chosen_idx"] != x["chosen_idx"]
        assert was_flipped == (
            y["chosen"] == x["rejected"] and y["rejected"] == x["chosen"] and y["chosen_idx"] == x["rejected_idx"]
        )
        assert y["soft_label"] == pytest.approx(1 / (1 + math.exp(-mean)), abs=1e-5)
        assert y["margin"] == pytest.approx(MARGIN * mean, abs=1e-5)
    assert (flipped, dropped) == (report["flipped"], report["dropped"])
    log = [json.loads(x) for x in store.path(1, "train.jsonl").read_text().splitlines()]
    assert log or not after  # the kept pairs were trained on
    assert all(x["target_margin"] > 0 for x in log)  # margin_dpo read the margins (every kept mean is > DROP)


def test_strength_flips_then_drops_then_smooths():
    from iterpo.records import Preference
    from iterpo.stages.strength import apply_strength

    prefs = [
        Preference(f"p{i}", 0, 1, "q", "a", "b", 1.0, 0.0, chosen_source="policy", rejected_source="initial")
        for i in range(4)
    ]
    d = [[-2.0, 0.01, 1.0, -0.02], [-1.0, 0.03, 3.0, 0.0]]  # two members; means -1.5, 0.02, 2.0, -0.01
    kept, strengths, counts = apply_strength(prefs, d, flip_below=0.0, drop_below=0.05, smooth=True)
    assert counts == {"pairs": 4, "flipped": 2, "dropped": 2}  # p0 and p3 flipped; p1 and p3 (0.01) too weak
    assert [x.prompt_id for x in kept] == ["p0", "p2"]
    p0, p2 = kept
    assert (p0.chosen, p0.rejected, p0.chosen_idx, p0.chosen_score, p0.chosen_source) == ("b", "a", 1, 0.0, "initial")
    assert p0.soft_label == pytest.approx(1 / (1 + math.exp(-1.5)))
    assert p2.soft_label == pytest.approx(1 / (1 + math.exp(-2.0)))
    assert strengths[1] == {"prompt_id": "p2", "mean": 2.0, "std": 1.0}
    kept, _, _ = apply_strength(prefs, d, flip_below=0.0, drop_below=0.05, smooth=False, margin=0.5)
    assert [x.margin for x in kept] == [0.75, 1.0]  # 0.5 x mean strength (p0 flipped: 1.5)
    untouched, _, counts = apply_strength(prefs, d, None, None, False)
    assert untouched == prefs and counts["flipped"] == counts["dropped"] == 0
