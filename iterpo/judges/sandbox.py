"""Run untrusted (model-generated) Python in a sandbox.

Each run gets a throw-away working directory and a fresh process tree inside
new mount, network and PID namespaces (via util-linux ``unshare``; unprivileged
users get a user namespace too):

- no network: the new network namespace has no interface up;
- nothing written outside the working directory: every other mount is
  remounted read-only (see _sandbox_child.py), and as real root the program
  runs as an unprivileged uid;
- limits: wall-clock timeout, CPU seconds, address space, process count, file
  size; the environment is emptied, so no secrets leak in;
- every process the program started dies with it: the sandbox's PID namespace
  is torn down when its first process exits or is killed.

Where namespaces are not available, ``run_python`` raises SandboxUnavailable
rather than run the code with weaker isolation.
"""

from __future__ import annotations

import functools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from iterpo.errors import UserInputError

CHILD = Path(__file__).with_name("_sandbox_child.py")


class SandboxUnavailable(UserInputError):
    """The machine cannot isolate untrusted code (no unshare, or namespaces are forbidden)."""


@dataclass
class SandboxLimits:
    wall_seconds: float = 10.0
    cpu_seconds: int = 5
    memory_mb: int = 512
    max_processes: int = 32
    max_file_mb: int = 16


@dataclass
class SandboxResult:
    status: str  # "ok" (exit 0), "failed" (non-zero exit), "timeout", or "killed" (by a signal: CPU or memory limit)
    returncode: int | None
    stdout: str
    stderr: str
    seconds: float

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def _unshare_command() -> list[str]:
    exe = shutil.which("unshare")
    if exe is None:
        raise SandboxUnavailable("running generated code needs util-linux 'unshare' for isolation; it is not installed")
    cmd = [exe, "--fork", "--pid", "--kill-child", "--mount-proc", "--net", "--mount"]
    if os.geteuid() != 0:
        cmd.append("--map-root-user")
    return cmd


def _world_executable(path: str) -> bool:
    """True when a user with no special rights can reach and run path (every directory above it searchable)."""
    import stat

    p = Path(os.path.realpath(path))
    try:
        if not p.stat().st_mode & stat.S_IXOTH:
            return False
        return all(d.stat().st_mode & stat.S_IXOTH for d in p.parents)
    except OSError:
        return False


@functools.lru_cache(maxsize=1)
def sandbox_python() -> str:
    """The interpreter for untrusted code: it runs as an unprivileged uid, so it must be reachable by anyone.

    This process's interpreter if it is (a venv or pyenv under /root often is not), else the system python3.
    The untrusted program only needs the standard library.
    """
    for candidate in [sys.executable, "/usr/bin/python3", "/usr/local/bin/python3", shutil.which("python3") or ""]:
        if candidate and _world_executable(candidate):
            return os.path.realpath(candidate)
    raise SandboxUnavailable("no Python interpreter that an unprivileged user can run was found for the sandbox "
                             "(tried this interpreter and /usr/bin/python3)")


@functools.lru_cache(maxsize=1)
def check_sandbox() -> str:
    """Fail with SandboxUnavailable unless a trivial program runs isolated; returns a short description."""
    result = run_python("print('ok')", SandboxLimits(wall_seconds=20), _checked=True)
    if not result.ok or result.stdout.strip() != "ok":
        raise SandboxUnavailable(
            "this machine cannot run generated code isolated (new mount, network and PID namespaces via 'unshare' "
            f"failed: {result.stderr.strip()[-300:] or result.status})"
        )
    return "namespaces: mount (read-only outside the work dir), network (none), pid; rlimits; empty environment"


def run_python(code: str, limits: SandboxLimits = SandboxLimits(), files: dict[str, str] | None = None,
               _checked: bool = False) -> SandboxResult:
    """Run ``code`` as main.py in a fresh sandbox; ``files`` are extra files placed beside it."""
    if not _checked:
        check_sandbox()
    workdir = Path(tempfile.mkdtemp(prefix="iterpo-sandbox-"))
    try:
        (workdir / "main.py").write_text(code)
        for name, text in (files or {}).items():
            (workdir / name).write_text(text)
        os.chmod(workdir, 0o777)
        cmd = _unshare_command() + [
            sys.executable, "-I", "-S", str(CHILD), str(workdir), str(limits.cpu_seconds),
            str(limits.memory_mb * 2**20), str(limits.max_processes), str(limits.max_file_mb * 2**20), sandbox_python(),
        ]
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")}, start_new_session=True)
        try:
            out, err = proc.communicate(timeout=limits.wall_seconds)
            status = "ok" if proc.returncode == 0 else ("killed" if proc.returncode < 0 or proc.returncode > 128 else "failed")
        except subprocess.TimeoutExpired:
            _kill_tree(proc)
            out, err = proc.communicate()
            status = "timeout"
        seconds = time.perf_counter() - start
        return SandboxResult(status, proc.returncode, _text(out), _text(err), seconds)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _kill_tree(proc: subprocess.Popen) -> None:
    """Kill the sandbox: its session on this side, and so (by --kill-child) its whole PID namespace."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _text(data: bytes, limit: int = 20000) -> str:
    return data[-limit:].decode("utf-8", errors="replace")
