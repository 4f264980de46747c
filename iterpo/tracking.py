"""Optional TensorBoard and MLflow logging of a run's figures, through those libraries (``run.tracking``).

The run directory stays the record; a tracker copies figures out of it once a round is complete, so what
TensorBoard or MLflow shows is exactly what ``iterpo status`` and ``iterpo report`` read:

- per round (step = the round, 0 being the starting model): held-out accuracy, mean reward, pairs, the mean
  loss and margin, every number of ``eval.json``'s analyses, sampling tokens/s, and each stage's seconds;
- per training step (step = the step counted across rounds, per train stage): every number of its log
  (loss, rewards, margin, accuracy, grad norm, lr, ...).

``RUN_DIR/tracking.json`` records the rounds each back end has and MLflow's run id, so a resumed run appends
to the same MLflow run and never logs a round twice. A tracking back end that fails (a
server down) costs a warning, not the run: the round stays unlogged and is logged after the next round.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Protocol

from iterpo.config import TrackingSection
from iterpo.errors import ConfigError
from iterpo.io import read_json, write_json
from iterpo.progress import console
from iterpo.store import RunStore, dotted_settings
from iterpo.summary import round_summary

STATE = "tracking.json"
ROUND_FIGURES = ("accuracy", "mean_reward", "pairs", "skipped", "mean_loss", "reward_margin", "sample_tokens_per_s")


class Sink(Protocol):
    def scalars(self, values: dict[str, float], step: int) -> None: ...

    def close(self, finished: bool) -> None: ...


def check_available(section: TrackingSection) -> None:
    """ConfigError naming the extra to install when a chosen back end's library is missing (before a run)."""
    for wanted, module, extra in (
        (section.tensorboard, "torch.utils.tensorboard", "tensorboard"),
        (section.mlflow, "mlflow", "mlflow"),
    ):
        if not wanted:
            continue
        try:
            __import__(module)
        except ImportError:
            raise ConfigError(
                f"run.tracking.{extra} needs the {extra} library: pip install 'iterpo[{extra}]'"
            ) from None


class TensorBoard:
    """Event files under RUN_DIR/tensorboard (``tensorboard --logdir RUN_DIR/tensorboard``)."""

    def __init__(self, logdir: Path):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(logdir))

    def scalars(self, values: dict[str, float], step: int) -> None:
        for name, value in values.items():
            self.writer.add_scalar(name, value, global_step=step)
        self.writer.flush()

    def close(self, finished: bool) -> None:
        self.writer.close()


