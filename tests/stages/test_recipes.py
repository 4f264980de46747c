"""The shipped method recipes (configs/*.yaml) end to end on the tiny model, and the judgement cache on resume.

Each recipe runs two real rounds with only sizes, the model and the judge model
swapped for the tiny ones. The tiny random model never writes "Score: N", so
for self-judging its evaluations (really generated, with their seeds) are
rewritten into a score read off their own tokens; everything else is real.
"""

import json
import shutil

import pyarrow.parquet as pq
import pytest
import yaml

from iterpo.config import load_config
from iterpo.errors import ConfigError

from helpers import recipe_config as _recipe
from helpers import run_config
from helpers import table as _table


def _run(cfg, tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return run_config(load_config(path))


@pytest.fixture
def scoring_policy(monkeypatch, tokenizer):
    """Self-judging on the tiny model: its generated evaluations become 'Score: <sum of its tokens mod 6>'."""
    import iterpo.sampling

    real = iterpo.sampling.generate

    def generate(*args, **kwargs):
        outs = real(*args, **kwargs)
        return [
            [(tokenizer.encode(f"Score: {sum(ids) % 6}", add_special_tokens=False), why) for ids, why in row]
            for row in outs
        ]

    monkeypatch.setattr(iterpo.sampling, "generate", generate)


def _log(store, r, name):
    """A training log of round r (one row per optimizer step)."""
    return [json.loads(x) for x in store.path(r, name).read_text().splitlines()]


def _first_step_margin(log) -> float:
    """The larger of |reward_chosen| and |reward_rejected| at a training log's first step: zero, up to float32
    rounding, where the policy is its reference (the reference stage and the trainer batch the rows
    differently, and a CPU's matmul kernels may round by the batch's shape: seen 3.8e-7)."""
    return max(abs(log[0]["reward_chosen"]), abs(log[0]["reward_rejected"]))


def _stage(store, r, stage):
    return store.manifest()["stages"][f"round-{r:03d}/{stage}"]


@pytest.mark.parametrize("name", ["self_rewarding", "temporal_self_rewarding"])
def test_self_rewarding_recipes(name, tiny_model_dir, tmp_path, scoring_policy):
    rows, store = _run(_recipe(name, tiny_model_dir, tmp_path / "run"), tmp_path)
    for r in (1, 2):
        judged = _table(store, r, "judgements.parquet")
        assert all(j["judge"] == "self_judge" and len(j["samples"]) == 3 for j in judged)  # 3 evaluations averaged
        assert all(j["score"] == pytest.approx(sum(j["samples"]) / 3) for j in judged)
        prefs = _table(store, r, "preferences.parquet")
        assert prefs and all(p["chosen_score"] > p["rejected_score"] for p in prefs)
        assert (store.path(r, "train.jsonl")).stat().st_size > 0 and rows[r]["accuracy"] is not None
    # the judge is the policy of each round: round 2's verdicts come from the model round 1 trained
    assert _stage(store, 2, "judge")["cache_hits"] == 0
    if name == "temporal_self_rewarding":
        # anchored: round 2's rejected responses are the initial model's
        first = {(x["prompt_id"], x["sample_idx"]): x["text"] for x in _table(store, 1, "rollouts.parquet")}
        for p in _table(store, 2, "preferences.parquet"):
            assert p["rejected_source"] == "initial" and p["rejected"] == first[(p["prompt_id"], p["rejected_idx"])]
        # future-guided: the look-ahead model's answers are kept, and replace a chosen only when judged better;
        # the look_ahead stage writes the guided pairs beside the pair stage's
        for r in (1, 2):
            future = {(x["prompt_id"], x["sample_idx"]): x for x in _table(store, r, "future_rollouts.parquet")}
            judged = {(j["prompt_id"], j["sample_idx"]): j["score"] for j in _table(store, r, "judgements.parquet")}
            assert future and all(x["source"] == "look_ahead" for x in future.values())
            prefs = _table(store, r, "guided_preferences.parquet")
            assert len(prefs) == len(_table(store, r, "preferences.parquet"))
            replaced = [p for p in prefs if p["chosen_source"] == "look_ahead"]
            assert _stage(store, r, "look_ahead")["future_chosen"] == len(replaced)
            for p in replaced:
                assert p["chosen"] == future[(p["prompt_id"], p["chosen_idx"])]["text"]
                assert p["chosen_score"] > max(s for (pid, _), s in judged.items() if pid == p["prompt_id"])
        assert sum(_stage(store, r, "look_ahead")["future_chosen"] for r in (1, 2)) > 0


def test_sppo_recipe_with_a_pairwise_judge(tiny_model_dir, tmp_path):
    rows, store = _run(_recipe("sppo", tiny_model_dir, tmp_path / "run"), tmp_path)
    for r in (1, 2):
        judged = _table(store, r, "judgements.parquet")
        by_prompt = {}
        for j in judged:
            by_prompt.setdefault(j["prompt_id"], []).append(j)
        for js in by_prompt.values():  # win rates among K samples, self included, average 1/2
            assert sum(j["win_rate"] for j in js) / len(js) == pytest.approx(0.5)
        prefs = _table(store, r, "preferences.parquet")
        assert prefs and all(p["chosen_win_rate"] > p["rejected_win_rate"] for p in prefs)
        log = _log(store, r, "train.jsonl")
        assert log and all("loss" in x for x in log)
        # the analyses' win rate against the starting model is the pairwise judge's P(this beats that)
        found = json.loads(store.path(r, "eval.json").read_text())["analyses"]
        assert found["win_rate_prompts"] == 3 and 0 < found["win_rate_vs_initial"] < 1


@pytest.mark.parametrize("name", ["grpo", "spo"])
def test_policy_gradient_recipes_train_on_every_sample(name, tiny_model_dir, tmp_path):
    cfg = _recipe(name, tiny_model_dir, tmp_path / "run")
    cfg["judge"] = {"name": "token_sum"}  # graded scores the random model can vary (it never answers right)
    rows, store = _run(cfg, tmp_path)
    for r in (1, 2):
        judged = {(j["prompt_id"], j["sample_idx"]): j["score"] for j in _table(store, r, "judgements.parquet")}
        groups = _table(store, r, "preferences.parquet")
        assert groups
        for g in groups:  # every sample, in sample order, duplicates included
            mine = sorted(i for p, i in judged if p == g["prompt_id"])
            assert g["sample_idxs"] == mine
            scores = [judged[(g["prompt_id"], i)] for i in mine]
            if name == "grpo":
                assert g["scores"] == pytest.approx(scores)
            else:  # the share of the other samples each one beats (ties count 1/2)
                n = len(scores)
                want = [
                    sum(1.0 if s > t else 0.5 if s == t else 0.0 for j, t in enumerate(scores) if j != i) / (n - 1)
                    for i, s in enumerate(scores)
                ]
                assert g["scores"] == pytest.approx(want)
        log = _log(store, r, "train.jsonl")
        assert log and all("advantage_abs" in x for x in log)
    assert store.path(1, "ref_logps.parquet").exists() == (name == "spo")  # GRPO scores live, RLOO from the store


def _killed_then_resumed(cfg, tmp_path, kills):
    """The recipe run again in tmp_path/crash, SIGKILLed at each failpoint in turn, then resumed to the end."""
    from helpers import cli

    crash = tmp_path / "crash"
    cfg["run"]["dir"] = str(crash)
    path = tmp_path / "crash.yaml"
    path.write_text(yaml.safe_dump(cfg))
    for n, point in enumerate(kills):
        code, _, err = cli("run" if n == 0 else "resume", str(path if n == 0 else crash), failpoints=f"{point}=kill")
        assert code == -9, f"{point}: {err}"
    code, _, err = cli("resume", str(crash))
    assert code == 0, err
    return crash


def _same_files(clean, crash, tables, files, rounds=(1, 2)):
    """Each round's tables have the same rows, and its other files the same bytes, in both runs."""
    for r in rounds:
        for name in tables:
            a = pq.read_table(clean / f"round-{r:03d}" / name).to_pylist()
            assert a == pq.read_table(crash / f"round-{r:03d}" / name).to_pylist(), (r, name)
        for name in files:
            a, b = clean / f"round-{r:03d}" / name, crash / f"round-{r:03d}" / name
            assert a.read_bytes() == b.read_bytes(), (r, name)


def _egpo(tiny_model_dir, run_dir):
    cfg = _recipe("egpo", tiny_model_dir, run_dir)
    cfg["judge"] = {"name": "token_sum"}  # graded scores: best_vs_worst finds pairs
    return cfg


def test_egpo_recipe_samples_the_half_step_and_steps_again_from_the_rounds_policy(tiny_model_dir, tmp_path):
    from iterpo import driver
    from iterpo.stages import RunContext
    from iterpo.stages.sample import draw

    cfg = _egpo(tiny_model_dir, tmp_path / "run")
    rows, store = _run(cfg, tmp_path)
    for r in (1, 2):
        first, half = _table(store, r, "rollouts.parquet"), _table(store, r, "rollouts_half.parquet")
        assert {x["source"] for x in half} == {"sample_half"} and len(half) == len(first)
        assert {x["seed"] for x in half}.isdisjoint({x["seed"] for x in first})  # its own samples
        assert store.path(r, "checkpoint_half").is_dir() and store.path(r, "checkpoint").is_dir()
        pairs = _table(store, r, "preferences_half.parquet")
        assert pairs and {p["chosen_source"] for p in pairs} == {"sample_half"}
        for name in ("train_half.jsonl", "train.jsonl"):
            log = _log(store, r, name)
            # both steps start from the round's policy; the reference is the starting model, which round 1's
            # policy is (no margin at its first step) and round 2's is not
            first = _first_step_margin(log)
            assert (first < 1e-5) == (r == 1), (r, name, first)
    # the half-step samples are the half-step policy's: drawn again from checkpoint_half with their seeds
    plan, store = driver.open_run(load_config(tmp_path / "recipe.yaml"))
    try:
        ctx = RunContext(plan, store)
        prompt = ctx.train_prompts[0]
        half = [x for x in _table(store, 1, "rollouts_half.parquet") if x["prompt_id"] == prompt.prompt_id]
        with ctx.sampler_from(store.path(1, "checkpoint_half")) as sampler:
            again = draw(ctx, sampler, [prompt], [[x["seed"] for x in half]], 1, "sample_half", None)
        assert [x.token_ids for x in again] == [x["token_ids"] for x in half]
    finally:
        store.close()


def test_egpo_killed_in_either_sampling_resumes_to_the_same_run(tiny_model_dir, tmp_path):
    cfg = _egpo(tiny_model_dir, tmp_path / "clean")
    _run(cfg, tmp_path)
    crash = _killed_then_resumed(
        cfg, tmp_path, ["written:round-001/checkpoint_half", "written:round-002/rollouts_half/shard-00000.parquet"]
    )
    _same_files(
        tmp_path / "clean",
        crash,
        ["rollouts.parquet", "rollouts_half.parquet", "preferences_half.parquet"],
        ["train.jsonl", "checkpoint/model.safetensors", "checkpoint_half/model.safetensors"],
    )


def test_sft_then_dpo_recipe_trains_dpo_from_the_sft_policy_and_resumes(tiny_model_dir, tmp_path):
    cfg = _recipe("sft_dpo", tiny_model_dir, tmp_path / "clean")
    cfg["judge"] = {"name": "first_token_parity"}
    rows, store = _run(cfg, tmp_path)
    for r in (1, 2):
        demos = _table(store, r, "preferences_sft.parquet")
        assert demos and all(len(g["sample_idxs"]) == 1 and g["scores"][0] >= 1.0 for g in demos)  # the best
        assert store.path(r, "checkpoint_sft").is_dir() and store.path(r, "checkpoint").is_dir()
        sft = _log(store, r, "train_sft.jsonl")
        dpo = _log(store, r, "train.jsonl")
        assert sft and "reward_margin" not in sft[0] and dpo
        # DPO starts from the SFT policy, which is also its reference: no margin at its first step (from the
        # round's starting policy, against the SFT reference, there would be one)
        assert dpo[0]["reward_chosen"] == 0.0 and dpo[0]["reward_rejected"] == 0.0
    assert (tmp_path / "clean" / "round-001" / "checkpoint" / "model.safetensors").read_bytes() != (
        tmp_path / "clean" / "round-001" / "checkpoint_sft" / "model.safetensors"
    ).read_bytes()

    # killed after the SFT step is saved and again in the middle of round 2's DPO training: the same run
    crash = _killed_then_resumed(cfg, tmp_path, ["written:round-001/checkpoint_sft", "progress:training@2"])
    _same_files(
        tmp_path / "clean",
        crash,
        ["preferences_sft.parquet", "preferences.parquet", "ref_logps.parquet"],
        ["train_sft.jsonl", "train.jsonl", "checkpoint_sft/model.safetensors", "checkpoint/model.safetensors"],
    )


def test_stages_of_one_loss_must_agree(tiny_model_dir, tmp_path):
    from iterpo.errors import ConfigError

    cfg = _recipe("sft_dpo", tiny_model_dir, tmp_path / "run")
    # a pairwise loss on the SFT stage's demonstrations
    cfg["round"]["stages"][3] = {"stage": "train", "name": "train_sft", "loss": "simpo"}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(cfg))
    from iterpo.plan import build_plan

    with pytest.raises(ConfigError, match="stage 'train_sft' serves a loss on pairs data, but the examples it reads"):
        build_plan(load_config(path))
    cfg["round"]["stages"][3] = {"stage": "train", "name": "train_sft", "loss": {"name": "sft", "beta": 1}}
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(ConfigError, match="no hyperparameter 'beta'"):
        build_plan(load_config(path))


