"""The run store and its files: atomic writes, checksums, the lock, injected faults."""

import os
import subprocess
import sys

import pyarrow as pa
import pytest
import yaml

from iterpo.config import load_config
from iterpo.errors import DiskFull, RunDirError
from iterpo.io import atomic_dir, atomic_write, digest, read_json, read_parquet, write_json, write_parquet
from iterpo.plan import UNHASHED, fingerprint, resolve
from iterpo.store import RunStore


def test_atomic_write_leaves_old_file_when_writer_fails(tmp_path):
    path = tmp_path / "x.json"
    write_json(path, {"a": 1})

    class Boom(Exception):
        pass

    def failing(tmp):
        tmp.write_text("half")
        raise Boom()

    with pytest.raises(Boom):
        atomic_write(path, failing)
    assert read_json(path) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]  # no temporary left behind


def test_parquet_round_trip_and_dir_write(tmp_path):
    table = pa.table({"a": [1, 2], "b": ["x", "y"]})
    write_parquet(tmp_path / "t.parquet", table)
    assert read_parquet(tmp_path / "t.parquet").equals(table)
    atomic_dir(tmp_path / "d", lambda d: (d / "f").write_text("1"))
    atomic_dir(tmp_path / "d", lambda d: (d / "g").write_text("2"))  # replaces the old one whole
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["g"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d", "t.parquet"]


def test_a_full_disk_leaves_no_partial_file_and_says_so(tmp_path, monkeypatch):
    path = tmp_path / "x.json"
    write_json(path, {"a": 1})
    monkeypatch.setenv("ITERPO_FAILPOINTS", "write:x.json=enospc")
    with pytest.raises(DiskFull, match="no space left.*x.json"):
        write_json(path, {"a": 2})
    with pytest.raises(DiskFull):
        atomic_dir(tmp_path / "x.json", lambda d: (d / "f").write_text("1"))
    monkeypatch.delenv("ITERPO_FAILPOINTS")
    assert read_json(path) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]


def test_digest_of_files_and_directories(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a").write_text("1")
    (tmp_path / "d" / "b").write_text("2")
    first = digest(tmp_path / "d")
    assert first.startswith("sha256-tree:") and digest(tmp_path / "d") == first
    (tmp_path / "d" / "b").write_text("3")
    assert digest(tmp_path / "d") != first
    (tmp_path / "d" / "b").rename(tmp_path / "d" / "c")
    assert digest(tmp_path / "d") not in (first,)
    assert digest(tmp_path / "d" / "a") == "sha256:6b86b273ff34fce19d6b804eff5a3f5747ada4eaa22f1d49c01e52ddb7875b4b"


def _open(config, force=False):
    resolved = resolve(config)
    return RunStore.open(config.run.dir, yaml.safe_dump(resolved), fingerprint(resolved), force, UNHASHED)


def _store(tmp_path, *overrides):
    return _open(load_config(overrides=[f"run.dir={tmp_path / 'run'}", *overrides]))


def test_run_dir_with_other_config_is_refused_unless_forced(tmp_path):
    store = _store(tmp_path)
    store.record_stage(1, "sample", 2.5, new_tokens=10)
    assert store.stage_seconds(1) == {"sample": 2.5}
    store.close()
    _store(tmp_path, "run.threads=1").close()  # threads do not change results
    other = load_config(overrides=[f"run.dir={tmp_path / 'run'}", "train.lr=1e-3"])
    with pytest.raises(RunDirError, match=r"different config .*: train\.lr 2e-05 -> 0\.001;"):
        _open(other)
    _open(other, force=True).close()
    assert store.manifest()["config_fingerprint"] == fingerprint(resolve(other))
    assert store.stage_seconds(1) == {"sample": 2.5}  # stage records survive reopening


def test_checksums_tell_intact_damaged_unrecorded_and_missing_files(tmp_path):
    store = _store(tmp_path)
    path = store.path(1, "rollouts.parquet")
    assert store.check(path) == "missing"
    store.write_parquet(path, pa.table({"a": [1, 2, 3]}))
    store.write_dir(store.path(1, "checkpoint"), lambda d: (d / "w").write_bytes(b"\0" * 100))
    assert store.check(path) == "ok" and store.check(store.path(1, "checkpoint")) == "ok"
    assert store.written_after(path) == ["round-001/checkpoint"]
    with open(path, "r+b") as f:  # one flipped byte in the middle
        f.seek(20)
        byte = f.read(1)
        f.seek(20)
        f.write(bytes([byte[0] ^ 1]))
    assert store.check(path) == "damaged"
    (store.path(1, "checkpoint") / "w").write_bytes(b"\0" * 99)
    assert store.check(store.path(1, "checkpoint")) == "damaged"
    aside = store.set_aside(path)
    assert aside.name == "rollouts.parquet.damaged" and store.check(path) == "missing"
    assert store.recorded_digest(path) is not None  # the run still expects the file as it was written
    pa.parquet.write_table(pa.table({"a": [1]}), path)  # something else in its place: not what was recorded
    assert store.check(path) == "damaged"
    other = store.path(1, "other.parquet")
    pa.parquet.write_table(pa.table({"a": [1]}), other)  # written behind the store's back: no checksum
    assert store.check(other) == "unrecorded"
    store.close()


def test_a_second_process_is_refused_while_the_first_holds_the_run(tmp_path):
    store = _store(tmp_path)
    code = (
        "import sys; from iterpo.store import RunStore\n"
        f"RunStore.open('{tmp_path / 'run'}', '', '{store.manifest()['config_fingerprint']}')"
    )
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert other.returncode != 0 and "in use by another iterpo process" in other.stderr
    assert f"pid {os.getpid()}" in other.stderr
    store.close()
    assert not (tmp_path / "run" / ".lock").exists()
    ok = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr


def test_a_lock_left_by_a_killed_process_is_recovered(tmp_path):
    config = load_config(overrides=[f"run.dir={tmp_path / 'run'}"])
    code = (
        "import os, signal; from iterpo.store import RunStore\n"
        f"store = RunStore.open('{tmp_path / 'run'}', '', '{fingerprint(resolve(config))}')\n"
        "os.kill(os.getpid(), signal.SIGKILL)"
    )
    subprocess.run([sys.executable, "-c", code])
    assert (tmp_path / "run" / ".lock").exists()  # the record is left behind, the kernel lock is not
    store = _store(tmp_path)
    assert read_json(tmp_path / "run" / ".lock")["pid"] == os.getpid()
    store.close()


def test_damaged_manifest_is_named(tmp_path):
    _store(tmp_path).close()
    (tmp_path / "run" / "manifest.json").write_text('{"stages": {')
    with pytest.raises(RunDirError, match="manifest.json is not valid JSON"):
        RunStore.existing(tmp_path / "run")


def test_the_refusal_names_what_changed_and_survives_an_unreadable_config_yaml(tmp_path):
    _store(tmp_path).close()
    many = [f"run.dir={tmp_path / 'run'}", "train.lr=1e-3", "train.epochs=5", "loss.beta=0.3"]
    with pytest.raises(RunDirError) as refused:
        _open(load_config(overrides=many))
    assert "loss.beta 0.1 -> 0.3, train.epochs 2 -> 5, train.lr 2e-05 -> 0.001;" in str(refused.value)
    (tmp_path / "run" / "config.yaml").write_text("[not: a mapping")
    with pytest.raises(RunDirError, match=r"different config \(fingerprint \w+, this one \w+\); choose"):
        _open(load_config(overrides=many))
