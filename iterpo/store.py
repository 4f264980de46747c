"""The run directory: one folder per round, a manifest, checksums, and a lock.

    RUN_DIR/
      config.yaml        the fully resolved config, as run
      manifest.json      library version, config fingerprint, stage times, every file's checksum
      .lock              who holds the run (pid, host, command) while a process works on it
      round-000/eval.json                    the starting model, evaluated
      round-001/rollouts/shard-00000.parquet ...   sampling, shard by shard
                rollouts.parquet judgements.parquet preferences.parquet
                ref_logps.parquet train.jsonl checkpoint/ eval.json

Every file is written atomically (iterpo.io). Its checksum is recorded in the
manifest just before it is renamed into place, so every file of the run has
one; ``check`` compares a file with it. A stage is done when its outputs exist
and match their checksums: a resumed run recomputes a stage whose output is
damaged (moving the damaged copy aside as ``NAME.damaged``) instead of reading it.

One process at a time works on a run directory: ``lock`` takes an exclusive
``flock`` on the directory, which the kernel releases when the process ends
however it ends, so a lock left by a killed process is recovered by the next.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import socket
import sys
import time
import weakref
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any, Literal

import yaml

from iterpo import __version__
from iterpo.errors import RunDirError, reading
from iterpo.io import (
    atomic_dir,
    atomic_write,
    digest,
    read_json,
    read_parquet,
    stat_of,
    write_json,
    write_parquet,
    write_text,
)

Check = Literal["ok", "missing", "damaged", "unrecorded"]
FORMAT = 2  # the run directory's layout; 2: responses carry their source, every file its checksum
LARGE = 64 * 2**20  # files (or directories) at least this big are checked by size and times when those match


_HELD: dict[str, list] = {}  # run directories this process has locked: real path -> [fd, stores holding it]


def dotted_settings(config: dict) -> dict[str, str]:
    """A config as run (Plan.resolved, or config.yaml read back) flat: section.field -> its value as text."""

    def walk(node: Any, prefix: str) -> dict[str, str]:
        if isinstance(node, dict) and node:
            out: dict[str, str] = {}
            for key, value in node.items():
                out.update(walk(value, f"{prefix}{key}."))
            return out
        return {prefix[:-1]: json.dumps(node) if not isinstance(node, str) else node}

    return walk(config, "")


def _release_lock(key: str, record: Path) -> None:
    held = _HELD.get(key)
    if held is None:
        return
    held[1] -= 1
    if held[1] == 0:
        record.unlink(missing_ok=True)
        os.close(held[0])
        del _HELD[key]


class RunStore:
    """Paths, manifest, checksums and lock of one run directory."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self._lock_fd: int | None = None

    # ---- creation, checks and the lock

    @classmethod
    def open(
        cls, root: str | Path, config_text: str, fingerprint: str, force: bool = False, unhashed: Collection[str] = ()
    ) -> RunStore:
        """Create the run directory, or reopen it if it was made with the same config (the fingerprint); lock it.

        config_text is the config as run, saved as config.yaml; unhashed: its settings ('section.key') the
        fingerprint leaves out, never named as a difference when a directory is refused.
        """
        store = cls(root)
        if store.root.exists() and not store.root.is_dir():
            raise RunDirError(
                f"run.dir {store.root} exists and is not a directory; choose another with --set run.dir=PATH"
            )
        fresh = not store.manifest_path.exists()
        others = (
            [p for p in store.root.iterdir() if not p.name.startswith(".") and p.name != "config.yaml"]
            if store.root.is_dir()
            else []
        )
        if fresh and others and not force:
            raise RunDirError(
                f"run.dir {store.root} holds other files and is not an iterpo run directory; choose "
                "an empty or new directory with --set run.dir=PATH, or pass --force to use it anyway"
            )
        # Checked before the lock too, so a refused directory is left exactly as it was (no lock record written).
        store._check_fingerprint(None if fresh else store.manifest(), fingerprint, force, config_text, unhashed)
        try:
            store.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RunDirError(f"run.dir {store.root} cannot be created: {exc.strerror or exc}") from None
        store.lock()
        try:
            manifest = store.manifest()  # again under the lock: another process may have made or changed it
            store._check_fingerprint(manifest, fingerprint, force, config_text, unhashed)
            write_text(store.config_path, config_text)
            if manifest is None:
                manifest = {"created_by": f"iterpo {__version__}", "format": FORMAT, "stages": {}, "files": {}}
            manifest["config_fingerprint"] = fingerprint
            manifest["iterpo_version"] = __version__
            store._write_manifest(manifest)
        except BaseException:
            store.close()
            raise
        return store

    def _check_fingerprint(
        self, manifest: dict | None, fingerprint: str, force: bool, config_text: str, unhashed: Collection[str]
    ) -> None:
        if manifest is not None and manifest.get("config_fingerprint") != fingerprint and not force:
            changes = self._changes(config_text, unhashed)
            raise RunDirError(
                f"run directory {self.root} was made with a different config "
                f"(fingerprint {manifest.get('config_fingerprint')}, this one {fingerprint}){changes}; "
                "choose another directory with --set run.dir=PATH, or pass --force to continue it with the new config"
            )

    def _changes(self, config_text: str, unhashed: Collection[str], most: int = 8) -> str:
        """The settings outside `unhashed` in which config_text differs from the run's config.yaml, as
        ': a.b 1 -> 2, ...' (at most `most` named), or '' when that file cannot be read."""
        try:
            old, new = yaml.safe_load(self.config_path.read_text()), yaml.safe_load(config_text)
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            return ""
        if not isinstance(old, dict) or not isinstance(new, dict):
            return ""
        before, after = dotted_settings(old), dotted_settings(new)
        unset = "(not set)"
        changed = [
            f"{key} {before.get(key, unset)} -> {after.get(key, unset)}"
            for key in sorted((before.keys() | after.keys()) - set(unhashed))
            if before.get(key, unset) != after.get(key, unset)
        ]
        if not changed:
            return ""
        more = f" and {len(changed) - most} more" if len(changed) > most else ""
        return ": " + ", ".join(changed[:most]) + more

    @classmethod
    def existing(cls, root: str | Path) -> RunStore:
        store = cls(root)
        if not store.root.is_dir():
            why = "not a directory" if store.root.exists() else "no such directory"
            raise RunDirError(f"{store.root} is not an iterpo run directory ({why})")
        if not store.config_path.is_file() or not store.manifest_path.is_file():
            raise RunDirError(f"{store.root} is not an iterpo run directory (no config.yaml or manifest.json)")
        store.manifest()  # a damaged manifest is named now
        return store

    def lock(self) -> None:
        """Take the run directory for this process, or fail naming the process that holds it.

        Re-entrant within a process (a test or a notebook may open the same run twice); another process is refused.
        """
        key = os.path.realpath(self.root)
        if key not in _HELD:
            fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                holder = self._lock_holder()
                who = (
                    (
                        f"pid {holder.get('pid')} on host {holder.get('host')}, `{holder.get('command')}`, since "
                        f"{holder.get('since')}"
                    )
                    if holder
                    else "a process that has not yet recorded itself"
                )
                raise RunDirError(
                    f"run directory {self.root} is in use by another iterpo process ({who}); wait for "
                    "it to finish or stop it, then run again"
                ) from None
            except OSError:
                pass  # a file system without locks: go on unlocked rather than refuse to run
            stale = self._lock_holder()
            if stale:
                print(
                    f"iterpo: recovered the lock left by pid {stale.get('pid')} on host {stale.get('host')}, "
                    "which no longer holds it",
                    file=sys.stderr,
                )
            try:
                write_json(
                    self.root / ".lock",
                    {
                        "pid": os.getpid(),
                        "host": socket.gethostname(),
                        "command": " ".join(["iterpo", *sys.argv[1:]])[:200],
                        "since": time.strftime("%Y-%m-%d %H:%M:%S"),
                    },
                )
            except BaseException:  # e.g. a full disk: give the lock back at once
                os.close(fd)
                raise
            _HELD[key] = [fd, 0]
        _HELD[key][1] += 1
        # A store dropped without close() (a library caller, a test) must not keep the run locked until exit.
        self._release = weakref.finalize(self, _release_lock, key, self.root / ".lock")
        self._lock_fd = _HELD[key][0]

    def _lock_holder(self) -> dict | None:
        try:
            return json.loads((self.root / ".lock").read_text())
        except (OSError, ValueError):
            return None

    def close(self) -> None:
        """Release the lock (the kernel also releases it when the process ends)."""
        if self._lock_fd is not None:
            self._release()
            self._lock_fd = None

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

    def _rel(self, path: Path) -> str:
        return Path(path).relative_to(self.root).as_posix()

    # ---- manifest

    def manifest(self) -> dict | None:
        if not self.manifest_path.is_file():
            return None
        with reading("run directory", self.manifest_path, RunDirError):
            manifest = read_json(self.manifest_path)
        if isinstance(manifest, dict) and manifest.get("format", 1) < FORMAT:
            raise RunDirError(
                f"run directory {self.root} was made by an earlier iterpo (run directory format "
                f"{manifest.get('format', 1)}, this iterpo reads format {FORMAT}): it names where responses came from "
                "by index offsets, not by source. Finish it with the iterpo that made it, or start a new run"
            )
        files = manifest.get("files", {}) if isinstance(manifest, dict) else None
        if (
            not isinstance(manifest, dict)
            or not isinstance(manifest.get("stages", {}), dict)
            or not isinstance(files, dict)
            or not all(isinstance(v, dict) and "digest" in v and "seq" in v for v in files.values())
        ):
            raise RunDirError(
                f"run directory: {self.manifest_path} is damaged (not an iterpo manifest); restore it "
                "from a copy, or start the run again in a new directory"
            )
        return manifest

    def _write_manifest(self, manifest: dict) -> None:
        write_json(self.manifest_path, manifest)

    def _update(self, change: Callable[[dict], None]) -> None:
        manifest = self.manifest() or {"stages": {}, "files": {}}
        change(manifest)
        self._write_manifest(manifest)

    def record_stage(self, round_idx: int, stage: str, seconds: float, **info) -> None:
        def change(m):
            m.setdefault("stages", {})[f"round-{round_idx:03d}/{stage}"] = {"seconds": round(seconds, 3), **info}

        self._update(change)

    def stage_seconds(self, round_idx: int) -> dict[str, float]:
        prefix = f"round-{round_idx:03d}/"
        stages = (self.manifest() or {}).get("stages", {})
        return {k[len(prefix) :]: v["seconds"] for k, v in stages.items() if k.startswith(prefix)}

    def stage_info(self, round_idx: int, stage: str) -> dict | None:
        """What a finished stage recorded (seconds and its own figures), or None."""
        return (self.manifest() or {}).get("stages", {}).get(f"round-{round_idx:03d}/{stage}")

    # ---- files with checksums

    def _record(self, path: Path) -> Callable[[Path], None]:
        """before_rename hook: record the complete temporary's checksum under path's name."""

        def record(tmp: Path) -> None:
            entry = digest(tmp)
            stat = stat_of(tmp)  # the rename keeps sizes and times: a large file that still has them is not re-read

            def change(m):
                m["written"] = m.get("written", 0) + 1  # a write counter orders the files (JSON keys are sorted)
                m.setdefault("files", {})[self._rel(path)] = {"digest": entry, "seq": m["written"], "stat": stat}

            self._update(change)

        return record

    def write_parquet(self, path: Path, table) -> None:
        write_parquet(path, table, self._record(path))

    def write_json(self, path: Path, data: Any) -> None:
        write_json(path, data, self._record(path))

    def write_text(self, path: Path, text: str) -> None:
        write_text(path, text, self._record(path))

    def write_dir(self, path: Path, fill: Callable[[Path], None]) -> None:
        atomic_dir(path, fill, self._record(path))

    def copy_in(self, source: Path, path: Path) -> None:
        """Copy a file from elsewhere (e.g. another run's samples) into the run, with its checksum."""
        atomic_write(path, lambda tmp: shutil.copyfile(source, tmp), self._record(path))

    def read_parquet(self, path: Path):
        with reading("run directory", path, RunDirError):
            return read_parquet(path)

    def read_json(self, path: Path) -> Any:
        with reading("run directory", path, RunDirError):
            return read_json(path)

    def remove(self, path: Path) -> None:
        """Delete a file or directory of the run and its checksums."""
        rel = self._rel(path)
        shutil.rmtree(path, ignore_errors=True) if Path(path).is_dir() else Path(path).unlink(missing_ok=True)
        self._update(
            lambda m: m.__setitem__(
                "files", {k: v for k, v in m.get("files", {}).items() if k != rel and not k.startswith(rel + "/")}
            )
        )

    @staticmethod
    def shard(out: Path, n: int) -> Path:
        """Where shard n of a stage's output ``out`` waits until the whole file is written:
        rollouts.parquet -> rollouts/shard-00000.parquet ..."""
        return Path(out).with_suffix("") / f"shard-{n:05d}.parquet"

    def intact_shards(self, out: Path, count: int) -> dict[int, Any]:
        """The shards of out (of ``count``) a crashed stage finished, as tables by number; a damaged one is set aside,
        for the stage to compute again."""
        found = {}
        for n in range(count):
            state = self.check(self.shard(out, n))
            if state == "ok":
                found[n] = self.read_parquet(self.shard(out, n))
            elif state == "damaged":
                self.set_aside(self.shard(out, n))
        return found

    def check(self, path: Path) -> Check:
        """Whether path is there and matches the checksum recorded when it was written."""
        if not Path(path).exists():
            return "missing"
        expected = (self.manifest() or {}).get("files", {}).get(self._rel(path))
        if expected is None:
            return "unrecorded"
        try:
            stat = stat_of(path)
            if stat == expected.get("stat") and stat["bytes"] >= LARGE:
                return "ok"  # model weights: unchanged size and times, not read again (gigabytes on every resume)
            if digest(path) != expected["digest"]:
                return "damaged"
        except OSError:
            return "damaged"
        if stat != expected.get("stat"):  # intact, e.g. copied elsewhere: remember its new times
            self._update(lambda m: m["files"][self._rel(path)].__setitem__("stat", stat))
        return "ok"

    def recorded_digest(self, path: Path) -> str | None:
        entry = self.record(path)
        return entry["digest"] if entry else None

    def record(self, path: Path) -> dict | None:
        """What the manifest recorded when path was written (digest, write order), or None."""
        entry = (self.manifest() or {}).get("files", {}).get(self._rel(path))
        return dict(entry) if entry else None

    def restore_record(self, path: Path, entry: dict) -> None:
        """Put back what the manifest recorded for path (a file the run still expects, with those contents)."""
        self._update(lambda m: m.setdefault("files", {}).__setitem__(self._rel(path), entry))

    def set_aside(self, path: Path, why: str = "damaged") -> Path:
        """Move a file out of the way (kept for inspection as NAME.damaged, or NAME.<why>).

        Its record stays in the manifest: the run still expects the file, with those contents (see written_after).
        """
        target = Path(path).with_name(f"{Path(path).name}.{why}")
        n = 1
        while target.exists():
            n += 1
            target = Path(path).with_name(f"{Path(path).name}.{why}{n}")
        os.replace(path, target)
        return target

    def written_after(self, path: Path) -> list[str]:
        """Files of the run written after path was, and still there (they may have been made from it)."""
        files = (self.manifest() or {}).get("files", {})
        entry = files.get(self._rel(path))
        if entry is None:
            return []
        return sorted(k for k, v in files.items() if v["seq"] > entry["seq"] and (self.root / k).exists())
