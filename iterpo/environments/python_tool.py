"""python: runs the policy's code in the sandbox that runs generated code for the code verifier, and returns
what it printed (or its error), cut to a bounded length.

The code is untrusted: each call is a fresh sandboxed process (no network, a
read-only file system outside a throw-away directory, CPU, memory, process and
wall-clock limits; iterpo.judges.sandbox), so nothing carries over between
calls and nothing the code does outlives it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from iterpo.environments.base import Environment, register_environment
from iterpo.judges.sandbox import SandboxLimits, check_sandbox, run_python

_EXCEPTION = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt|Warning)\b")


@register_environment("python")
@dataclass
class PythonTool(Environment):
    """Runs the code in the sandbox and answers with what it printed, or its error."""

    tag = "python"
    instructions = (
        "You can run Python. Write <python>CODE</python>, for example <python>print(1234 * 5678)</python>, and "
        "what the code prints comes back to you. Then give the final answer."
    )

    timeout: float = 5.0
    """Wall-clock seconds per call."""
    cpu_seconds: int = 2
    memory_mb: int = 256
    max_output_chars: int = 500
    """The answer keeps at most this many characters of the output (its end, where results and errors are)."""

    def __post_init__(self):
        if self.timeout <= 0 or self.cpu_seconds < 1 or self.memory_mb < 32 or self.max_output_chars < 16:
            raise ValueError("timeout must be > 0, cpu_seconds >= 1, memory_mb >= 32 and max_output_chars >= 16")

    def check(self) -> None:
        check_sandbox()

    def call(self, request: str) -> str:
        limits = SandboxLimits(wall_seconds=self.timeout, cpu_seconds=self.cpu_seconds, memory_mb=self.memory_mb)
        result = run_python(request, limits, _checked=True)
        if result.status == "timeout":
            text = f"error: the code ran longer than {self.timeout:g} s and was stopped"
        elif result.status == "killed":
            text = "error: the code was stopped (CPU or memory limit)"
        elif not result.ok:
            lines = result.stderr.strip().splitlines()
            last = lines[-1] if lines else ""
            if _EXCEPTION.match(last):  # the exception's line: the same every run
                text = f"error: {last}"
            elif last.startswith("unshare:"):  # the sandbox stopped it (the CPU limit leaves no traceback)
                text = "error: the code was stopped (CPU or memory limit)"
            else:
                text = f"error: exit status {result.returncode}"
        else:
            text = result.stdout.strip() or "(no output)"
        text = text.replace("\x00", "")
        if len(text) > self.max_output_chars:
            text = "..." + text[-(self.max_output_chars - 3) :]
        return text