def test_nash_mp_recipe_mixes_the_fixed_reference_into_both_steps(tiny_model_dir, tmp_path):
    cfg = _recipe("nash_mp", tiny_model_dir, tmp_path / "run")
    cfg["judge"] = {"name": "token_sum"}
    rows, store = _run(cfg, tmp_path)
    for r in (1, 2):
        for name in ("ref_logps.parquet", "ref_logps_half.parquet"):
            scored = _table(store, r, name)
            assert scored and all(x["ref_logp"] is not None and x["prev_logp"] is not None for x in scored)
            if r == 2:  # the starting model and the round's policy differ: two log-probs per response
                assert any(x["ref_logp"] != x["prev_logp"] for x in scored)
        assert store.path(r, "checkpoint_half").is_dir() and _table(store, r, "rollouts_half.parquet")


def test_nash_md_recipe_judges_the_policy_against_the_mixtures_samples(tiny_model_dir, tmp_path):
    import math

    cfg = _recipe("nash_md", tiny_model_dir, tmp_path / "run")
    cfg["judge"] = {"name": "token_sum"}
    rows, store = _run(cfg, tmp_path)
    for r in (1, 2):
        mix = _table(store, r, "rollouts_mix.parquet")
        own = _table(store, r, "rollouts.parquet")
        assert {x["source"] for x in mix} == {"sample_mix"} and len(mix) == len(own)
        assert [x["token_ids"] for x in mix] != [x["token_ids"] for x in own]
        opponents = {}
        for j in _table(store, r, "judgements_mix.parquet"):
            opponents.setdefault(j["prompt_id"], []).append(j["score"])
        scores = {(j["prompt_id"], j["sample_idx"]): j["score"] for j in _table(store, r, "judgements.parquet")}
        pairs = _table(store, r, "preferences.parquet")
        assert pairs
        for p in pairs:  # win rates against the mixture's samples
            theirs = opponents[p["prompt_id"]]
            s = scores[(p["prompt_id"], p["chosen_idx"])]
            want = sum(1 / (1 + math.exp(-(s - t))) for t in theirs) / len(theirs)
            assert p["chosen_win_rate"] == pytest.approx(want)
    assert store.stage_info(1, "sample_mix")["backend"] == "transformers"


