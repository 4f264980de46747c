"""Faults during a run, each injected at an exact point (ITERPO_FAILPOINTS), then resumed.

Kills in every stage, Ctrl-C and SIGTERM, a full disk (injected and on a real
tmpfs), a second process on the same run directory, and damaged stage files.
After each, the resumed run's stored files must equal an uninterrupted run's.
"""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from helpers import REPO, cli, cli_env, run_config, tiny_config

_cli = cli


def _config(tiny_model_dir, run_dir: Path, tmp_path: Path) -> Path:
    """Two rounds, 8 prompts in shards of 2, so every stage has a middle to stop in."""
    cfg = tiny_config(tiny_model_dir, run_dir, **{"task.train_size": 8, "sampling.shard_size": 2})
    path = tmp_path / f"{run_dir.name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _stored(root: Path) -> dict:
    """Every data file of a run: parquet tables as rows, JSON and JSONL parsed, weights as bytes."""
    out = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if ".damaged" in rel:
            continue
        if path.suffix == ".parquet":
            out[rel] = pq.read_table(path).to_pylist()
        elif path.name == "train.jsonl":
            out[rel] = [json.loads(x) for x in path.read_text().splitlines()]
        elif path.name == "eval.json":
            out[rel] = json.loads(path.read_text())
        elif path.name == "model.safetensors":
            out[rel] = path.read_bytes()
    return out


def _no_leftovers(root: Path) -> None:
    """No temporary file or directory of an unfinished write anywhere in the run."""
    left = [str(p.relative_to(root)) for p in root.rglob(".*") if p.name != ".lock"]
    assert left == [], f"left behind: {left}"


@pytest.fixture(scope="module")
def clean(tiny_model_dir, tmp_path_factory):
    """The uninterrupted run every faulty one is compared with."""
    tmp = tmp_path_factory.mktemp("clean")
    code, out, err = _cli("run", str(_config(tiny_model_dir, tmp / "clean", tmp)))
    assert code == 0, err
    files = _stored(tmp / "clean")
    assert any(k.endswith("model.safetensors") for k in files) and any(k.endswith("ref_logps.parquet") for k in files)
    return files


def _same_as_clean(clean, root: Path) -> None:
    files = _stored(root)
    assert files.keys() == clean.keys()
    for key in clean:
        assert files[key] == clean[key], f"{key} differs from the uninterrupted run's"
    _no_leftovers(root)


def test_killed_in_every_stage_then_resumed_matches(clean, tiny_model_dir, tmp_path):
    run = tmp_path / "crash"
    cfg = _config(tiny_model_dir, run, tmp_path)
    r1, r2 = run / "round-001", run / "round-002"
    kills = [  # (failpoint, what must be missing after the kill)
        ("written:round-001/rollouts/shard-00001.parquet", r1 / "rollouts.parquet"),  # sampling, 2 of 4 shards
        ("written:judge-cache/shard-000000.parquet", r1 / "judgements.parquet"),  # judging, a cache shard saved
        ("progress:reference@2", r1 / "ref_logps.parquet"),  # reference log-probs
        ("progress:training@2", r1 / "train.jsonl"),  # training, after 2 of its pairs
        ("progress:evaluation@1", r1 / "eval.json"),  # round 1's evaluation
        ("written:round-002/checkpoint", r2 / "train.jsonl"),  # the policy saved, its training log not yet
    ]
    for n, (point, missing) in enumerate(kills):
        code, out, err = _cli("run" if n == 0 else "resume", str(cfg if n == 0 else run), failpoints=f"{point}=kill")
        assert code == -signal.SIGKILL, f"{point}: the run ended ({code}) before the kill point:\n{err}"
        assert not missing.exists(), point
    assert (r2 / "checkpoint").exists()
    code, out, err = _cli("resume", str(run))
    assert code == 0, err
    _same_as_clean(clean, run)


def test_ctrl_c_and_sigterm_stop_at_once_and_resume_matches(clean, tiny_model_dir, tmp_path):
    run = tmp_path / "interrupted"
    code, out, err = _cli(
        "run", str(_config(tiny_model_dir, run, tmp_path)), failpoints="progress:training@2=interrupt"
    )
    assert code == 130 and "interrupted" in err and f"iterpo resume {run}" in err and "Traceback" not in err, err
    assert not (run / "round-001" / "train.jsonl").exists() and not (run / ".lock").exists()
    code, out, err = _cli("resume", str(run), failpoints="progress:sampling@3=term")
    assert code == 143 and "SIGTERM" in err and "Traceback" not in err, err
    assert not (run / "round-002" / "rollouts.parquet").exists()
    code, out, err = _cli("resume", str(run))
    assert code == 0, err
    _same_as_clean(clean, run)


