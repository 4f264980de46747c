"""Rounds whose responses are episodes with a tool, end to end on the tiny model: the rollouts keep every turn,
every observation and whose each token is; pairing, reference scoring and training use them; held-out
evaluation plays episodes too; a run resumed from scratch redraws identical episodes."""

import json

import pyarrow.parquet as pq

from iterpo.config import load_config
from iterpo.plan import build_plan
from iterpo.records import Rollout, from_table

from helpers import run_config, tiny_config


def _config(tiny_model_dir, run_dir, tmp_path, **extra):
    cfg = tiny_config(tiny_model_dir, run_dir, **extra)
    cfg["environment"] = {"name": "toy_echo", "max_turns": 3, "max_tokens": 40, "max_observation_tokens": 8}
    path = tmp_path / f"{run_dir.name}.yaml"
    path.write_text(json.dumps(cfg))
    return load_config(path)


def test_episodes_with_a_tool_run_the_whole_loop(tiny_model_dir, tmp_path, tokenizer):
    config = _config(tiny_model_dir, tmp_path / "run", tmp_path)
    plan = build_plan(config)
    assert plan.system_prompt == "Turns ending in e are calls."
    rows, store = run_config(config)
    assert [row["round"] for row in rows] == [0, 1, 2]
    rollouts = from_table(pq.read_table(tmp_path / "run" / "round-001" / "rollouts.parquet"), Rollout)
    assert len(rollouts) == 8 * 4
    with_calls = [r for r in rollouts if r.transcript and "<result>heard" in r.transcript]
    assert with_calls, "the toy tool is called in some episodes"
    for r in rollouts:
        assert len(r.policy_mask) == len(r.token_ids) and r.step_ends[-1] == len(r.token_ids)
        assert len(r.token_ids) <= 40 and r.finish_reason in ("stop", "length", "turns")
    for r in with_calls:  # the observation's tokens are the tool message, marked as context
        obs = [t for t, mine in zip(r.token_ids, r.policy_mask) if not mine]
        assert "tool" in tokenizer.decode(obs) and "heard" in tokenizer.decode(obs)
        assert r.text == r.transcript.split("\n")[-1] or r.finish_reason != "stop"
    steps = [json.loads(x) for x in (tmp_path / "run" / "round-001" / "train.jsonl").read_text().splitlines()]
    assert steps and all(s["loss"] == s["loss"] for s in steps)  # trained, no NaN
    evaluation = json.loads((tmp_path / "run" / "round-002" / "eval.json").read_text())
    assert all("transcript" in item and "tool_calls" in item for item in evaluation["items"])


def test_a_rerun_redraws_identical_episodes(tiny_model_dir, tmp_path):
    a = _config(tiny_model_dir, tmp_path / "a", tmp_path, **{"run.rounds": 1})
    b = _config(tiny_model_dir, tmp_path / "b", tmp_path, **{"run.rounds": 1})
    run_config(a)
    run_config(b)
    for name in ("rollouts.parquet", "preferences.parquet", "ref_logps.parquet"):
        assert pq.read_table(tmp_path / "a" / "round-001" / name).equals(
            pq.read_table(tmp_path / "b" / "round-001" / name)
        )