class MLflow:
    """One MLflow run per iterpo run (resumed with it), the config as its parameters."""

    def __init__(self, uri: str, experiment: str, run_id: str | None, name: str, params: dict[str, str]):
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=uri)
        if run_id is None:
            found = self.client.get_experiment_by_name(experiment)
            experiment_id = found.experiment_id if found else self.client.create_experiment(experiment)
            run_id = self.client.create_run(experiment_id, run_name=name).info.run_id
            from mlflow.entities import Param

            values = [Param(k, v[:6000]) for k, v in params.items()]  # MLflow's limit on a parameter's length
            for i in range(0, len(values), 100):  # and on the parameters of one batch
                self.client.log_batch(run_id, params=values[i : i + 100])
        else:
            self.client.update_run(run_id, status="RUNNING")
        self.run_id = run_id

    def scalars(self, values: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        at = int(time.time() * 1000)
        metrics = [Metric(name, value, at, step) for name, value in values.items()]
        for i in range(0, len(metrics), 1000):  # MLflow takes at most 1000 metrics a batch
            self.client.log_batch(self.run_id, metrics=metrics[i : i + 1000])

    def close(self, finished: bool) -> None:
        self.client.set_terminated(self.run_id, status="FINISHED" if finished else "KILLED")


def flatten(data: dict, prefix: str = "") -> dict[str, float]:
    """The numbers of a nested mapping, keyed by their '/'-joined paths (booleans and lists left out)."""
    out: dict[str, float] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[f"{prefix}{key}"] = float(value)
    return out


def round_figures(store: RunStore, r: int) -> dict[str, float]:
    """Round r's figures: its round-table row, eval.json's analyses, and each stage's seconds."""
    row = round_summary(store, r)
    out = {f"round/{k}": float(row[k]) for k in ROUND_FIGURES if row.get(k) is not None}
    out.update(flatten(row["analyses"], "analyses/"))
    out.update({f"time/{stage}": float(s) for stage, s in row["times"].items()})
    return out


def step_logs(store: RunStore, r: int, logs: dict[str, str]) -> dict[str, list[dict[str, float]]]:
    """Each train stage's per-step numbers in round r: {stage label: [numbers of each step]}."""
    out = {}
    for label, name in logs.items():
        path = store.path(r, name)
        if path.exists():
            lines = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
            out[label] = [flatten({k: v for k, v in x.items() if k != "step"}) for x in lines]
    return out


class Tracker:
    """Copies each completed round's figures to the chosen back ends (none chosen: does nothing)."""

    def __init__(self, section: TrackingSection, store: RunStore, logs: dict[str, str], config: dict):
        self.store, self.logs = store, logs
        self.sinks: dict[str, Sink] = {}
        self.state_path = store.root / STATE
        self.state = read_json(self.state_path) if self.state_path.exists() else {}
        self.state.setdefault("logged", {})  # back end -> the rounds it has
        if section.tensorboard:
            self.sinks["tensorboard"] = TensorBoard(store.root / "tensorboard")
        if section.mlflow:
            uri = section.mlflow_uri or os.environ.get("MLFLOW_TRACKING_URI") or sqlite_uri(store.root / "mlflow.db")
            params = dotted_settings(config)  # as MLflow parameters
            try:
                sink = MLflow(uri, section.experiment, self.state.get("mlflow_run_id"), store.root.name, params)
            except Exception as exc:  # before any round runs: the user asked for MLflow and it is not there
                raise ConfigError(
                    f"run.tracking.mlflow: could not open the MLflow run at {uri} ({type(exc).__name__}: "
                    f"{' '.join(str(exc).split())[:300]}); check run.tracking.mlflow_uri or MLFLOW_TRACKING_URI"
                ) from None
            self.state["mlflow_run_id"] = sink.run_id
            self.sinks["mlflow"] = sink
        self.steps: dict[int, dict[str, list[dict[str, float]]]] = {}  # round -> its train stages' step logs

    def round_done(self, r: int) -> None:
        """Log rounds 0..r (complete) to each back end that lacks them; a back end that fails is tried again
        after the next round."""
        for name, sink in self.sinks.items():
            logged = self.state["logged"].setdefault(name, [])
            for k in [k for k in range(r + 1) if k not in logged]:
                try:
                    self._log(sink, k)
                except Exception as exc:  # the run goes on without it
                    why = f"{type(exc).__name__}: {exc}"
                    console.print(f"[yellow]tracking: {name} did not take round {k}'s figures ({why})")
                    break
                logged.append(k)
                write_json(self.state_path, self.state)

    def _log(self, sink: Sink, r: int) -> None:
        sink.scalars(round_figures(self.store, r), r)
        for label, lines in self._steps(r).items():
            before = sum(len(self._steps(k).get(label, [])) for k in range(1, r))  # steps of earlier rounds
            for i, numbers in enumerate(lines, start=before + 1):
                sink.scalars({f"{label}/{k}": v for k, v in numbers.items()}, i)

    def _steps(self, r: int) -> dict[str, list[dict[str, float]]]:
        if r not in self.steps:
            self.steps[r] = step_logs(self.store, r, self.logs)
        return self.steps[r]

    def close(self, finished: bool) -> None:
        """Close the back ends; finished: every round ran (MLflow marks the run FINISHED, else KILLED)."""
        for name, sink in self.sinks.items():
            try:
                sink.close(finished)
            except Exception as exc:
                console.print(f"[yellow]tracking: closing {name} failed ({type(exc).__name__}: {exc})")


def sqlite_uri(path: Path) -> str:
    return f"sqlite:///{path.resolve()}"