def test_apo_recipe_trains_against_the_extrapolated_reference(tiny_model_dir, tmp_path):
    cfg = _recipe("apo", tiny_model_dir, tmp_path / "run")
    cfg["judge"] = {"name": "first_token_parity"}
    cfg["run"]["rounds"] = 3
    rows, store = _run(cfg, tmp_path)
    for r in (1, 2, 3):
        assert _table(store, r, "ref_logps.parquet")  # rounds 2 and 3 combine two policies' log-probs
        assert store.path(r, "train.jsonl").read_text()
    assert yaml.safe_load(store.config_path.read_text())["reference"] == {"policy": "extrapolated", "alpha": 0.5}
    # the extrapolated reference is no distribution: the analyses leave out what needs one
    found = json.loads(store.path(3, "eval.json").read_text())["analyses"]
    assert "kl_reference" not in found and "implicit_reward_accuracy" not in found and "kl_initial" in found


def test_rft_recipe_imitates_the_accepted_samples(tiny_model_dir, tmp_path):
    cfg = _recipe("rft", tiny_model_dir, tmp_path / "run")
    cfg["judge"] = {"name": "first_token_parity"}  # accepts about half of the random model's samples
    rows, store = _run(cfg, tmp_path)
    for r in (1, 2):
        judged = {(j["prompt_id"], j["sample_idx"]): j["score"] for j in _table(store, r, "judgements.parquet")}
        texts = {(x["prompt_id"], x["sample_idx"]): x["text"] for x in _table(store, r, "rollouts.parquet")}
        groups = _table(store, r, "preferences.parquet")
        assert groups
        for g in groups:  # accepted, distinct, at most per_prompt
            assert all(judged[(g["prompt_id"], i)] >= 1.0 for i in g["sample_idxs"])
            assert len({texts[(g["prompt_id"], i)] for i in g["sample_idxs"]}) == len(g["sample_idxs"]) <= 4
        log = _log(store, r, "train.jsonl")
        assert log and all(x["loss"] > 0 for x in log)
    assert not store.path(1, "ref_logps.parquet").exists()  # SFT needs no reference


