"""warmup: a run that fine-tunes its model on a file before round 1 starts every later stage from the result."""

import json

import pytest
import torch
import yaml

from iterpo.config import load_config
from iterpo.errors import ConfigError, UserInputError
from iterpo.models.loading import load_model

from helpers import run_config, tiny_config


def _config(tiny_model_dir, tmp_path, demos, **warmup):
    path = tmp_path / "demos.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in demos))
    cfg = tiny_config(tiny_model_dir, tmp_path / "run", **{"run.rounds": 1, "reference.policy": "initial"})
    cfg["warmup"] = {"file": str(path), "train": {"lr": 5e-3, "epochs": 2}, **warmup}
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    return load_config(tmp_path / "cfg.yaml")


DEMOS = [{"prompt": f"What is {a} + {a}?", "chosen": f"The answer is {2 * a}."} for a in range(1, 9)]


def test_the_warmed_up_model_is_the_runs_starting_model_and_is_made_once(tiny_model_dir, tmp_path):
    from iterpo import driver
    from iterpo.stages import RunContext

    config = _config(tiny_model_dir, tmp_path, DEMOS)
    rows, store = run_config(config)
    warm = store.path(0, "warmup")
    log = [json.loads(x) for x in store.path(0, "warmup.jsonl").read_text().splitlines()]
    assert warm.is_dir() and log and {x["epoch"] for x in log} == {0, 1} and {x["lr"] for x in log} == {5e-3}
    assert log[-1]["loss"] < log[0]["loss"]  # it learned the demonstrations
    made = (warm / "model.safetensors").stat().st_mtime_ns
    # a resumed run reads the warm-up back, and every "starting model" is it: round 0's policy, the reference
    rows, store = run_config(config)
    assert (warm / "model.safetensors").stat().st_mtime_ns == made
    plan, store = driver.open_run(config)
    try:
        ctx = RunContext(plan, store)
        assert plan.base_path == str(warm)
        start = dict(ctx.policy_after(0).named_parameters())
        base = dict(load_model(tiny_model_dir).named_parameters())
        saved = dict(load_model(str(warm)).named_parameters())
        name = "model.embed_tokens.weight"
        assert torch.equal(start[name], saved[name]) and not torch.equal(start[name], base[name])
        with ctx.reference(1).active() as ref:
            assert torch.equal(dict(ref.named_parameters())[name], saved[name])
    finally:
        store.close()


def test_a_bad_warmup_is_refused_before_anything_runs(tiny_model_dir, tmp_path):
    with pytest.raises(UserInputError, match="warmup.file: .* row 2"):
        run_config(_config(tiny_model_dir, tmp_path, [DEMOS[0], {"prompt": "no answer"}]))
    with pytest.raises(ConfigError, match="warmup.loss 'grpo' trains on scored data"):
        run_config(_config(tiny_model_dir, tmp_path, DEMOS, loss="grpo"))
    with pytest.raises(ConfigError, match="warmup.train.lr"):
        run_config(_config(tiny_model_dir, tmp_path, DEMOS, train={"lr": -1.0}))
    assert not (tmp_path / "run").exists()  # nothing was written
