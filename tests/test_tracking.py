"""TensorBoard and MLflow logging (run.tracking): what they hold is what the run directory says, once per round,
across a crash and a resume; a back end that fails costs a warning and catches up."""

import json

import pytest
import yaml

from iterpo.config import TrackingSection, load_config
from iterpo.errors import ConfigError
from iterpo.tracking import Tracker, flatten, round_figures

from helpers import run_config, tiny_config

pytest.importorskip("mlflow")
pytest.importorskip("tensorboard")


def _scalars(logdir):
    """TensorBoard's scalars: tag -> [(step, value)] in the order written."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(logdir), size_guidance={"scalars": 0})
    ea.Reload()
    return {tag: [(e.step, e.value) for e in ea.Scalars(tag)] for tag in ea.Tags()["scalars"]}


def test_tensorboard_and_mlflow_hold_the_runs_figures_once_across_a_crash_and_resume(
    tiny_model_dir, tmp_path, monkeypatch
):
    from mlflow.tracking import MlflowClient

    from iterpo import driver

    db = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = tiny_config(tiny_model_dir, tmp_path / "run")
    cfg["run"]["tracking"] = {"tensorboard": True, "mlflow": True, "mlflow_uri": db, "experiment": "tests"}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))

    real = driver.run_stage

    def crash_in_round_2(ctx, stage, r):  # the run dies after round 1 was logged
        if r == 2:
            raise KeyboardInterrupt
        real(ctx, stage, r)

    monkeypatch.setattr(driver, "run_stage", crash_in_round_2)
    with pytest.raises(KeyboardInterrupt):
        run_config(load_config(path))
    state = json.loads((tmp_path / "run" / "tracking.json").read_text())
    assert state["logged"] == {"tensorboard": [0, 1], "mlflow": [0, 1]}
    client = MlflowClient(tracking_uri=db)
    run_id = state["mlflow_run_id"]
    assert client.get_run(run_id).info.status == "KILLED"

    monkeypatch.setattr(driver, "run_stage", real)
    rows, store = run_config(load_config(path))  # the resume
    state = json.loads((tmp_path / "run" / "tracking.json").read_text())
    assert state["logged"] == {"tensorboard": [0, 1, 2], "mlflow": [0, 1, 2]} and state["mlflow_run_id"] == run_id
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.params["loss.name"] == "dpo"
    assert run.data.params["task.train_size"] == "8"

    tb = _scalars(tmp_path / "run" / "tensorboard")
    ml = {k: [(m.step, m.value) for m in client.get_metric_history(run_id, k)] for k in tb}
    for r, row in enumerate(rows):  # each round once, at its own step
        for key in ("accuracy", "mean_loss", "pairs"):
            if row[key] is not None:
                want = [(r, pytest.approx(row[key], rel=1e-6))]
                assert [x for x in tb[f"round/{key}"] if x[0] == r] == want
                assert [x for x in ml[f"round/{key}"] if x[0] == r] == want
        for stage, seconds in row["times"].items():
            assert (r, pytest.approx(seconds, rel=1e-6)) in ml[f"time/{stage}"]
    assert [s for s, _ in tb["round/accuracy"]] == [0, 1, 2]
    # every training step once, numbered across rounds, in the order of the train logs
    losses = [json.loads(x)["loss"] for r in (1, 2) for x in store.path(r, "train.jsonl").read_text().splitlines()]
    for got in (tb["train/loss"], sorted(ml["train/loss"])):
        assert [s for s, _ in got] == list(range(1, len(losses) + 1))
        assert [v for _, v in got] == pytest.approx(losses, rel=1e-6)


class _Flaky:
    def __init__(self):
        self.calls, self.fail = [], True

    def scalars(self, values, step):
        if self.fail:
            raise ConnectionError("server down")
        self.calls.append(step)

    def close(self, finished):
        pass


def test_a_failing_back_end_warns_and_catches_up_after_the_next_round(tiny_model_dir, tmp_path, capsys):
    cfg = tiny_config(tiny_model_dir, tmp_path / "run")
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    _, store = run_config(load_config(path))
    tracker = Tracker(TrackingSection(), store, {"train": "train.jsonl"}, {})
    sink = tracker.sinks["flaky"] = _Flaky()
    tracker.round_done(1)
    assert "flaky did not take round 0's figures (ConnectionError: server down)" in " ".join(
        capsys.readouterr().out.split()
    )
    assert tracker.state["logged"]["flaky"] == []
    sink.fail = False
    tracker.round_done(2)
    steps = len(store.path(1, "train.jsonl").read_text().splitlines())
    assert sink.calls[:2] == [0, 1] and sink.calls[1 + steps + 1] == 2  # round 0, round 1, its steps, round 2
    assert tracker.state["logged"]["flaky"] == [0, 1, 2]


def test_round_figures_take_every_number_of_the_analyses(tiny_model_dir, tmp_path):
    assert flatten({"a": 1, "b": {"c": 2.5, "d": [1], "e": True, "f": "x"}}) == {"a": 1.0, "b/c": 2.5}
    cfg = tiny_config(tiny_model_dir, tmp_path / "run", **{"run.rounds": 1})
    cfg["eval"]["analyses"] = True
    cfg["eval"].update(pair_prompts=2, pair_samples=2, kl_samples=1)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    _, store = run_config(load_config(path))
    analyses = json.loads(store.path(1, "eval.json").read_text())["analyses"]
    figures = round_figures(store, 1)
    assert {f"analyses/{k}": float(v) for k, v in analyses.items() if isinstance(v, (int, float))} == {
        k: v for k, v in figures.items() if k.startswith("analyses/")
    }
    assert figures["round/accuracy"] == json.loads(store.path(1, "eval.json").read_text())["accuracy"]


def test_tracking_without_its_library_or_with_a_bad_uri_fails_before_a_round_runs(
    tiny_model_dir, tmp_path, monkeypatch
):
    from iterpo import driver

    cfg = tiny_config(tiny_model_dir, tmp_path / "run")
    cfg["run"]["tracking"] = {"mlflow": True, "mlflow_uri": "nope://nowhere"}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(ConfigError, match="could not open the MLflow run at nope://nowhere"):
        run_config(load_config(path))
    assert not (tmp_path / "run" / "round-000").exists()
    monkeypatch.setitem(__import__("sys").modules, "mlflow", None)  # as if not installed
    with pytest.raises(ConfigError, match=r"pip install 'iterpo\[mlflow\]'"):
        driver.open_run(load_config(path))


def test_tracking_does_not_change_the_runs_fingerprint(tiny_model_dir, tmp_path):
    from iterpo.plan import fingerprint, resolve

    cfg = tiny_config(tiny_model_dir, tmp_path / "run")
    plain = fingerprint(resolve(load_config(_write(tmp_path / "a.yaml", cfg))))
    cfg["run"]["tracking"] = {"tensorboard": True, "mlflow": True}
    assert fingerprint(resolve(load_config(_write(tmp_path / "b.yaml", cfg)))) == plain


def _write(path, cfg):
    path.write_text(yaml.safe_dump(cfg))
    return path
