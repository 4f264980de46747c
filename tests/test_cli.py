"""The command line: exit codes and one-paragraph errors naming what is wrong."""

import json

import pytest

from iterpo.cli import main


def _error(capsys):
    err = capsys.readouterr().err
    assert err.startswith("iterpo: error: ")
    return err


def test_invalid_config_value_exits_2(capsys, tmp_path):
    assert main(["run", "--set", "train.lr=-1", "--set", f"run.dir={tmp_path}"]) == 2
    assert "train.lr" in _error(capsys)


def test_config_file_with_unknown_field_exits_2(capsys, tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("sampling:\n  temprature: 0.7\n")
    assert main(["run", str(path)]) == 2
    err = _error(capsys)
    assert "sampling.temprature" in err and str(path) in err


def test_missing_prompt_file_exits_2(capsys, tmp_path):
    missing = tmp_path / "nope.jsonl"
    assert (
        main(
            [
                "run",
                "--set",
                "task.name=file",
                "--set",
                f"task.train_file={missing}",
                "--set",
                f"run.dir={tmp_path / 'run'}",
            ]
        )
        == 2
    )
    assert str(missing) in _error(capsys)
    assert not (tmp_path / "run").exists()  # nothing written for a run that cannot start


def test_malformed_jsonl_line_exits_2(capsys, tmp_path):
    bad = tmp_path / "p.jsonl"
    bad.write_text(json.dumps({"prompt": "a", "answer": 1}) + "\n{oops\n")
    assert (
        main(
            [
                "run",
                "--set",
                "task.name=file",
                "--set",
                f"task.train_file={bad}",
                "--set",
                f"run.dir={tmp_path / 'run'}",
            ]
        )
        == 2
    )
    err = _error(capsys)
    assert str(bad) in err and "line 2" in err


def test_bad_model_path_exits_2(capsys, tmp_path):
    assert (
        main(["run", "--set", f"model.path={tmp_path / 'nothing.gguf'}", "--set", f"run.dir={tmp_path / 'run'}"]) == 2
    )
    assert "model.path" in _error(capsys)


def test_resume_and_status_need_a_run_directory(capsys, tmp_path):
    assert main(["resume", str(tmp_path)]) == 2
    assert "not an iterpo run directory" in _error(capsys)
    assert main(["status", str(tmp_path)]) == 2


def test_unknown_argument_exits_2():
    with pytest.raises(SystemExit) as info:
        main(["run", "--frobnicate"])
    assert info.value.code == 2


def test_losses_lists_every_loss_with_its_hyperparameters(capsys):
    from iterpo.losses import list_losses

    assert main(["losses"]) == 0
    lines = capsys.readouterr().out.splitlines()[1:]
    assert [line.split()[0] for line in lines] == list_losses()
    kto = next(line for line in lines if line.startswith("kto "))
    assert "unpaired" in kto and "desirable_weight=1" in kto and "Ethayarajh" in kto


def test_judges_and_pairing_list_every_entry_with_options(capsys):
    from iterpo.judges import JUDGES
    from iterpo.pairing import PAIRING

    assert main(["judges"]) == 0
    out = capsys.readouterr().out
    assert all(f"\n{name} " in "\n" + out for name in JUDGES.names() if JUDGES.get(name).__module__ != "toy_judges")
    assert "mc_dropout=0" in out and "concurrency=8" in out
    assert main(["pairing"]) == 0
    lines = capsys.readouterr().out.splitlines()[1:]
    assert [line.split()[0] for line in lines[: len(PAIRING.names())]] == PAIRING.names()
    assert any(line.startswith("rso ") and "beta=0.5, accept=4" in line for line in lines)