def test_a_real_sigint_from_outside_stops_the_run(tiny_model_dir, tmp_path):
    run = tmp_path / "ctrl-c"
    proc = _cli("run", str(_config(tiny_model_dir, run, tmp_path)), failpoints="progress:training@1=stop", wait=False)
    deadline = time.time() + 120
    while not _stopped(proc.pid):
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)  # delivered when it continues, in the middle of training
    proc.send_signal(signal.SIGCONT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "Traceback" not in err, err


def _stopped(pid: int) -> bool:
    return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "T"


def test_disk_full_leaves_no_partial_file_and_resume_matches(clean, tiny_model_dir, tmp_path):
    run = tmp_path / "full"
    code, out, err = _cli(
        "run", str(_config(tiny_model_dir, run, tmp_path)), failpoints="write:round-001/judgements.parquet=enospc"
    )
    assert code == 1 and "no space left on the device" in err and "round-001/judgements.parquet" in err, err
    assert "Traceback" not in err and f"iterpo resume {run}" in err
    assert not (run / "round-001" / "judgements.parquet").exists() and (run / "round-001" / "rollouts.parquet").exists()
    _no_leftovers(run)
    code, out, err = _cli("resume", str(run))
    assert code == 0, err
    _same_as_clean(clean, run)


def test_disk_full_on_a_real_small_file_system(clean, tiny_model_dir, tmp_path):
    """A 24 MB tmpfs with 1 MB free: the first checkpoint does not fit; freed, the resumed run completes."""
    mount, keep = tmp_path / "disk", tmp_path / "kept"
    mount.mkdir()
    cfg = _config(tiny_model_dir, mount / "run", tmp_path)
    env = cli_env()
    iterpo = f"{sys.executable} -m iterpo"
    script = f"""
        set -u
        mount -t tmpfs -o size=24m tmpfs {mount} || exit 77
        dd if=/dev/zero of={mount}/ballast bs=1M count=23 status=none
        {iterpo} run {cfg} > {tmp_path}/first.out 2> {tmp_path}/first.err; echo $? > {tmp_path}/first.code
        find {mount}/run -name '.*' ! -name .lock > {tmp_path}/leftovers
        rm {mount}/ballast
        {iterpo} resume {mount}/run > {tmp_path}/second.out 2> {tmp_path}/second.err; echo $? > {tmp_path}/second.code
        cp -a {mount}/run {keep}
    """
    done = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script], cwd=REPO, env=env)
    if done.returncode == 77 or not (tmp_path / "first.code").exists():
        pytest.skip("cannot mount a tmpfs in a new mount namespace here")
    first_err = (tmp_path / "first.err").read_text()
    assert (tmp_path / "first.code").read_text().strip() == "1", first_err
    assert "no space left on the device" in first_err and "Traceback" not in first_err, first_err
    assert (tmp_path / "leftovers").read_text() == ""
    assert (tmp_path / "second.code").read_text().strip() == "0", (tmp_path / "second.err").read_text()
    _same_as_clean(clean, keep)


def test_a_second_process_is_refused_and_the_first_finishes(clean, tiny_model_dir, tmp_path):
    run = tmp_path / "busy"
    cfg = _config(tiny_model_dir, run, tmp_path)
    first = _cli("run", str(cfg), failpoints="progress:sampling@2=stop", wait=False)
    deadline = time.time() + 120
    while not _stopped(first.pid):
        assert first.poll() is None and time.time() < deadline, first.communicate()
        time.sleep(0.05)
    before = _stored(run)
    for args in (("run", str(cfg)), ("resume", str(run))):
        code, out, err = _cli(*args)
        assert code == 2 and "in use by another iterpo process" in err and f"pid {first.pid}" in err, err
    code, out, err = _cli("status", str(run))  # reading is allowed
    assert code == 0, err
    assert _stored(run) == before
    first.send_signal(signal.SIGCONT)
    out, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    _same_as_clean(clean, run)


def test_damaged_stage_files_are_set_aside_and_recomputed(clean, tiny_model_dir, tmp_path):
    run = tmp_path / "damaged"
    code, out, err = _cli("run", str(_config(tiny_model_dir, run, tmp_path)))
    assert code == 0, err
    rollouts = run / "round-001" / "rollouts.parquet"
    rollouts.write_bytes(rollouts.read_bytes()[: rollouts.stat().st_size // 2])  # a truncated copy
    weights = run / "round-002" / "checkpoint" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped bit pattern inside the weights
    weights.write_bytes(bytes(data))
    (run / "round-001" / "eval.json").write_text("{}")
    code, out, err = _cli("resume", str(run))
    assert code == 0, err
    for name in ("round-001/rollouts.parquet", "round-002/checkpoint", "round-001/eval.json"):
        assert f"{name} is damaged" in " ".join(out.split()).replace(str(run) + "/", ""), name
        assert (run / f"{name}.damaged").exists()
    _same_as_clean(clean, run)


def test_a_damaged_file_that_recomputes_differently_is_refused(tiny_model_dir, tmp_path, monkeypatch):
    """Later stages were made from the original: iterpo refuses rather than mix two versions."""
    import iterpo.stages.judge
    from iterpo.config import load_config
    from iterpo.errors import DamagedFile

    config = load_config(_config(tiny_model_dir, tmp_path / "run", tmp_path), ["run.rounds=1"])
    run_config(config)
    path = tmp_path / "run" / "round-001" / "judgements.parquet"
    path.write_bytes(b"not parquet")
    real = iterpo.stages.judge.judge_all
    monkeypatch.setattr(
        iterpo.stages.judge,
        "judge_all",
        lambda *a, **k: [type(j)(**{**j.__dict__, "score": 1 - j.score}) for j in real(*a, **k)],
    )  # a judge that changed its mind
    for _ in range(2):  # and again on the next resume: the recomputed file is never taken for the original
        with pytest.raises(DamagedFile, match="computing it again gave different contents"):
            run_config(config)
        assert not path.exists() and (tmp_path / "run" / "round-001" / "judgements.parquet.recomputed").exists()
        (tmp_path / "run" / "round-001" / "judgements.parquet.recomputed").unlink()
