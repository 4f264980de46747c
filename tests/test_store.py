import pyarrow as pa
import pytest

from iterpo.config import load_config
from iterpo.errors import RunDirError
from iterpo.store import RunStore, read_json, write_dir, write_json, write_parquet, read_parquet


def test_atomic_write_leaves_old_file_when_writer_fails(tmp_path):
    path = tmp_path / "x.json"
    write_json(path, {"a": 1})

    class Boom(Exception):
        pass

    def failing(tmp):
        tmp.write_text("half")
        raise Boom()

    from iterpo.store import _atomic

    with pytest.raises(Boom):
        _atomic(path, failing)
    assert read_json(path) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]  # no temporary left behind


def test_parquet_round_trip_and_dir_write(tmp_path):
    table = pa.table({"a": [1, 2], "b": ["x", "y"]})
    write_parquet(tmp_path / "t.parquet", table)
    assert read_parquet(tmp_path / "t.parquet").equals(table)
    write_dir(tmp_path / "d", lambda d: (d / "f").write_text("1"))
    write_dir(tmp_path / "d", lambda d: (d / "g").write_text("2"))  # replaces the old one whole
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["g"]


def test_run_dir_with_other_config_is_refused_unless_forced(tmp_path):
    cfg = load_config(overrides=[f"run.dir={tmp_path / 'run'}"])
    store = RunStore.open(cfg)
    store.record_stage(1, "sample", 2.5, new_tokens=10)
    assert store.stage_seconds(1) == {"sample": 2.5}
    same = load_config(overrides=[f"run.dir={tmp_path / 'run'}", "run.threads=1"])  # threads do not change results
    RunStore.open(same)
    other = load_config(overrides=[f"run.dir={tmp_path / 'run'}", "train.lr=1e-3"])
    with pytest.raises(RunDirError, match="different config"):
        RunStore.open(other)
    RunStore.open(other, force=True)
    assert store.manifest()["config_fingerprint"] == other.fingerprint()
    assert store.stage_seconds(1) == {"sample": 2.5}  # stage records survive reopening
