"""The run directory: atomic writes, a manifest, one folder per round.

    RUN_DIR/
      config.yaml        the fully resolved config, as run
      manifest.json      library version, config fingerprint, stage times
      round-000/eval.json                    the starting model, evaluated
      round-001/rollouts/shard-00000.parquet ...   sampling, shard by shard
                rollouts.parquet judgements.parquet preferences.parquet
                ref_logps.parquet train.jsonl checkpoint/ eval.json

Every file is written under a temporary name and renamed into place, so a file
that exists is complete; a stage is done when its output exists.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Optional

import pyarrow as pa
import pyarrow.parquet as pq

from iterpo import __version__
from iterpo.config import Config, dump_config
from iterpo.errors import RunDirError


def _atomic(path: Path, write: Callable[[Path], None]) -> None:
    """Call write(tmp) on a temporary file beside path, then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(path: Path, text: str) -> None:
    _atomic(path, lambda tmp: tmp.write_text(text))


def write_json(path: Path, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


def write_parquet(path: Path, table: pa.Table) -> None:
    _atomic(path, lambda tmp: pq.write_table(table, tmp))


def read_parquet(path: Path) -> pa.Table:
    return pq.read_table(path)


def write_dir(path: Path, fill: Callable[[Path], None]) -> None:
    """Fill a temporary directory, then rename it to path (replacing a stale one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        fill(tmp)
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


class RunStore:
    """Paths and manifest of one run directory."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    # ---- creation and checks

    @classmethod
    def open(cls, config: Config, force: bool = False) -> "RunStore":
        """Create the run directory for config, or reopen it if it was made with the same config."""
        store = cls(config.run.dir)
        manifest = store.manifest()
        if manifest is not None and manifest.get("config_fingerprint") != config.fingerprint() and not force:
            raise RunDirError(
                f"run directory {store.root} was made with a different config "
                f"(fingerprint {manifest.get('config_fingerprint')}, this one {config.fingerprint()}); "
                "choose another directory with --set run.dir=PATH, or pass --force to continue it with the new config"
            )
        store.root.mkdir(parents=True, exist_ok=True)
        write_text(store.root / "config.yaml", dump_config(config))
        if manifest is None:
            manifest = {"created_by": f"iterpo {__version__}", "stages": {}}
        manifest["config_fingerprint"] = config.fingerprint()
        manifest["iterpo_version"] = __version__
        write_json(store.manifest_path, manifest)
        return store

    @classmethod
    def existing(cls, root: str | Path) -> "RunStore":
        store = cls(root)
        if not (store.root / "config.yaml").is_file() or store.manifest() is None:
            raise RunDirError(f"{store.root} is not an iterpo run directory (no config.yaml or manifest.json)")
        return store

    # ---- paths

    @property
    def manifest_path(self) -> Path:
        return self.root / "manifest.json"

    @property
    def config_path(self) -> Path:
        return self.root / "config.yaml"

    def round_dir(self, round_idx: int) -> Path:
        return self.root / f"round-{round_idx:03d}"

    def path(self, round_idx: int, name: str) -> Path:
        return self.round_dir(round_idx) / name

    def shard_path(self, round_idx: int, stage: str, shard: int) -> Path:
        return self.round_dir(round_idx) / stage / f"shard-{shard:05d}.parquet"

    # ---- manifest

    def manifest(self) -> Optional[dict]:
        if not self.manifest_path.is_file():
            return None
        return read_json(self.manifest_path)

    def record_stage(self, round_idx: int, stage: str, seconds: float, **info) -> None:
        manifest = self.manifest() or {"stages": {}}
        manifest.setdefault("stages", {})[f"round-{round_idx:03d}/{stage}"] = {"seconds": round(seconds, 3), **info}
        write_json(self.manifest_path, manifest)

    def stage_seconds(self, round_idx: int) -> dict[str, float]:
        prefix = f"round-{round_idx:03d}/"
        stages = (self.manifest() or {}).get("stages", {})
        return {k[len(prefix):]: v["seconds"] for k, v in stages.items() if k.startswith(prefix)}

    def stage_info(self, round_idx: int, stage: str) -> Optional[dict]:
        """What a finished stage recorded (seconds and its own figures), or None."""
        return (self.manifest() or {}).get("stages", {}).get(f"round-{round_idx:03d}/{stage}")
