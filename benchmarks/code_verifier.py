"""What the python_tests harness costs per response, against running the code and tests as one plain program.

Both run in the same sandbox (namespaces, limits): the baseline is the verifier's
old way (response code with the tests appended, a pass is exit status 0, which
sys.exit(0) fools); the harness runs the response as a module, then the tests
through their guards, and reports with a nonce. Alternating runs, median of each.

    python benchmarks/code_verifier.py [--judgements 50]
"""

from __future__ import annotations

import argparse
import statistics
import time

from iterpo.judges.code import run_hidden_tests
from iterpo.judges.sandbox import SandboxLimits, check_sandbox, run_python

SOLUTION = "def add(a, b):\n    return a + b\n"
TESTS = "assert add(2, 3) == 5\nassert add(-1, 1) == 0\nassert add(10, 20) == 30\n"
LIMITS = SandboxLimits(wall_seconds=10, cpu_seconds=5, memory_mb=512)


def plain() -> bool:
    return run_python(SOLUTION + "\n" + TESTS, LIMITS).ok


def harness() -> bool:
    return run_hidden_tests(SOLUTION, TESTS, LIMITS)[0] == 1.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--judgements", type=int, default=50)
    args = parser.parse_args()
    check_sandbox()
    harness()  # compiles the harness once, as the first judgement of a run does
    times: dict[str, list[float]] = {"plain program (baseline)": [], "harness": []}
    for _ in range(args.judgements):
        for name, fn in (("plain program (baseline)", plain), ("harness", harness)):
            start = time.perf_counter()
            assert fn(), name
            times[name].append(time.perf_counter() - start)
    base = statistics.median(times["plain program (baseline)"])
    print(f"\none correct response, {args.judgements} judgements each, alternating\n")
    print("| verifier | median ms per response | vs baseline |")
    print("| --- | ---: | ---: |")
    for name, values in times.items():
        med = statistics.median(values)
        print(f"| {name} | {med * 1000:.1f} | {med / base:.2f}x |")


if __name__ == "__main__":
    main()
