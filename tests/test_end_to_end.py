"""The real built-in default (SmolLM2-135M-Instruct from the GGUF package), at reduced size."""

import json

import pytest

from iterpo.cli import main


@pytest.mark.slow
def test_builtin_default_one_small_round(tmp_path, capsys):
    run_dir = tmp_path / "run"
    code = main(
        [
            "run",
            "--set",
            f"run.dir={run_dir}",
            "--set",
            "run.rounds=1",
            "--set",
            "task.train_size=8",
            "--set",
            "task.eval_size=8",
            "--set",
            "sampling.samples_per_prompt=4",
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "held-out" in out
    start = json.loads((run_dir / "round-000" / "eval.json").read_text())
    after = json.loads((run_dir / "round-001" / "eval.json").read_text())
    assert start["n"] == after["n"] == 8
    # the real model answers some questions before training: the verifier and template work
    assert any(x["score"] == 1.0 for x in start["items"])
    assert (run_dir / "round-001" / "checkpoint" / "model.safetensors").is_file()
    assert main(["status", str(run_dir)]) == 0