def test_rso_recipe_and_cache_hits_on_resume(tiny_model_dir, tmp_path):
    cfg = _recipe("rso", tiny_model_dir, tmp_path / "run")
    cfg["judge"] = {"name": "token_sum"}  # graded scores the random model can vary (it meets no format constraint)
    rows, store = _run(cfg, tmp_path)
    for r in (1, 2):
        prefs = _table(store, r, "preferences.parquet")
        per_prompt = {}
        for p in prefs:
            per_prompt[p["prompt_id"]] = per_prompt.get(p["prompt_id"], 0) + 1
            assert p["chosen_score"] > p["rejected_score"]
        assert prefs and max(per_prompt.values()) <= 2
    judged = _table(store, 2, "judgements.parquet")
    # lose round 2 from judging on (as a crash before judging finished would), then resume
    for name in [
        "judgements.parquet",
        "preferences.parquet",
        "ref_logps.parquet",
        "train.jsonl",
        "eval.json",
        "checkpoint",
    ]:
        p = store.path(2, name)
        shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
    _run(cfg, tmp_path)
    info = _stage(store, 2, "judge")
    assert info["cache_misses"] == 0 and info["cache_hits"] == len(judged)  # no response judged twice
    assert _table(store, 2, "judgements.parquet") == judged


def test_pairwise_judge_never_asks_twice_on_resume(tiny_model_dir, tmp_path):
    cfg = _recipe("sppo", tiny_model_dir, tmp_path / "run")
    cfg["run"]["rounds"] = 1
    _, store = _run(cfg, tmp_path)
    asked = _stage(store, 1, "judge")["cache_misses"]
    for name in [
        "judgements.parquet",
        "preferences.parquet",
        "ref_logps.parquet",
        "train.jsonl",
        "eval.json",
        "checkpoint",
    ]:
        p = store.path(1, name)
        shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
    _run(cfg, tmp_path)
    info = _stage(store, 1, "judge")
    assert asked > 0 and info["cache_misses"] == 0 and info["cache_hits"] >= asked


def test_veripo_recipe_trains_dpo_on_verified_pairs_from_the_grpo_policy(tiny_model_dir, tmp_path):
    cfg = _recipe("veripo", tiny_model_dir, tmp_path / "run")
    cfg["judge"] = {"name": "first_token_parity"}  # a verifier the random model passes half the time
    rows, store = _run(cfg, tmp_path)
    for r in (1, 2):
        groups = _table(store, r, "preferences_grpo.parquet")
        pairs = _table(store, r, "preferences.parquet")
        assert groups and pairs
        assert all(p["chosen_score"] >= 1.0 > p["rejected_score"] for p in pairs)  # curated by the verifier
        assert store.path(r, "checkpoint_grpo").is_dir() and store.path(r, "checkpoint").is_dir()
        grpo = _log(store, r, "train_grpo.jsonl")
        dpo = _log(store, r, "train.jsonl")
        assert grpo and "advantage_abs" in grpo[0]
        # DPO starts from the GRPO policy, which is its reference: no margin at its first step
        assert dpo[0]["reward_chosen"] == 0.0 and dpo[0]["reward_rejected"] == 0.0


def test_online_ipo_recipe_regresses_towards_the_starting_model(tiny_model_dir, tmp_path):
    cfg = _recipe("online_ipo", tiny_model_dir, tmp_path / "run")
    cfg["judge"] = {"name": "token_sum"}  # graded scores: best_vs_worst finds pairs
    rows, store = _run(cfg, tmp_path)
    for r in (1, 2):
        pairs = _table(store, r, "preferences.parquet")
        assert pairs and all(p["chosen_win_rate"] > p["rejected_win_rate"] for p in pairs)
        log = _log(store, r, "train.jsonl")
        # against the starting model: round 1's policy is it (no margin at the first step), round 2's is not
        first = _first_step_margin(log)
        assert (first < 1e-5) == (r == 1), (r, first)


