"""Files that are either whole or absent: atomic writes, checksums, and injected faults.

Every file iterpo writes goes through ``atomic_write`` (or ``atomic_dir`` for a
directory): written under a temporary name beside its target, flushed to disk,
then renamed into place. A reader therefore sees the old file or the new one,
never half of one, whatever kills the process. A write that fails (a full disk,
a crash inside the writer) removes its temporary and leaves the old file.

``digest`` gives a file's or directory's checksum; the run store records it
when a file is written and checks it when a resumed run finds the file, so a
file damaged later (a truncated copy, a full disk during an outside copy) is
noticed instead of trained on.

Fault injection: ``ITERPO_FAILPOINTS="EVENT=ACTION[,EVENT=ACTION...]"`` makes the
process kill or interrupt itself, or fail a write as a full disk would, at a
chosen point, so crash-safety tests are fast and exact. Events are
``write:PATH`` (the temporary is complete, the target not yet replaced),
``written:PATH`` (just after the rename; PATH matches any path ending with it)
and ``progress:LABEL@N`` (a progress bar, e.g. ``training``, reaches N or more).
With ``ITERPO_FAILPOINT_ONCE_DIR`` set, each fires in one process only.
Actions: ``kill`` (SIGKILL), ``interrupt`` (SIGINT, as Ctrl-C), ``term``
(SIGTERM), ``stop`` (SIGSTOP: the process waits, holding what it holds, until
SIGCONT), ``enospc`` (the write fails with "no space left on device").

This module imports nothing from iterpo but its errors.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import json
import os
import shutil
import signal
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from iterpo.errors import DiskFull, RunDirError

if TYPE_CHECKING:
    import pyarrow as pa

NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
SIGNALS = {"kill": signal.SIGKILL, "interrupt": signal.SIGINT, "term": signal.SIGTERM, "stop": signal.SIGSTOP}


# ---------------------------------------------------------------- injected faults


_FIRED: set[tuple[str, str]] = set()


@functools.cache
def _failpoints(spec: str) -> tuple[tuple[str, str], ...]:
    points = []
    for item in filter(None, (x.strip() for x in spec.split(","))):
        event, _, action = item.rpartition("=")
        if action not in SIGNALS and action != "enospc" or not event:
            raise ValueError(
                f"ITERPO_FAILPOINTS: {item!r} is not EVENT=ACTION with ACTION one of {', '.join(SIGNALS)}, enospc"
            )
        points.append((event, action))
    return tuple(points)


def _first_anywhere(pattern: str, action: str) -> bool:
    """With ITERPO_FAILPOINT_ONCE_DIR set, a failpoint fires in one process only (e.g. one of a cluster's workers,
    not again in the worker that replaces it): the first to create its marker file there."""
    where = os.environ.get("ITERPO_FAILPOINT_ONCE_DIR")
    if not where:
        return True
    marker = Path(where) / hashlib.sha256(f"{pattern}={action}".encode()).hexdigest()[:16]
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        return True
    except FileExistsError:
        return False


def failpoint(event: str) -> None:
    """Carry out the action ITERPO_FAILPOINTS names for event (nothing when it names none)."""
    spec = os.environ.get("ITERPO_FAILPOINTS")
    if not spec:
        return
    kind, _, subject = event.partition(":")
    for pattern, action in _failpoints(spec):
        want_kind, _, target = pattern.partition(":")
        if want_kind != kind:
            continue
        if kind == "progress":  # LABEL@N fires once the bar named LABEL reaches N
            label, _, count = subject.rpartition("@")
            want_label, _, want = target.rpartition("@")
            if label != want_label or int(count) < int(want):
                continue
        if kind != "progress" and subject != target and not subject.endswith("/" + target):
            continue
        if action == "enospc":  # every matching write fails, as on a disk that stays full
            raise OSError(errno.ENOSPC, "No space left on device (injected by ITERPO_FAILPOINTS)")
        if (pattern, action) not in _FIRED and _first_anywhere(pattern, action):  # a signal is sent once
            _FIRED.add((pattern, action))
            os.kill(os.getpid(), SIGNALS[action])


# ---------------------------------------------------------------- atomic writes


def _fsync(path: Path) -> None:
    """Flush a written file to disk, so a full disk or an I/O error shows up before the rename, not after."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _is_no_space(exc: BaseException) -> bool:
    """A full disk, also when a library (safetensors, Arrow) reports it in its own exception type."""
    seen = 0
    cur: BaseException | None = exc  # then its causes and contexts, until there are none
    while cur is not None and seen < 10:
        if isinstance(cur, OSError) and cur.errno in NO_SPACE:
            return True
        text = str(cur)
        if "No space left on device" in text or "StorageFull" in text or "os error 28" in text:
            return True
        cur, seen = cur.__cause__ or cur.__context__, seen + 1
    return False


