"""Kill the process with SIGKILL mid-sampling and mid-training, resume, and compare
every stored file with an uninterrupted run's."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import yaml

from conftest import tiny_config

REPO = Path(__file__).resolve().parent.parent


def _cli(*args) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO / "tests"), ITERPO_PLUGINS="toy_judges")
    return subprocess.Popen([sys.executable, "-m", "iterpo", *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _kill_when(proc, ready, delay=0.0, timeout=240.0):
    """SIGKILL proc `delay` seconds after ready() first holds; fail if it ends first."""
    start = time.time()
    while not ready():
        assert proc.poll() is None, "the run finished before the kill point:\n" + proc.stdout.read()
        assert time.time() - start < timeout
        time.sleep(0.02)
    time.sleep(delay)
    assert proc.poll() is None, "the run finished before the kill point:\n" + proc.stdout.read()
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def _config(tiny_model_dir, run_dir, tmp_path, name):
    # Sizes chosen so sampling (12 shards) and training (60 epochs) each last seconds.
    cfg = tiny_config(tiny_model_dir, run_dir, **{"task.train_size": 24, "sampling.shard_size": 2,
                                                  "sampling.max_new_tokens": 24, "train.epochs": 60})
    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg))
    return path


def _stored(root: Path) -> dict:
    """Every data file of a run: parquet tables as rows, JSON and JSONL as parsed values."""
    out = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.suffix == ".parquet":
            out[rel] = pq.read_table(path).to_pylist()
        elif path.name in ("train.jsonl",):
            out[rel] = [json.loads(x) for x in path.read_text().splitlines()]
        elif path.name == "eval.json":
            out[rel] = json.loads(path.read_text())
        elif path.name == "model.safetensors":
            out[rel] = path.read_bytes()
    return out


def test_sigkill_during_sampling_and_training_then_resume_matches(tiny_model_dir, tmp_path):
    clean_dir, crash_dir = tmp_path / "clean", tmp_path / "crash"
    clean = _cli("run", str(_config(tiny_model_dir, clean_dir, tmp_path, "clean.yaml")))
    out = clean.communicate()[0]
    assert clean.returncode == 0, out

    crash_cfg = _config(tiny_model_dir, crash_dir, tmp_path, "crash.yaml")
    r1 = crash_dir / "round-001"
    # 1. killed in the middle of round 1's sampling: some shards written, the merged file not yet
    proc = _cli("run", str(crash_cfg))
    _kill_when(proc, lambda: len(list((r1 / "rollouts").glob("shard-*.parquet"))) >= 1)
    assert not (r1 / "rollouts.parquet").exists()
    # 2. resumed, then killed in the middle of round 1's training
    proc = _cli("resume", str(crash_dir))
    # training starts right after the reference log-probs are written; 1 s later it is under way
    _kill_when(proc, lambda: (r1 / "ref_logps.parquet").exists(), delay=1.0)
    assert not (r1 / "train.jsonl").exists()
    # 3. resumed to the end
    proc = _cli("resume", str(crash_dir))
    out = proc.communicate()[0]
    assert proc.returncode == 0, out

    clean_files, crash_files = _stored(clean_dir), _stored(crash_dir)
    assert clean_files.keys() == crash_files.keys()
    assert any(k.endswith("rollouts.parquet") for k in clean_files)
    for key in clean_files:
        assert clean_files[key] == crash_files[key], f"{key} differs after kill and resume"
