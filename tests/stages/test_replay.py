"""The replay stage: a round trains on its own pairs and the fresh pairs of the rounds before it, each replayed
response copied under its own name and scored again under the round's reference."""

import pyarrow.parquet as pq
import pytest
import yaml

from iterpo.config import load_config
from iterpo.errors import ConfigError

from helpers import run_config, tiny_config

STAGES = ["sample", "judge", "pair", {"stage": "replay", "rounds": 1}, "reference", "train"]


def _config(tiny_model_dir, run_dir, stages=STAGES, **overrides):
    cfg = tiny_config(tiny_model_dir, run_dir, **{"run.rounds": 3, **overrides})
    cfg["round"] = {"stages": stages}
    path = run_dir.with_suffix(".yaml")
    path.write_text(yaml.safe_dump(cfg))
    return path


def _rows(run, r, name):
    return pq.read_table(run / f"round-{r:03d}" / name).to_pylist()


def test_each_round_trains_on_its_pairs_and_the_last_rounds_fresh_ones(tiny_model_dir, tmp_path):
    run = tmp_path / "run"
    _, store = run_config(load_config(_config(tiny_model_dir, run)))
    for r in (1, 2, 3):
        fresh = _rows(run, r, "preferences.parquet")
        trained = _rows(run, r, "replayed_preferences.parquet")
        assert trained[: len(fresh)] == fresh
        before = _rows(run, r - 1, "preferences.parquet") if r > 1 else []  # the fresh pairs only, never replays
        assert trained[len(fresh) :] == [
            {
                **x,
                "chosen_source": f"{x['chosen_source']}@r{r - 1}",
                "rejected_source": f"{x['rejected_source']}@r{r - 1}",
            }
            for x in before
        ]
        copies = {(x["prompt_id"], x["source"], x["sample_idx"]): x for x in _rows(run, r, "replayed_rollouts.parquet")}
        sampled = (
            {(x["prompt_id"], x["source"], x["sample_idx"]): x for x in _rows(run, r - 1, "rollouts.parquet")}
            if r > 1
            else {}
        )
        for x in trained[len(fresh) :]:  # each replayed response is the earlier round's sample, under its new name
            for side in ("chosen", "rejected"):
                copy = copies[(x["prompt_id"], x[f"{side}_source"], x[f"{side}_idx"])]
                original = sampled[(x["prompt_id"], "policy", x[f"{side}_idx"])]
                assert copy == {**original, "source": f"policy@r{r - 1}"} and copy["round"] == r - 1
        # reference log-probs for every pair trained on, the replayed ones included, under this round's reference
        scored = {(x["prompt_id"], x["source"], x["sample_idx"]) for x in _rows(run, r, "ref_logps.parquet")}
        named = {(x["prompt_id"], x[f"{s}_source"], x[f"{s}_idx"]) for x in trained for s in ("chosen", "rejected")}
        assert named == scored
        figures = store.manifest()["stages"][f"round-{r:03d}/replay"]
        assert figures["fresh"] == len(fresh) and figures["examples"] == len(trained)
    assert len(_rows(run, 2, "replayed_preferences.parquet")) > len(_rows(run, 2, "preferences.parquet"))


def test_a_replayed_pairs_reference_log_probs_are_those_of_the_rounds_reference(tiny_model_dir, tmp_path):
    """Round 2 replays round 1's pairs: their log-probs are scored again under round 2's reference (the policy
    after round 1), so they differ from round 1's (the starting model's)."""
    run = tmp_path / "run"
    run_config(load_config(_config(tiny_model_dir, run, **{"run.rounds": 2})))
    r1 = {(x["prompt_id"], x["source"], x["sample_idx"]): x["ref_logp"] for x in _rows(run, 1, "ref_logps.parquet")}
    r2 = {(x["prompt_id"], x["source"], x["sample_idx"]): x["ref_logp"] for x in _rows(run, 2, "ref_logps.parquet")}
    replayed = {k: v for k, v in r2.items() if k[1] == "policy@r1"}
    assert replayed and all(abs(v - r1[(k[0], "policy", k[2])]) > 1e-6 for k, v in replayed.items())


@pytest.mark.parametrize(
    "change, message",
    [
        ({"stage": "replay", "rounds": 0}, "rounds must be at least 1"),
        ({"stage": "replay", "per_round": 0}, "per_round must be at least 1"),
    ],
)
def test_bad_replay_options_are_refused_before_the_run(change, message, tiny_model_dir, tmp_path):
    from iterpo.plan import build_plan

    path = _config(tiny_model_dir, tmp_path / "run", stages=STAGES[:3] + [change] + STAGES[4:])
    with pytest.raises(ConfigError, match=message):
        build_plan(load_config(path))


def test_losses_that_do_not_train_on_pairs_are_refused(tiny_model_dir, tmp_path):
    from iterpo.plan import build_plan

    path = _config(tiny_model_dir, tmp_path / "run", stages=["sample", "judge", "pair", "replay", "train"])
    cfg = yaml.safe_load(path.read_text())
    cfg["loss"] = {"name": "sft"}
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(ConfigError, match="replays preference pairs; SFT trains on demonstrations"):
        build_plan(load_config(path))


def test_a_replay_after_the_reference_stage_is_refused(tiny_model_dir, tmp_path):
    """The train stage would read pairs the reference stage never scored: refused before the run."""
    from iterpo.plan import build_plan

    path = _config(tiny_model_dir, tmp_path / "run", stages=["sample", "judge", "pair", "reference", "replay", "train"])
    with pytest.raises(ConfigError, match="put the stages that change the examples .e.g. replay. before 'reference'"):
        build_plan(load_config(path))


def test_per_round_draws_that_many_of_each_earlier_rounds_pairs(tiny_model_dir, tmp_path):
    stages = ["sample", "judge", "pair", {"stage": "replay", "rounds": 2, "per_round": 2}, "reference", "train"]
    run = tmp_path / "run"
    _, store = run_config(load_config(_config(tiny_model_dir, run, stages=stages)))
    trained = _rows(run, 3, "replayed_preferences.parquet")
    for q in (1, 2):
        made = _rows(run, q, "preferences.parquet")
        assert len(made) > 2  # so the draw has something to leave out
        drawn = [x for x in trained if x["chosen_source"] == f"policy@r{q}"]
        assert len(drawn) == 2
        originals = [{**x, "chosen_source": "policy", "rejected_source": "policy"} for x in drawn]
        assert all(x in made for x in originals)
    assert store.manifest()["stages"]["round-003/replay"]["replayed"] == {"round_1": 2, "round_2": 2}


def test_export_gives_each_pair_once_in_the_round_that_made_it(tiny_model_dir, tmp_path):
    from datasets import load_from_disk

    from iterpo.export import export_run

    run = tmp_path / "run"
    run_config(load_config(_config(tiny_model_dir, run)))
    n = export_run(run, None, tmp_path / "out")
    made = sum(len(_rows(run, r, "preferences.parquet")) for r in (1, 2, 3))
    rows = load_from_disk(str(tmp_path / "out"))
    assert n == made == len(rows) and set(rows["chosen_source"]) == {"policy"}