def _no_space(path: Path, exc: BaseException) -> DiskFull:
    return DiskFull(
        f"no space left on the device while writing {path}; nothing partial was left behind and "
        "earlier files are intact. Free some space first"
    )


def _cannot_write(path: Path, exc: OSError) -> RunDirError:
    return RunDirError(f"cannot write {path}: {exc.strerror or exc}")


def atomic_write(
    path: Path, write: Callable[[Path], object], before_rename: Callable[[Path], None] | None = None
) -> None:
    """Call write(tmp) on a temporary file beside path, flush it, then rename it into place.

    before_rename(tmp) runs on the complete temporary just before the rename
    (the run store records its checksum there). On any failure the temporary
    is removed and the old file, if any, stays as it was.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
    except OSError as exc:
        raise (_no_space(path, exc) if _is_no_space(exc) else _cannot_write(path, exc)) from None
    tmp = Path(tmp_name)
    try:
        write(tmp)
        _fsync(tmp)
        failpoint(f"write:{path}")
        if before_rename is not None:
            before_rename(tmp)
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        error = _translated(path, exc)
        if error is exc:
            raise
        raise error from None
    failpoint(f"written:{path}")


def _translated(path: Path, exc: BaseException) -> BaseException:
    """The error to raise for a failed write: a clear one for a full disk or a refused write, else exc itself."""
    if isinstance(exc, Exception) and _is_no_space(exc):
        return _no_space(path, exc)
    if isinstance(exc, PermissionError) or (isinstance(exc, OSError) and exc.errno == errno.EROFS):
        return _cannot_write(path, exc)
    return exc


def atomic_dir(path: Path, fill: Callable[[Path], None], before_rename: Callable[[Path], None] | None = None) -> None:
    """Fill a temporary directory beside path, flush its files, then put it in place of path (replacing it)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    except OSError as exc:
        raise (_no_space(path, exc) if _is_no_space(exc) else _cannot_write(path, exc)) from None
    old = path.with_name(f".{path.name}.old")
    try:
        fill(tmp)
        for f in sorted(tmp.rglob("*")):
            if f.is_file():
                _fsync(f)
        failpoint(f"write:{path}")
        if before_rename is not None:
            before_rename(tmp)
        if path.exists():
            # A directory cannot replace a non-empty one in one rename: the old copy steps aside first.
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException as exc:
        if not path.exists() and old.exists():  # stopped between the two renames: the old copy goes back
            os.replace(old, path)
        shutil.rmtree(tmp, ignore_errors=True)
        error = _translated(path, exc)
        if error is exc:
            raise
        raise error from None
    failpoint(f"written:{path}")


def write_text(path: Path, text: str, before_rename: Callable[[Path], None] | None = None) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"), before_rename)


def write_json(path: Path, data: Any, before_rename: Callable[[Path], None] | None = None) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n", before_rename)


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def write_parquet(path: Path, table: pa.Table, before_rename: Callable[[Path], None] | None = None) -> None:
    import pyarrow.parquet as pq

    atomic_write(path, lambda tmp: pq.write_table(table, tmp), before_rename)


def read_parquet(path: Path) -> pa.Table:
    import pyarrow.parquet as pq

    return pq.read_table(path)


# ---------------------------------------------------------------- checksums


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def stat_of(path: Path) -> dict[str, int]:
    """Size and modification time of a file, or of a directory's files (total bytes, latest time, count)."""
    path = Path(path)
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    stats = [f.stat() for f in files]
    return {
        "bytes": sum(s.st_size for s in stats),
        "mtime_ns": max((s.st_mtime_ns for s in stats), default=0),
        "files": len(stats),
    }


def digest(path: Path) -> str:
    """sha256 of a file, or of a directory: every file's relative path and sha256, in sorted order."""
    path = Path(path)
    if path.is_file():
        return "sha256:" + file_sha256(path)
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(f"{f.relative_to(path).as_posix()}\0{file_sha256(f)}\n".encode())
    return "sha256-tree:" + h.hexdigest()
