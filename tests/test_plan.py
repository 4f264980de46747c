"""The plan: the round's stages derived from the config or listed by a recipe, wired role by role."""

import pyarrow.parquet as pq
import pytest
import yaml

from iterpo.config import load_config
from iterpo.errors import ConfigError
from iterpo.plan import build_plan

from helpers import run_config, tiny_config


def _plan(tiny_model_dir, tmp_path, **overrides):
    path = tmp_path / "cfg.yaml"
    cfg = tiny_config(tiny_model_dir, tmp_path / "run", **overrides)
    path.write_text(yaml.safe_dump(cfg))
    return build_plan(load_config(path))


def _labels(stages):
    return [s.label for s in stages]


def test_the_derived_round_has_the_stages_the_config_needs(tiny_model_dir, tmp_path):
    plan = _plan(tiny_model_dir, tmp_path)
    assert _labels(plan.stages) == ["sample", "judge", "pair", "reference", "train", "eval"]
    assert _labels(plan.initial_stages) == ["eval"] and plan.round(0) == plan.initial_stages
    train = plan.stage_of_kind("train")
    assert train.inputs == {"examples": "preferences.parquet", "ref_logps": "ref_logps.parquet"}
    assert train.outputs() == ["train.jsonl", "checkpoint"]
    # a reference-free loss needs no reference stage, and its training reads no reference log-probs
    plan = _plan(tiny_model_dir, tmp_path, **{"loss.name": "simpo"})
    assert "reference" not in _labels(plan.stages) and plan.stage_of_kind("train").inputs == {
        "examples": "preferences.parquet"
    }
    # future-guided pairing adds the look-ahead stage, whose pairs are the ones trained on
    plan = _plan(tiny_model_dir, tmp_path, **{"pairing.strategy": "anchored", "pairing.future_guided": True})
    assert _labels(plan.stages) == ["sample", "judge", "pair", "look_ahead", "reference", "train", "eval"]
    assert plan.stage_of_kind("look_ahead").inputs == {"examples": "preferences.parquet"}
    assert plan.stage_of_kind("train").inputs["examples"] == "guided_preferences.parquet"


def test_a_recipe_round_with_a_stage_twice(tiny_model_dir, tmp_path):
    stages = [
        "sample",
        "judge",
        {"stage": "sample", "name": "sample_more", "source": "more"},
        "pair",
        {"stage": "judge", "name": "judge_more"},
        "reference",
        "train",
        "eval",
    ]
    plan = _plan(tiny_model_dir, tmp_path, **{"round.stages": stages, "run.rounds": 1})
    more, judge_more, pair = plan.stages[2], plan.stages[4], plan.stages[3]
    assert more.label == "sample_more" and more.outputs() == ["rollouts_more.parquet"]
    assert pair.inputs == {"rollouts": "rollouts_more.parquet", "judgements": "judgements.parquet"}
    assert judge_more.inputs == {"rollouts": "rollouts_more.parquet"} and judge_more.outputs() == [
        "judgements_more.parquet"
    ]
    # it runs: both samplings are kept, each response with its source
    rows, store = run_config(plan.config)
    first = pq.read_table(store.path(1, "rollouts.parquet")).to_pylist()
    second = pq.read_table(store.path(1, "rollouts_more.parquet")).to_pylist()
    assert {x["source"] for x in first} == {"policy"} and {x["source"] for x in second} == {"more"}
    assert len(first) == len(second) and store.stage_info(1, "sample_more")["new_tokens"] > 0
    assert store.stage_info(1, "judge_more") is not None and rows[1]["accuracy"] is not None


