"""The regularised Nash equilibrium of a preference game, to the precision the exact checks need.

Built on both the game primitives (core.py) and the mirror-prox step (algorithms.py), which is why it lives
apart from either.
"""

from __future__ import annotations

import numpy as np

from iterpo.games.algorithms import Oracle, Step, nash_mp
from iterpo.games.core import check_game, log_normalize, softmax


def regularized_nash(P, beta: float, ref, tol: float = 1e-13, max_iter: int = 200) -> np.ndarray:
    """The regularised equilibrium pi ∝ ref exp(P pi / beta), to |log pi - log pi*| well below 1e-9.

    Newton's method on F(x) = x - log ref - P softmax(x) / beta, started from a
    few hundred mirror-prox steps (which converge for any beta). F's Jacobian
    I - (P - 1/2) Sigma / beta has eigenvalues 1 + i t, never singular, since
    P - 1/2 is skew-symmetric and Sigma = diag(pi) - pi pi^T is positive semidefinite.
    """
    P = check_game(P)
    ref = np.asarray(ref, dtype=np.float64)
    if P.ndim > 2:  # one game per context: solve each
        return np.stack([regularized_nash(P[c], beta, ref[c], tol, max_iter) for c in range(P.shape[0])])
    if not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    log_ref = np.log(ref)
    n = len(ref)
    # Mirror prox with step 2 beta contracts KL(pi* || pi_k) by 1/(1 + 2 beta) per step: a safe start.
    step = Step(P, beta, log_ref, 2.0 * beta, Oracle(P), np.random.default_rng(0))
    x = log_normalize(log_ref)
    for _ in range(min(500, int(20 / min(1.0, 2 * beta)))):
        x = nash_mp(x, None, step)
    x = x - x.max()

    def residual(x):
        return x - log_ref - P @ softmax(x) / beta

    F = residual(x)
    F = F - F.mean()  # only x up to a constant matters
    scale = max(1.0, 1.0 / beta)  # x is of size 1/beta, so rounding limits the residual to about 1e-16 / beta
    for _ in range(max_iter):
        if np.abs(F).max() < tol * scale:
            break
        pi = softmax(x)
        J = np.eye(n) - P @ (np.diag(pi) - np.outer(pi, pi)) / beta
        direction = np.linalg.solve(J, -F)
        t = 1.0
        while True:  # backtrack until the residual shrinks
            x_new = x + t * direction
            F_new = residual(x_new)
            F_new = F_new - F_new.mean()
            if np.abs(F_new).max() < np.abs(F).max() or t < 1e-8:
                break
            t *= 0.5
        if t < 1e-8:  # no further progress: rounding is the limit
            break
        x, F = x_new - x_new.max(), F_new
    if np.abs(F).max() > 1e-10 * scale:
        raise RuntimeError(f"regularized_nash did not converge (residual {np.abs(F).max():.3g})")
    return softmax(x)
