"""Exactly solvable preference games: the iterative algorithms checked against theory, with no sampling noise.

    import numpy as np
    from iterpo import games

    rng = np.random.default_rng(0)
    P = games.random_game(10, rng)
    ref = games.random_policy(10, rng)
    star = games.regularized_nash(P, 0.1, ref)
    policies = games.run("egpo", P, 0.1, ref, iterations=100, step_size=1.0)
    games.duality_gap(P, 0.1, policies[-1], ref)   # < 1e-6

``run(..., samples=S)`` runs the same rule with win rates estimated from S
sampled preferences per query instead of computed exactly.
"""

from __future__ import annotations

import numpy as np

from iterpo.games.algorithms import ALGORITHMS, Oracle, Step, register_algorithm
from iterpo.games.core import (
    best_response,
    bradley_terry,
    check_game,
    duality_gap,
    kl,
    log_normalize,
    random_cyclic,
    random_game,
    random_policy,
    read_game,
    rock_paper_scissors,
    softmax,
    win_rates,
)
from iterpo.games.equilibrium import regularized_nash


def run(
    algorithm: str,
    P,
    beta: float,
    ref,
    iterations: int,
    step_size: float,
    seed: int = 0,
    samples: int | None = None,
    **options,
) -> list[np.ndarray]:
    """The policies pi_0 = ref, pi_1, ..., pi_iterations produced by the named algorithm.

    samples=None runs the exact algorithm; samples=S estimates every win rate
    from S preferences drawn from P (for iterative DPO / APO: S groups of K
    samples). Options: ``alpha`` (APO), ``k`` (group size for sampled DPO/APO).
    """
    update = ALGORITHMS.get(algorithm)
    P = check_game(P)
    ref = np.asarray(ref, dtype=np.float64)
    if not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    rng = np.random.default_rng(seed)
    step = Step(P, beta, np.log(ref), step_size, Oracle(P, samples, rng), rng, options)
    xs = [log_normalize(np.log(ref))]
    prev = None
    for _ in range(iterations):
        nxt = update(xs[-1], prev, step)
        prev = xs[-1]
        xs.append(nxt)
    return [np.exp(x) for x in xs]


def metrics(P, beta: float, pi, ref, nash: np.ndarray | None = None) -> dict[str, float]:
    """KL to the regularised equilibrium, duality gap, and win rates against the reference and the equilibrium."""
    nash = regularized_nash(P, beta, ref) if nash is None else nash
    return {
        "kl_to_nash": float(np.mean(kl(nash, pi))),
        "duality_gap": float(np.mean(duality_gap(P, beta, pi, ref))),
        "win_rate_vs_ref": float(np.mean(np.einsum("...i,...ij,...j->...", pi, P, ref))),
        "win_rate_vs_nash": float(np.mean(np.einsum("...i,...ij,...j->...", pi, P, nash))),
    }


__all__ = [
    "ALGORITHMS",
    "Oracle",
    "Step",
    "best_response",
    "bradley_terry",
    "check_game",
    "duality_gap",
    "kl",
    "metrics",
    "random_cyclic",
    "random_game",
    "random_policy",
    "read_game",
    "register_algorithm",
    "regularized_nash",
    "rock_paper_scissors",
    "run",
    "softmax",
    "win_rates",
]
