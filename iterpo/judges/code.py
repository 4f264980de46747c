"""The code verifier: run the response's Python against the prompt's hidden unit tests, in the sandbox."""

from __future__ import annotations

import functools
import marshal
import re
import secrets
import subprocess
from dataclasses import dataclass
from pathlib import Path

from iterpo.errors import DataError
from iterpo.judges import _hidden_tests
from iterpo.judges.base import Judge, register_judge
from iterpo.judges.sandbox import SandboxLimits, SandboxResult, check_sandbox, run_python, sandbox_python
from iterpo.records import Judgement, Prompt, Rollout

_FENCE = re.compile(r"```(?:python|py)?[ \t]*\n(.*?)```", re.DOTALL)
HARNESS = Path(__file__).with_name("_code_harness.py")
GUARDS = Path(__file__).with_name("_code_harness_guards.py")
PROTOCOL = 1  # the job's layout; _code_harness.PROTOCOL must match
RESULT_TAG = "iterpo-result"


def extract_code(text: str) -> str:
    """The last fenced code block of a response, or the whole response when it has none."""
    blocks = _FENCE.findall(text)
    return blocks[-1] if blocks else text


# main.py in the sandbox: runs the harness from code objects that head stdin (compiled once by iterpo with the
# sandbox's own interpreter, which saves compiling ~700 lines per response), or from the sources beside it when
# that interpreter has changed since.
LOADER = """import marshal, os, sys
def _take(n):
    data = b""
    while len(data) < n:
        chunk = os.read(0, n - len(data))
        if not chunk:
            break
        data += chunk
    return data
_size, _version = _take(64).split(b" ", 1)
_blob = _take(int(_size))
if _version.rstrip() == sys.version.encode()[:40].rstrip():
    _code, GUARDS_CODE = marshal.loads(_blob)
else:
    _code, GUARDS_CODE = [compile(open(f).read(), f, "exec") for f in ("harness.py", "harness_guards.py")]
del _take, _size, _version, _blob
exec(_code)
"""
_COMPILE = (
    "import marshal, sys; harness, guards = sys.stdin.read().split(chr(0)); sys.stdout.buffer.write("
    "marshal.dumps((compile(harness, 'harness.py', 'exec'), compile(guards, 'harness_guards.py', 'exec'))))"
)


@functools.lru_cache(maxsize=1)
def _harness() -> tuple[dict[str, str], bytes]:
    """The harness's source files, and a 64-byte header plus its code objects marshalled by the sandbox's Python."""
    files = {"harness.py": HARNESS.read_text(), "harness_guards.py": GUARDS.read_text()}
    try:
        python = sandbox_python()
        code = subprocess.run(
            [python, "-I", "-S", "-c", _COMPILE],
            input="\0".join(files.values()).encode(),
            capture_output=True,
            check=True,
            timeout=60,
        ).stdout
        version = subprocess.run(
            [python, "-I", "-S", "-c", "import sys; sys.stdout.write(sys.version[:40])"],
            capture_output=True,
            check=True,
            timeout=60,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        code, version = b"", b"none"  # the loader then compiles the sources
    return files, (f"{len(code)} ".encode() + version).ljust(64)[:64] + code


@functools.lru_cache(maxsize=256)
def _prepared_tests(answer: str) -> _hidden_tests.HiddenTests:
    try:
        return _hidden_tests.prepare(answer)
    except SyntaxError as exc:
        raise DataError(f"the hidden tests do not parse: {exc}") from exc


def run_hidden_tests(code: str, tests: str, limits: SandboxLimits) -> tuple[float, str]:
    """(1.0, "passed") when ``code`` passes ``tests`` (Python statements), else (0.0, why): see _code_harness.py."""
    score, why, _ = timed_hidden_tests(code, tests, limits)
    return score, why


def timed_hidden_tests(code: str, tests: str, limits: SandboxLimits) -> tuple[float, str, float]:
    """run_hidden_tests, and the sandboxed run's wall-clock seconds (the interpreter's start included)."""
    prepared = _prepared_tests(tests)
    nonce = secrets.token_hex(16)  # fresh per run, known to iterpo and the harness only
    preload = _hidden_tests.preload_list(set(prepared.imports), _hidden_tests.imported_modules(code))
    job = marshal.dumps((PROTOCOL, nonce, code, list(prepared.statements), list(prepared.global_names), preload), 4)
    files, compiled = _harness()
    result = run_python(LOADER, limits, files=files, stdin=compiled + job, result_pipe=True)
    return (*verdict(result, nonce), result.seconds)


def verdict(result: SandboxResult, nonce: str) -> tuple[float, str]:
    """Read the harness's report: a pass is exactly one line with this run's nonce, saying pass."""
    mine = []
    for line in result.result.splitlines():
        fields = line.split(" ", 3)
        if len(fields) >= 3 and fields[0] == RESULT_TAG and fields[1] == nonce:
            mine.append(fields)
    if len(mine) == 1 and mine[0][2] == "pass":
        return 1.0, "passed"
    if mine:
        return 0.0, (mine[-1][3] if len(mine[-1]) > 3 else "failed")[:300]
    if result.status in ("timeout", "killed"):
        return 0.0, result.status
    lines = [x for x in result.stderr.strip().splitlines() if x.strip()]
    last = f": {lines[-1][:200]}" if lines else ""
    return 0.0, f"the program ended (exit {result.returncode}) before the harness reported{last}"


@register_judge("python_tests")
@dataclass
class PythonTests(Judge):
    """Score 1.0 when the response's code passes the prompt's tests (its ``answer``: Python asserts), else 0.0.

    Each response runs alone in the sandbox (iterpo.judges.sandbox): no network,
    nothing written outside a throw-away directory, time, memory and process
    limits. Inside, a harness (iterpo.judges._code_harness) runs the response's
    code as a module, then the tests, and reports on a private pipe with a nonce:
    ending the program early, patching what the tests use or returning objects
    built to win comparisons does not pass. The detail says why a response
    failed: the failing test line and exception, what the sandbox blocked,
    "timeout", or "killed" (a resource limit).
    """

    name = "python_tests"
    verifier = True
    wall_seconds: float = 10.0
    """Wall-clock limit per response, in seconds."""
    cpu_seconds: int = 5
    """CPU-time limit per response."""
    memory_mb: int = 512
    """Address-space limit per response."""

    def __post_init__(self):
        if self.wall_seconds <= 0 or self.cpu_seconds < 1 or self.memory_mb < 16:
            raise ValueError("wall_seconds must be > 0, cpu_seconds >= 1 and memory_mb >= 16")
        self.limits = SandboxLimits(
            wall_seconds=self.wall_seconds, cpu_seconds=self.cpu_seconds, memory_mb=self.memory_mb
        )

    def check(self) -> None:
        check_sandbox()  # SandboxUnavailable (exit 2) before any sampling, not after it

    def judge(self, prompt: Prompt, rollouts: list[Rollout]) -> list[Judgement]:
        if not prompt.answer:
            raise DataError(f"prompt {prompt.prompt_id} has no 'answer' holding the unit tests python_tests runs")
        out = []
        for r in rollouts:
            score, detail = run_hidden_tests(extract_code(r.text), prompt.answer, self.limits)
            out.append(Judgement(r.prompt_id, r.sample_idx, self.name, score, detail))
        return out
