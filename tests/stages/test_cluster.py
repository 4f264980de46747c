"""The sample, judge and reference stages on a local Ray cluster of 2 CPU workers: the same files as one process,
also when a worker dies in the middle of a shard, and across a kill of the run with the number of workers changed."""

import json
import os
import signal
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from helpers import cli, tiny_config

pytest.importorskip("ray")

CLUSTER = {"address": "local", "workers": 2, "cpus_per_worker": 1, "threads": 1}


def _config(tiny_model_dir, tmp_path, name, cluster=None, **overrides):
    cfg = tiny_config(
        tiny_model_dir,
        tmp_path / name,
        **{"task.train_size": 8, "sampling.shard_size": 2, "loss.name": "inpo", **overrides},
    )
    if cluster:
        cfg["run"]["cluster"] = cluster
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _ray_processes() -> set[int]:
    found = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"ray::" in cmd or b"raylet" in cmd or b"gcs_server" in cmd:
            found.add(int(pid))
    return found


def _files(root):
    """What must not depend on the number of workers: every stage table, the training logs, the weights."""
    out = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.suffix == ".parquet" and "judge-cache" not in rel:
            out[rel] = json.dumps(pq.read_table(path).to_pylist(), sort_keys=True)
        elif path.name in ("train.jsonl", "eval.json", "model.safetensors"):
            out[rel] = path.read_bytes()
    return out


@pytest.fixture(scope="module")
def one_process(tiny_model_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("one")
    code, out, err = cli("run", str(_config(tiny_model_dir, tmp, "run")))
    assert code == 0, err
    return _files(tmp / "run")


def test_two_workers_write_what_one_process_writes(one_process, tiny_model_dir, tmp_path):
    code, out, err = cli("run", str(_config(tiny_model_dir, tmp_path, "run", CLUSTER)))
    assert code == 0, err
    files = _files(tmp_path / "run")
    assert files.keys() == one_process.keys() and any(k.endswith("ref_logps.parquet") for k in files)
    for key in files:
        assert files[key] == one_process[key], key
    stages = json.loads((tmp_path / "run" / "manifest.json").read_text())["stages"]
    for stage in ("sample", "judge", "reference"):  # INPO scores the reference and the previous policy
        assert stages[f"round-002/{stage}"]["workers"] == 2 and stages[f"round-002/{stage}"]["retries"] == 0


def test_a_worker_killed_in_a_shard_is_replaced_and_the_run_is_the_same(one_process, tiny_model_dir, tmp_path):
    once = tmp_path / "once"
    once.mkdir()
    code, out, err = cli(
        "run",
        str(_config(tiny_model_dir, tmp_path, "run", CLUSTER)),
        failpoints="progress:worker sampling@3=kill",
        once_dir=str(once),
    )
    assert code == 0, err
    stages = json.loads((tmp_path / "run" / "manifest.json").read_text())["stages"]
    assert stages["round-001/sample"]["retries"] == 1
    files = _files(tmp_path / "run")
    for key in one_process:
        assert files[key] == one_process[key], key


def test_killed_with_two_workers_resumed_in_one_process_and_the_reverse(one_process, tiny_model_dir, tmp_path):
    run = tmp_path / "run"
    path = _config(tiny_model_dir, tmp_path, "run", CLUSTER)
    before = _ray_processes()
    code, out, err = cli("run", str(path), failpoints="written:round-001/rollouts/shard-00002.parquet=kill")
    assert code == -9 and not (run / "round-001" / "rollouts.parquet").exists()
    for pid in _ray_processes() - before:  # a killed run's local Ray instance leaves agent processes behind
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    code, out, err = cli("resume", str(run), "--set", "run.cluster=null", failpoints="progress:reference@2=kill")
    assert code == -9 and (run / "round-001" / "rollouts.parquet").exists()
    code, out, err = cli(
        "resume",
        str(run),
        "--set",
        "run.cluster.workers=2",
        "--set",
        "run.cluster.threads=1",
        "--set",
        "run.cluster.address=local",
    )
    assert code == 0, err
    files = _files(run)
    assert files.keys() == one_process.keys()
    for key in files:
        assert files[key] == one_process[key], key


def test_a_two_step_round_samples_its_half_step_on_the_workers_alike(tiny_model_dir, tmp_path):
    """EGPO's round: the workers load the half-step policy from the run directory and sample what one process
    samples; the prompts' second sampling and scoring are theirs too."""
    stages = [
        "sample",
        "judge",
        "pair",
        "reference",
        {"stage": "train", "name": "train_half", "updates_policy": False},
        {"stage": "sample", "name": "sample_half", "policy": "train_half"},
        {"stage": "judge", "name": "judge_half"},
        {"stage": "pair", "name": "pair_half"},
        {"stage": "reference", "name": "reference_half"},
        "train",
        "eval",
    ]
    extra = {
        "loss.name": "online_ipo",
        "pairing.strategy": "best_vs_worst",
        "judge.name": "token_sum",
        "round.stages": stages,
        "run.rounds": 1,
    }
    runs = {}
    for name, cluster in (("one", None), ("two", CLUSTER)):
        code, out, err = cli("run", str(_config(tiny_model_dir, tmp_path, name, cluster, **extra)))
        assert code == 0, err
        runs[name] = _files(tmp_path / name)
    assert runs["one"].keys() == runs["two"].keys()
    assert any(k.endswith("rollouts_half.parquet") for k in runs["one"])
    assert any(k.endswith("checkpoint_half/model.safetensors") for k in runs["one"])
    for key in runs["one"]:
        assert runs["one"][key] == runs["two"][key], key
    stages_info = json.loads((tmp_path / "two" / "manifest.json").read_text())["stages"]
    assert stages_info["round-001/sample_half"]["workers"] == 2
