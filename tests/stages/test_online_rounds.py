"""Online rounds: a few prompts a round (sampling.prompts_per_round), held-out accuracy every k rounds
(eval.every), and the policy kept in memory from round to round."""

import json

import pyarrow.parquet as pq

from iterpo.config import load_config
from iterpo.plan import resolve

from helpers import run_config, tiny_config


def test_each_round_takes_the_next_prompts_and_evaluates_every_k_rounds(tiny_model_dir, tmp_path, monkeypatch):
    import iterpo.stages.context as context

    loads = []
    real = context.load_policy_checkpoint
    monkeypatch.setattr(context, "load_policy_checkpoint", lambda *a, **k: loads.append(a[0]) or real(*a, **k))
    cfg = tiny_config(
        tiny_model_dir,
        tmp_path / "run",
        **{
            "run.rounds": 4,
            "task.train_size": 6,
            "sampling.prompts_per_round": 4,
            "eval.every": 3,
            "judge.name": "token_sum",
        },
    )
    path = tmp_path / "online.yaml"
    path.write_text(json.dumps(cfg))
    config = load_config(path)
    rows, store = run_config(config)
    order = []
    for r in (1, 2, 3, 4):
        rollouts = pq.read_table(store.path(r, "rollouts.parquet")).to_pylist()
        prompts = list(dict.fromkeys(x["prompt_id"] for x in rollouts))
        assert len(prompts) == 4 and len(rollouts) == 4 * cfg["sampling"]["samples_per_prompt"]
        judged = {x["prompt_id"] for x in pq.read_table(store.path(r, "judgements.parquet")).to_pylist()}
        examples = {x["prompt_id"] for x in pq.read_table(store.path(r, "preferences.parquet")).to_pylist()}
        assert judged == set(prompts) and examples <= set(prompts)
        order.append(prompts)
    everything = list(dict.fromkeys(order[0] + order[1]))
    assert len(everything) == 6  # 6 prompts in a fixed order, 4 a round, cycling
    assert order[1] == everything[4:] + everything[:2] and order[2] == everything[2:6]
    assert order[3] == order[0]
    evaluated = {r: json.loads(store.path(r, "eval.json").read_text()) for r in (0, 1, 2, 3, 4)}
    assert [evaluated[r]["accuracy"] is None for r in (0, 1, 2, 3, 4)] == [False, True, True, False, False]
    assert [row["accuracy"] is None for row in rows] == [False, True, True, False, False]
    assert loads == []  # the policy stayed in memory from round to round: no checkpoint was loaded back
    # settings at their library defaults stay out of the config as run (older runs keep their fingerprints)
    default = resolve(load_config(built_in=False))
    assert "prompts_per_round" not in default["sampling"] and "every" not in default["eval"]
    assert resolve(config)["sampling"]["prompts_per_round"] == 4


def test_pairing_against_the_initial_models_responses_needs_every_prompt_in_round_1(tiny_model_dir, tmp_path):
    import pytest

    from iterpo.errors import ConfigError
    from iterpo.plan import build_plan

    cfg = tiny_config(
        tiny_model_dir, tmp_path / "run", **{"sampling.prompts_per_round": 2, "pairing.strategy": "anchored"}
    )
    path = tmp_path / "anchored.yaml"
    path.write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match="prompts_per_round"):
        build_plan(load_config(path))