def test_a_train_stage_takes_its_own_training_settings(tiny_model_dir, tmp_path):
    cfg = _recipe("sft_dpo", tiny_model_dir, tmp_path / "run")
    cfg["judge"] = {"name": "first_token_parity"}
    cfg["run"]["rounds"] = 1
    stages = cfg["round"]["stages"]
    at = next(i for i, s in enumerate(stages) if isinstance(s, dict) and s.get("name") == "train_sft")
    stages[at] = {**stages[at], "train": {"lr": 2e-4, "epochs": 2}}
    rows, store = _run(cfg, tmp_path)
    sft = _log(store, 1, "train_sft.jsonl")
    dpo = _log(store, 1, "train.jsonl")
    assert {x["lr"] for x in sft} == {2e-4} and {x["epoch"] for x in sft} == {0, 1}
    assert {x["lr"] for x in dpo} == {1e-3} and {x["epoch"] for x in dpo} == {0}  # the run's train section
    stages[at] = {**stages[at], "train": {"lr": -1}}
    with pytest.raises(ConfigError, match="stage 'train_sft': train.lr: Input should be greater than 0"):
        (tmp_path / "bad").mkdir()
        _run(cfg, tmp_path / "bad")


def test_status_counts_the_rounds_whose_policy_stage_finished(tiny_model_dir, tmp_path, capsys):
    from iterpo.cli import main

    cfg = _recipe("sft_dpo", tiny_model_dir, tmp_path / "run")
    cfg["judge"] = {"name": "first_token_parity"}
    at = next(i for i, s in enumerate(cfg["round"]["stages"]) if s == "train")
    cfg["round"]["stages"][at] = {"stage": "train", "name": "train_dpo"}  # the round's policy: not train.jsonl
    cfg["run"]["rounds"] = 1
    _run(cfg, tmp_path)
    capsys.readouterr()
    assert main(["status", str(tmp_path / "run")]) == 0
    assert "1 of 1 rounds trained" in capsys.readouterr().out


@pytest.fixture
def tool_calling_policy(monkeypatch, tokenizer):
    """The tiny random model never writes a call: here about half its first turns (those whose first sampled token
    is even) are replaced by a call of the episode's tool. Everything after it is real: the tool's answer, the
    chat template's tool message, the model's next turn, judging, pairing and training."""
    import importlib

    gen = importlib.import_module("iterpo.sampling.generate")  # the module (the package's `generate` is the function)
    real = gen.generate
    calls = {"</calc>": "<calc>12 * 3</calc>", "</search>": "<search>When was it founded?</search>"}

    def generate(*args):
        outs = real(*args)
        stop = args[9] if len(args) > 9 else ()
        call = next((calls[s] for s in stop if s in calls), None)
        if call is None:
            return outs
        ids = tokenizer.encode(call, add_special_tokens=False)
        for context, row in zip(args[2], outs):
            first_turn = context.count(tokenizer.eos_token_id) == 2  # the system and user turns end before it
            for n, (tokens, _) in enumerate(row):
                if first_turn and tokens[0] % 2 == 0:
                    row[n] = (ids, "stop")
        return outs

    monkeypatch.setattr(gen, "generate", generate)


@pytest.mark.parametrize("name", ["tool_dpo", "retrieval_dpo"])
def test_tool_use_recipes_train_on_episodes(name, tiny_model_dir, tmp_path, tool_calling_policy):
    cfg = _recipe(name, tiny_model_dir, tmp_path / "run")
    cfg["judge"] = {"name": "token_sum"} if name == "tool_dpo" else cfg["judge"]
    cfg["environment"].update(max_tokens=80, max_observation_tokens=32)
    rows, store = _run(cfg, tmp_path)
    tool = {"tool_dpo": "36", "retrieval_dpo": "It was founded in"}[name]
    for r in (1, 2):
        rollouts = _table(store, r, "rollouts.parquet")
        called = [x for x in rollouts if x["observations"]]
        assert called and all(tool in x["observations"][0] for x in called)
        for x in called:  # the tool's tokens are context, the turns the policy's
            assert False in x["policy_mask"] and x["policy_mask"][0] is True and len(x["step_ends"]) >= 2
        judged = _table(store, r, "judgements.parquet")
        if name == "retrieval_dpo":  # each search costs 0.1; the random model never answers right
            by = {(x["prompt_id"], x["sample_idx"]): x for x in rollouts}
            for j in judged:
                x = by[(j["prompt_id"], j["sample_idx"])]
                assert j["score"] == pytest.approx(
                    -0.1 * len(x["observations"])
                    + 0.5 * ("calls" in j["detail"] and "knowledge sufficient" in j["detail"])
                )
        prefs = _table(store, r, "preferences.parquet")
        assert prefs and all(p["chosen_score"] > p["rejected_score"] for p in prefs)
        assert _log(store, r, "train.jsonl")
    items = json.loads(store.path(2, "eval.json").read_text())["items"]
    assert all("transcript" in item for item in items)


TREE_RECIPES = ["mcts_dpo", "step_dpo", "tpo_tree", "sport", "agent_q"]


