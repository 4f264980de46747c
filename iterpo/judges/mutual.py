"""Mutual ranking of code and tests that were both generated (CodeDPO, Zhang et al. 2024, "CodeDPO: Aligning
Code Models with Self Generated and Verified Source Code").

Neither the solutions nor the tests are known to be right. A solution is
credible when credible tests accept it; a test is credible when credible
solutions pass it. Starting from equal scores, both are updated from each
other with a PageRank-style damping until they settle:

    code(i) <- (1 - d) code(i) + d sum_j test(j) passes(i, j)
    test(j) <- (1 - d) test(j) + d sum_i code(i) passes(i, j)

each vector normalised to sum 1 after every step (our reading of the paper's
update; it states the two sums and the damping, not the normalisation).
"""

from __future__ import annotations


def mutual_scores(
    passes: list[list[bool]], damping: float = 0.85, iterations: int = 100, tol: float = 1e-9
) -> tuple[list[float], list[float]]:
    """(code scores, test scores), each summing to 1, from passes[i][j]: solution i passes test j."""
    n = len(passes)
    m = len(passes[0]) if n else 0
    if n == 0 or m == 0:
        return [1.0 / n] * n if n else [], [1.0 / m] * m if m else []
    code, test = [1.0 / n] * n, [1.0 / m] * m
    for _ in range(iterations):
        new_code = [
            (1 - damping) * code[i] + damping * sum(test[j] for j in range(m) if passes[i][j]) for i in range(n)
        ]
        new_test = [
            (1 - damping) * test[j] + damping * sum(code[i] for i in range(n) if passes[i][j]) for j in range(m)
        ]
        new_code, new_test = _normalised(new_code), _normalised(new_test)
        moved = max(abs(a - b) for a, b in zip(new_code + new_test, code + test))
        code, test = new_code, new_test
        if moved < tol:
            break
    return code, test


def _normalised(xs: list[float]) -> list[float]:
    total = sum(xs)
    return [x / total for x in xs] if total > 0 else [1.0 / len(xs)] * len(xs)