@pytest.mark.parametrize(
    "stages, message",
    [
        (["judge", "sample"], "stage 'judge' reads rollouts, which no earlier stage of the round writes"),
        (["sample", "sample"], "two stages are named 'sample'"),
        (
            ["sample", {"stage": "sample", "name": "again", "outputs": {"rollouts": "rollouts.parquet"}}],
            "stages 'sample' and 'again' both write rollouts.parquet",
        ),
        (["sample", {"stage": "judge", "outputs": {"verdicts": "v.parquet"}}], "outputs names roles it does not write"),
        (["sample", "shuffle"], "unknown stage 'shuffle'"),
        (["sample", {"stage": "sample", "name": "more", "colour": "red"}], "has no option 'colour'"),
        ([{"name": "x"}], "a stage name or a mapping with 'stage'"),
        (
            ["sample", {"stage": "sample", "name": "sample_half", "policy": "train_half"}],
            "stage 'sample_half': policy 'train_half' names no earlier train stage of the round",
        ),
        (
            ["sample", "judge", "pair", "reference", {"stage": "train", "updates_policy": False}, "eval"],
            "no train stage that updates the policy",
        ),
        (["sample", "judge", {"stage": "pair", "pairing": "best"}], "pairing must be a mapping"),
        (["sample", "judge", {"stage": "pair", "opponents": "judge_mix"}], "names no earlier judge stage"),
        (["sample", {"stage": "sample", "name": "sample_mix", "mixture": 1.5}], "mixture must be a weight"),
        (["sample", "judge", {"stage": "pair", "loss": 5}], "loss must be a loss name or a mapping"),
        (["sample", "judge", {"stage": "pair", "loss": {"beta": 1}}], "loss must be a loss name or a mapping"),
    ],
)
def test_bad_rounds_are_refused_with_the_reason(tiny_model_dir, tmp_path, stages, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        _plan(tiny_model_dir, tmp_path, **{"round.stages": stages})


def test_the_default_configs_fingerprint_is_stable():
    """Runs made by earlier versions resume only while their fingerprint is unchanged: a new setting must stay out
    of the config as run at its default (plan.OMITTED_AT_DEFAULT), or say in its change why runs cannot resume."""
    from iterpo.config import load_config
    from iterpo.plan import fingerprint, resolve

    assert fingerprint(resolve(load_config())) == "77b838b081e1b20d"
    # the built-in default changed (4 rounds, no per-round analyses): its 3-round form resumes as it was
    three = ["run.rounds=3", "eval.analyses=true"]
    assert fingerprint(resolve(load_config(overrides=three))) == "9609f7dd4ac1eca5"
    # the library default changed (AdamW's first moment in bfloat16): the runs made before resume with float32
    exact = three + ["train.first_moment=float32"]
    assert fingerprint(resolve(load_config(overrides=exact))) == "c70200a0b5cebbdc"
    # the built-in default changed (lr 2e-5 halved each round): its earlier form resumes as it was
    assert fingerprint(resolve(load_config(overrides=["train.lr=1e-5", "train.round_lr_decay=1"] + exact))) == (
        "074c3d4ba001bd8b"
    )
    # the built-in default changed (fresh prompts each round, lr 1e-5, dpo_nll): its earlier form, from the
    # same library defaults
    earlier = ["loss.name=dpo", "task.train_size=64", "sampling.prompts_per_round=null", "train.lr=5e-6"]
    earlier += ["train.round_lr_decay=1"] + exact
    assert fingerprint(resolve(load_config(overrides=earlier))) == "ff069b2c258a5ba5"
    # the defaults changed before that (bfloat16 sampling, larger batches and shards): the runs made before resume
    # with the settings they ran with, as the README says
    before = ["sampling.dtype=float32", "sampling.shard_size=16", "sampling.batch_size=64"]
    assert fingerprint(resolve(load_config(overrides=before + earlier))) == "2d9eaedaf8baa595"


def test_a_stages_own_loss_is_checked_against_the_reference_policy_too(tiny_model_dir, tmp_path):
    stages = ["sample", "judge", {"stage": "pair", "loss": "grpo"}, {"stage": "train", "loss": "grpo"}, "eval"]
    with pytest.raises(ConfigError, match="loss 'grpo' of stage 'pair' is defined against reference.policy"):
        _plan(tiny_model_dir, tmp_path, **{"round.stages": stages, "reference.policy": "initial"})
    stages = ["sample", "judge", "pair", "reference", "train", "ema", "eval"]
    _plan(tiny_model_dir, tmp_path, **{"round.stages": stages, "reference.policy": "ema"})  # in order: accepted
    stages = ["sample", "judge", "pair", "reference", "ema", "train", "eval"]
    with pytest.raises(ConfigError, match="an 'ema' stage after the round's last train stage"):
        _plan(tiny_model_dir, tmp_path, **{"round.stages": stages, "reference.policy": "ema"})