def _tree_recipe(name, tiny_model_dir, run_dir):
    cfg = _recipe(name, tiny_model_dir, run_dir)
    cfg["judge"] = {"name": "token_sum"}  # graded values from a random model, so siblings differ
    cfg["round"]["stages"][0].update(simulations=3, max_step_tokens=2)
    if cfg["pairing"]["strategy"] == "divergence":
        cfg["pairing"]["margin"] = 0.0
    if "environment" in cfg:
        cfg["environment"].update(max_tokens=80, max_observation_tokens=32)
    return cfg


@pytest.mark.parametrize("name", TREE_RECIPES)
def test_tree_search_recipes_train_on_sibling_steps(name, tiny_model_dir, tmp_path, tool_calling_policy):
    from iterpo.sampling import derive_seed
    from iterpo.sampling.tree import smoothing

    rows, store = _run(_tree_recipe(name, tiny_model_dir, tmp_path / "run"), tmp_path)
    for r in (1, 2):
        nodes = {(x["prompt_id"], x["node_id"]): x for x in _table(store, r, "tree.parquet")}
        responses = {(x["prompt_id"], x["sample_idx"]): x for x in _table(store, r, "rollouts.parquet")}
        values = {(x["prompt_id"], x["sample_idx"]): x for x in _table(store, r, "judgements.parquet")}
        assert set(responses) == set(values) == {k for k, x in nodes.items() if x["parent"] >= 0}
        for (pid, i), x in nodes.items():
            children = [y for (q, _), y in nodes.items() if q == pid and y["parent"] == i]
            # every evaluation is backed up once through the node and each ancestor
            assert x["visits"] == (x["parent"] >= 0) + sum(y["visits"] for y in children)
            own = x["value"] or 0.0
            assert x["value_sum"] == pytest.approx(own + sum(y["value_sum"] for y in children))
            assert x["seed"] == derive_seed(0, r, pid, "node", *x["path"])  # from the node's path
            if x["parent"] < 0:
                continue
            lineage, y = [], x
            while y["parent"] >= 0:
                lineage.insert(0, y)
                y = nodes[(pid, y["parent"])]
            ro = responses[(pid, i)]
            assert ro["token_ids"] == [t for z in lineage for t in z["token_ids"]] and ro["source"] == "tree"
            assert ro["step_ends"][-1] == len(ro["token_ids"]) and len(ro["step_ends"]) == len(lineage)
            assert values[(pid, i)]["score"] == pytest.approx(x["value_sum"] / x["visits"])
            assert values[(pid, i)]["visits"] == x["visits"]
        examples = _table(store, r, "preferences.parquet")  # pairs, or ranked groups (tpo_tree)
        assert examples, f"round {r}: no examples"
        for e in examples:
            pid = e["prompt_id"]
            idxs = [e["chosen_idx"], e["rejected_idx"]] if "chosen_idx" in e else e["sample_idxs"]
            named = [responses[(pid, i)] for i in idxs]
            # siblings: the same steps (the same tokens) before their last; those are context
            shared = [x["step_ends"][-2] if len(x["step_ends"]) > 1 else 0 for x in named]
            assert set(shared) == {e["shared_prefix"]}
            assert len({tuple(x["token_ids"][: e["shared_prefix"]]) for x in named}) == 1
            if name == "mcts_dpo":
                eps = smoothing(values[(pid, idxs[0])]["visits"], values[(pid, idxs[1])]["visits"])
                assert e["soft_label"] == pytest.approx(1 - eps) and 0.5 <= e["soft_label"] <= 1
        assert _log(store, r, "train.jsonl")
        if name in ("sport", "agent_q"):  # steps are turns: the calculator's answers are context
            called = [x for x in nodes.values() if x["observation"] is not None]
            assert called and all("36" in x["observation"] and False in x["policy_mask"] for x in called)
    if name == "agent_q":
        stage = store.manifest()["stages"]["round-001/tree_search"]
        assert stage["policy_calls"] > 0 and stage["tokens_per_prompt"] > 0


REFINE_RECIPES = ["evolve", "sphere", "reagent_v", "tool_feedback", "preflexor"]
THOUGHT, UNFINISHED = "<think>the sum is 1000</think>", "<think>still thinking"


@pytest.fixture
def thinking_policy(monkeypatch, tokenizer):
    """The tiny random model never writes <think>: here each response starts with a closed thought whose number
    (1000) no answer holds, or, for a third of them (first token a multiple of 3), a thought never closed."""
    import importlib

    gen = importlib.import_module("iterpo.sampling.generate")
    real = gen.generate
    closed = tokenizer.encode(THOUGHT, add_special_tokens=False)
    unfinished = tokenizer.encode(UNFINISHED, add_special_tokens=False)

    def generate(*args):
        outs = real(*args)
        return [[((unfinished if ids and ids[0] % 3 == 0 else closed) + ids, why) for ids, why in row] for row in outs]

    monkeypatch.setattr(gen, "generate", generate)
    return closed


def _refine_recipe(name, tiny_model_dir, run_dir):
    cfg = _recipe(name, tiny_model_dir, run_dir)
    if name == "preflexor":  # graded scores of the answer judges read (after the reasoning)
        cfg["judge"] = {"name": "text_length"}
    elif name != "tool_feedback":  # graded scores from a random model, so revisions and their parents differ
        cfg["judge"] = {"name": "token_sum"}
    if name == "reagent_v":
        cfg["pairing"]["min_chosen"] = 0.5
    return cfg


