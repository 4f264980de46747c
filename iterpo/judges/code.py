"""The code verifier: run the response's Python against the prompt's hidden unit tests, in the sandbox."""

from __future__ import annotations

import re
from dataclasses import dataclass

from iterpo.errors import DataError
from iterpo.judges.base import Judge, register_judge
from iterpo.judges.sandbox import SandboxLimits, check_sandbox, run_python
from iterpo.records import Judgement, Prompt, Rollout

_FENCE = re.compile(r"```(?:python|py)?[ \t]*\n(.*?)```", re.DOTALL)


def extract_code(text: str) -> str:
    """The last fenced code block of a response, or the whole response when it has none."""
    blocks = _FENCE.findall(text)
    return blocks[-1] if blocks else text


@register_judge("python_tests")
@dataclass
class PythonTests(Judge):
    """Score 1.0 when the response's code passes the prompt's tests (its ``answer``: Python asserts), else 0.0.

    Each response runs alone in the sandbox (iterpo.judges.sandbox): no network,
    nothing written outside a throw-away directory, time, memory and process
    limits. The detail says why a response failed: the exception's last line,
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
        self.limits = SandboxLimits(wall_seconds=self.wall_seconds, cpu_seconds=self.cpu_seconds, memory_mb=self.memory_mb)

    def check(self) -> None:
        check_sandbox()  # SandboxUnavailable (exit 2) before any sampling, not after it

    def judge(self, prompt: Prompt, rollouts: list[Rollout]) -> list[Judgement]:
        if not prompt.answer:
            raise DataError(f"prompt {prompt.prompt_id} has no 'answer' holding the unit tests python_tests runs")
        out = []
        for r in rollouts:
            program = extract_code(r.text) + "\n\n# --- hidden tests ---\n" + prompt.answer + "\n"
            result = run_python(program, self.limits)
            if result.ok:
                score, detail = 1.0, "passed"
            elif result.status in ("timeout", "killed"):
                score, detail = 0.0, result.status
            else:
                lines = [x for x in result.stderr.strip().splitlines() if x.strip()]
                score, detail = 0.0, (lines[-1][:200] if lines else f"exit {result.returncode}")
            out.append(Judgement(r.prompt_id, r.sample_idx, self.name, score, detail))
        return out
