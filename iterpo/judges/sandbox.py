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
  is torn down when its first process exits or is killed;
- what iterpo reads back is bounded: of stdout, stderr and the optional result
  pipe (file descriptor 3 in the program) only the last OUTPUT_LIMIT bytes are
  kept, however much the program writes, while the rest is read and dropped.

Where namespaces are not available, ``run_python`` raises SandboxUnavailable
rather than run the code with weaker isolation.
"""

from __future__ import annotations

import functools
import os
import selectors
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
OUTPUT_LIMIT = 64 * 1024  # bytes kept of each stream: the end, where tracebacks and verdicts are


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
    result: str = ""  # what the program wrote to file descriptor 3, when run with result_pipe=True

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
    raise SandboxUnavailable(
        "no Python interpreter that an unprivileged user can run was found for the sandbox "
        "(tried this interpreter and /usr/bin/python3)"
    )


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


def run_python(
    code: str,
    limits: SandboxLimits = SandboxLimits(),
    files: dict[str, str] | None = None,
    stdin: bytes = b"",
    result_pipe: bool = False,
    _checked: bool = False,
) -> SandboxResult:
    """Run ``code`` as main.py in a fresh sandbox; ``files`` are extra files placed beside it.

    ``stdin`` is written to the program's standard input (then closed). With ``result_pipe``, the program
    also gets a pipe on file descriptor 3, whose contents come back as ``SandboxResult.result``.
    """
    if not _checked:
        check_sandbox()
    workdir = Path(tempfile.mkdtemp(prefix="iterpo-sandbox-"))
    result_read = result_write = None
    try:
        (workdir / "main.py").write_text(code)
        for name, text in (files or {}).items():
            (workdir / name).write_text(text)
        os.chmod(workdir, 0o777)
        if result_pipe:
            result_read, result_write = os.pipe()
        cmd = _unshare_command() + [
            sys.executable,
            "-I",
            "-S",
            str(CHILD),
            str(workdir),
            str(limits.cpu_seconds),
            str(limits.memory_mb * 2**20),
            str(limits.max_processes),
            str(limits.max_file_mb * 2**20),
            sandbox_python(),
            str(result_write if result_pipe else -1),
        ]
        start = time.perf_counter()
        proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.PIPE,
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
            start_new_session=True,
            pass_fds=(result_write,) if result_write is not None else (),  # set exactly when result_pipe
        )
        assert proc.stdout is not None and proc.stderr is not None  # both are pipes (PIPE above)
        if result_write is not None:
            os.close(result_write)  # the program holds the only write end: end of file when it is gone
            result_write = None
        streams = {proc.stdout.fileno(): _Tail(), proc.stderr.fileno(): _Tail()}
        if result_read is not None:
            streams[result_read] = _Tail()
        try:
            timed_out = _exchange(proc, stdin, streams, start + limits.wall_seconds)
        except BaseException:
            _kill_tree(proc)
            raise
        if timed_out:
            _kill_tree(proc)
            _exchange(proc, b"", streams, time.perf_counter() + 5)  # what was written before the kill
            status = "timeout"
        else:
            status = (
                "ok"
                if proc.returncode == 0
                else ("killed" if proc.returncode < 0 or proc.returncode > 128 else "failed")
            )
        seconds = time.perf_counter() - start
        out, err = streams[proc.stdout.fileno()], streams[proc.stderr.fileno()]
        result = streams[result_read].text() if result_read is not None else ""
        proc.stdout.close()
        proc.stderr.close()
        return SandboxResult(status, proc.returncode, out.text(), err.text(), seconds, result)
    finally:
        for fd in (result_read, result_write):
            if fd is not None:
                os.close(fd)
        shutil.rmtree(workdir, ignore_errors=True)


class _Tail:
    """The last OUTPUT_LIMIT bytes of a stream, however much is written to it."""

    def __init__(self):
        self.data = bytearray()

    def add(self, chunk: bytes) -> None:
        self.data += chunk
        if len(self.data) > 2 * OUTPUT_LIMIT:  # trimmed in batches, so that a flood costs linear time
            del self.data[:-OUTPUT_LIMIT]

    def text(self) -> str:
        return bytes(self.data[-OUTPUT_LIMIT:]).decode("utf-8", errors="replace")


def _exchange(proc: subprocess.Popen, stdin: bytes, streams: dict[int, _Tail], deadline: float) -> bool:
    """Feed stdin and drain the output pipes until they close and the process ends; True past the deadline."""
    assert proc.stdin is not None  # run_python opens the program's stdin as a pipe
    selector = selectors.DefaultSelector()
    for fd in streams:
        selector.register(fd, selectors.EVENT_READ)  # a pipe already at its end just reads empty again
    pending = memoryview(stdin)
    if not proc.stdin.closed:
        if pending:
            os.set_blocking(proc.stdin.fileno(), False)
            selector.register(proc.stdin.fileno(), selectors.EVENT_WRITE)
        else:
            proc.stdin.close()
    try:
        while selector.get_map():
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                return True
            for key, _ in selector.select(remaining):
                if key.events & selectors.EVENT_WRITE:
                    try:
                        pending = pending[os.write(key.fd, pending[:65536]) :]
                    except BlockingIOError:
                        continue
                    except BrokenPipeError:
                        pending = pending[:0]  # the program stopped reading its input
                    if not pending:
                        selector.unregister(key.fd)
                        proc.stdin.close()
                    continue
                chunk = os.read(key.fd, 65536)
                if chunk:
                    streams[key.fd].add(chunk)
                else:
                    selector.unregister(key.fd)
        try:
            proc.wait(timeout=max(0.0, deadline - time.perf_counter()))
        except subprocess.TimeoutExpired:
            return True
        return False
    finally:
        selector.close()
        if not proc.stdin.closed:
            proc.stdin.close()


def _kill_tree(proc: subprocess.Popen) -> None:
    """Kill the sandbox: its session on this side, and so (by --kill-child) its whole PID namespace."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