@pytest.mark.parametrize("name", REFINE_RECIPES)
def test_refinement_recipes_pair_revisions_with_the_answers_they_revise(name, tiny_model_dir, tmp_path, request):
    from iterpo import driver
    from iterpo.stages import RunContext
    from iterpo.training.assemble import context_key

    if name == "preflexor":
        request.getfixturevalue("thinking_policy")
    cfg = _refine_recipe(name, tiny_model_dir, tmp_path / "run")
    rows, store = _run(cfg, tmp_path)
    refine = next(s for s in cfg["round"]["stages"] if isinstance(s, dict) and s.get("stage") == "refine")
    from iterpo.stages.refine import REQUEST

    requests = list(refine.get("perspectives", {}).values()) or [refine.get("request", REQUEST)]
    revisions = []
    for r in (1, 2):
        sampled = _table(store, r, "rollouts.parquet")
        everything = {(x["prompt_id"], x["sample_idx"]): x for x in _table(store, r, "refined_rollouts.parquet")}
        first = {(x["prompt_id"], x["sample_idx"]): x for x in sampled}
        verdicts = {(j["prompt_id"], j["sample_idx"]): j for j in _table(store, r, "judgements_refine.parquet")}
        assert set(verdicts) == set(everything)  # the second judge stage judged the answers and their revisions
        assert all(everything[k] == x for k, x in first.items())  # the sampled answers pass through unchanged
        revised = [x for k, x in everything.items() if k not in first]
        assert revised and all(x["source"] == "refine" for x in revised)
        revisions += [(r, x) for x in revised]
        for x in revised:
            parent = everything[(x["prompt_id"], x["parent"])]
            assert [m["role"] for m in x["context"]] == ["assistant", "user"]
            shown = parent["text"] if parent["reasoning"] is None else f"{parent['reasoning']} {parent['text']}".strip()
            assert x["context"][0]["content"] == shown  # the answer it revises, its reasoning included
            request = x["context"][1]["content"]
            if refine.get("which") == "wrong":  # only answers the judge scored below the threshold
                assert verdicts[(x["prompt_id"], x["parent"])]["score"] < 1.0
            if refine.get("feedback"):  # the sandbox's verdict on the parent goes back to the policy
                assert verdicts[(x["prompt_id"], x["parent"])]["detail"] in request
            assert any(request.endswith(q) for q in requests)
        by_parent = {}
        for x in revised:
            by_parent.setdefault((x["prompt_id"], x["parent"]), []).append(x)
        assert {len(v) for v in by_parent.values()} == {len(requests)}  # one revision per perspective
        if "per_prompt" in refine:
            for pid in {x["prompt_id"] for x in sampled}:
                firsts = {x["parent"] for x in revised if x["prompt_id"] == pid and (pid, x["parent"]) in first}
                assert len(firsts) <= refine["per_prompt"]
        pairs = _table(store, r, "preferences.parquet")
        for p in pairs:
            pid = p["prompt_id"]
            a, b = everything[(pid, p["chosen_idx"])], everything[(pid, p["rejected_idx"])]
            assert verdicts[(pid, a["sample_idx"])]["score"] > verdicts[(pid, b["sample_idx"])]["score"]
            child = a if a["parent"] == b["sample_idx"] else b
            if child["parent"] != (a if child is b else b)["sample_idx"]:  # sphere's pair of two first answers
                assert cfg["pairing"].get("samples") and a["parent"] is None and b["parent"] is None
            elif p["context"]:
                assert p["context"] == child["context"]  # the refine format: after the revision's request
            if cfg["pairing"].get("direction") == "improved" and child["parent"] is not None:
                assert child is a
        if name == "tool_feedback":  # the random model never passes a test: nothing to pair
            assert not pairs
        else:
            assert pairs and _log(store, r, "train.jsonl")
        if cfg["pairing"].get("prompt_format") == "both" and pairs:
            assert any(p["context"] for p in pairs) and any(not p["context"] for p in pairs)
            # the reference scored each refine-format response after the prompt and the request
            scored = {
                (x["prompt_id"], x["source"], x["sample_idx"], x["context"])
                for x in _table(store, r, "ref_logps.parquet")
            }
            for p in pairs:
                key = context_key(p["context"])
                assert (p["prompt_id"], p["chosen_source"], p["chosen_idx"], key) in scored
    if refine.get("steps", 1) > 1 and name != "tool_feedback":  # chains: revisions of revisions
        assert any(
            (r, x["prompt_id"], x["parent"]) in {(q, y["prompt_id"], y["sample_idx"]) for q, y in revisions}
            for r, x in revisions
        )
    # each revision depends on its seed and context alone: generated again alone, it is the same
    plan, store = driver.open_run(load_config(tmp_path / "recipe.yaml"))
    try:
        ctx = RunContext(plan, store)
        _, x = revisions[0]
        with ctx.sampler(0) as sampler:
            [[(ids, _)]] = sampler.generate(
                [ctx.prompt_ids_of(x["prompt_id"], context_key(x["context"]))],
                [[x["seed"]]],
                1.0,
                1.0,
                cfg["sampling"]["max_new_tokens"],
                1,
            )
        assert ids == x["token_ids"]
    finally:
        store.close()


def test_preflexor_judges_the_answer_and_trains_with_the_reasoning_masked(tiny_model_dir, tmp_path, thinking_policy):
    from iterpo import driver
    from iterpo.models.loading import load_model
    from iterpo.models.logprobs import score_responses
    from iterpo.stages import RunContext
    from iterpo.training.assemble import context_key

    cfg = _refine_recipe("preflexor", tiny_model_dir, tmp_path / "run")
    cfg["run"]["rounds"] = 1
    _run(cfg, tmp_path)
    plan, store = driver.open_run(load_config(tmp_path / "recipe.yaml"))
    try:
        ctx = RunContext(plan, store)
        rows = {(x["prompt_id"], x["sample_idx"]): x for x in _table(store, 1, "refined_rollouts.parquet")}
        verdicts = {(j["prompt_id"], j["sample_idx"]): j for j in _table(store, 1, "judgements_refine.parquet")}
        decode = lambda ids: ctx.tokenizer.decode(ids, skip_special_tokens=True)  # noqa: E731
        kinds = set()
        for key, x in rows.items():
            assert x["reasoning"].startswith("<think>")
            whole = decode(x["token_ids"])
            if x["reasoning"] == THOUGHT:  # a closed thought: the answer is what follows it
                kinds.add("closed")
                assert x["reasoning_tokens"] == len(thinking_policy)
                assert x["text"] == whole[len(THOUGHT) :].strip()
                assert "1000" not in x["text"] and verdicts[key]["detail"] == x["text"]  # the judge saw the answer
            else:  # never closed: it ran out while thinking, with no answer
                kinds.add("unfinished")
                assert x["text"] == "" and x["reasoning"] == whole and x["reasoning_tokens"] == len(x["token_ids"])
                assert verdicts[key]["detail"] == ""
        assert kinds == {"closed", "unfinished"}
        # the reference scored each response's answer only: its reasoning is context (reasoning.train false)
        model = load_model(tiny_model_dir, "float32")
        stored = _table(store, 1, "ref_logps.parquet")
        assert stored
        prompts = [ctx.prompt_ids_of(x["prompt_id"], x["context"]) for x in stored]
        responses = [rows[(x["prompt_id"], x["sample_idx"])]["token_ids"] for x in stored]
        reasoning = [rows[(x["prompt_id"], x["sample_idx"])]["reasoning_tokens"] for x in stored]
        masks = [[k >= n for k in range(len(ids))] for ids, n in zip(responses, reasoning)]
        want = score_responses(model, prompts, responses, 4, ctx.pad_id, None, masks)
        assert [x["ref_logp"] for x in stored] == pytest.approx(want, abs=1e-4)
        whole = score_responses(model, prompts, responses, 4, ctx.pad_id, None, None)
        assert all(abs(a - b) > 1e-3 for a, b in zip(whole, want))  # the masked reasoning changed every value
        assert any(x["context"] for x in stored) and context_key([]) == ""
    finally:
        store.close()


def test_prompt_evolution_recipe_accounts_for_every_candidate(tiny_model_dir, tmp_path):
    cfg = _recipe("prompt_evolution", tiny_model_dir, tmp_path / "run")
    propose = cfg["round"]["stages"][5]
    assert propose["stage"] == "propose"
    propose["candidates"] = 6
    rows, store = _run(cfg, tmp_path)
    for r in (1, 2):
        stage = _stage(store, r, "propose")
        kept = _table(store, r, "proposed_prompts.parquet")
        assert stage["kept"] == len(kept) and stage["kept"] + sum(stage["dropped"].values()) == 6
        assert all(p["prompt_id"].startswith(f"gen-r{r:03d}-") for p in kept)
    assert rows[2]["accuracy"] is not None


def test_rationale_dpo_trains_on_the_judges_written_reasons(tiny_model_dir, tmp_path, scoring_policy):
    rows, store = _run(_recipe("rationale_dpo", tiny_model_dir, tmp_path / "run"), tmp_path)
    for r in (1, 2):
        judged = {(j["prompt_id"], j["sample_idx"]): j for j in _table(store, r, "judgements.parquet")}
        pairs = _table(store, r, "preferences.parquet")
        assert pairs and _stage(store, r, "pair")["pairs_without_rationale"] == 0
        for p in pairs:
            [side] = p["side"]
            mine, theirs = judged[(p["prompt_id"], p["chosen_idx"])], judged[(p["prompt_id"], p["rejected_idx"])]
            # the policy's own first readable evaluation of each ("Score: N", as the fixture makes it)
            assert side["target"] == (
                f"On the preferred response: {mine['rationale']}\nOn the other response: {theirs['rationale']}"
            )
            assert mine["rationale"].startswith("Score: ")
            assert f"Preferred response: {p['chosen']}" in side["request"]
        log = _log(store, r, "train.jsonl")
        assert log and all(x["with_side"] == 1.0 and x["side_nll"] > 0 for x in log)


def test_ssl_dpo_recipe_predicts_the_degree_of_removed_content(tiny_model_dir, tmp_path):
    cfg = _recipe("ssl_dpo", tiny_model_dir, tmp_path / "run")
    cfg["judge"] = {"name": "token_sum"}  # some responses score 1 (the random model never solves a problem)
    rows, store = _run(cfg, tmp_path)
    from iterpo.pairing.side import degree_targets
    from iterpo.records import Preference

    for r in (1, 2):
        pairs = _table(store, r, "preferences.parquet")
        assert pairs
        for p in pairs:
            want = degree_targets(Preference(**{**p, "side": []}), 2)
            assert p["side"] == want and [t["target"] for t in p["side"]][0] == "0"
        assert _log(store, r, "train.jsonl")
