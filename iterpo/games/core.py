"""Preference games over a finite set of responses, solved exactly.

A game is a matrix P with P[i, j] = Pr(response i beats response j), so
P + P^T = 1 and the diagonal is 1/2. Policies are probability vectors. With a
reference policy ref and regularisation beta > 0, the regularised game

    V(pi1, pi2) = pi1^T P pi2 - beta KL(pi1 || ref) + beta KL(pi2 || ref)

has a unique Nash equilibrium pi* = ref * exp(P pi* / beta) / Z, the policy the
Nash-seeking algorithms (EGPO, Nash-MP, Nash-MD, INPO, online IPO) target. For
a Bradley-Terry game P[i, j] = sigmoid(r_i - r_j) the KL-regularised reward
optimum ref * exp(r / beta) / Z is what DPO-style methods target instead.

Everything here is numpy float64; a leading "context" axis (one game per
prompt) broadcasts through every function: P (..., N, N), policies (..., N).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from iterpo.errors import DataError

# ---------------------------------------------------------------- games


def bradley_terry(rewards) -> np.ndarray:
    """P[i, j] = sigmoid(r_i - r_j)."""
    r = np.asarray(rewards, dtype=np.float64)
    return 1.0 / (1.0 + np.exp(-(r[..., :, None] - r[..., None, :])))


def random_game(n: int, rng: np.random.Generator, contexts: int | None = None) -> np.ndarray:
    """EGPO's random games: the strict lower triangle uniform on (0, 1), P + P^T = 1, diagonal 1/2."""
    shape = (n, n) if contexts is None else (contexts, n, n)
    lower = np.tril(rng.uniform(size=shape), k=-1)
    P = lower + np.swapaxes(1.0 - lower, -1, -2) * np.triu(np.ones((n, n)), k=1)
    return P + 0.5 * np.eye(n)


def rock_paper_scissors() -> np.ndarray:
    """Rock (0), paper (1), scissors (2): each beats one and loses to one, surely. Its Nash equilibrium is uniform."""
    return np.array([[0.5, 0.0, 1.0], [1.0, 0.5, 0.0], [0.0, 1.0, 0.5]])


def random_cyclic(n: int, rng: np.random.Generator) -> np.ndarray:
    """A random intransitive game invariant under rotation: P[i, j] = 1/2 + d[(j - i) mod n] with d antisymmetric.

    Every response has the same expected win rate against the uniform policy,
    so the unregularised equilibrium is uniform, yet no response is best.
    """
    d = np.zeros(n)
    for k in range(1, (n + 1) // 2):
        d[k] = rng.uniform(-0.5, 0.5)
        d[n - k] = -d[k]
    idx = (np.arange(n)[None, :] - np.arange(n)[:, None]) % n
    return 0.5 + d[idx]


def check_game(P, source: str = "game") -> np.ndarray:
    """P as a float64 array, or DataError saying what is wrong with it."""
    P = np.asarray(P, dtype=np.float64)
    if P.ndim < 2 or P.shape[-1] != P.shape[-2] or P.shape[-1] < 2:
        raise DataError(f"{source}: a preference matrix must be square with at least 2 responses, got shape {P.shape}")
    if not np.all(np.isfinite(P)) or P.min() < 0 or P.max() > 1:
        raise DataError(f"{source}: entries must be probabilities in [0, 1]")
    err = np.abs(P + np.swapaxes(P, -1, -2) - 1).max()
    if err > 1e-9:
        raise DataError(f"{source}: P[i, j] + P[j, i] must equal 1 (off by up to {err:.3g})")
    return P


def read_game(path: str | Path) -> np.ndarray:
    """A game from a .npy file or a text file of rows of numbers (CSV or whitespace-separated)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"game file {path} does not exist")
    try:
        P = (
            np.load(path)
            if path.suffix == ".npy"
            else np.loadtxt(path, delimiter="," if path.suffix == ".csv" else None, ndmin=2)
        )
    except ValueError as exc:
        raise DataError(f"game file {path}: not a matrix of numbers ({exc})") from None
    return check_game(P, str(path))


# ---------------------------------------------------------------- policies


def softmax(logits) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def log_normalize(x) -> np.ndarray:
    """x - logsumexp(x) over the last axis: a log-policy."""
    x = np.asarray(x, dtype=np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


def random_policy(n: int, rng: np.random.Generator, contexts: int | None = None) -> np.ndarray:
    """A softmax policy with N(0, 1) logits (EGPO's random reference)."""
    return softmax(rng.normal(size=(n,) if contexts is None else (contexts, n)))


def win_rates(P, pi) -> np.ndarray:
    """(P pi)[y] = Pr(y beats a response drawn from pi), shape (..., N)."""
    return np.einsum("...ij,...j->...i", P, pi)


def kl(p, q) -> np.ndarray:
    """KL(p || q) over the last axis (0 log 0 = 0)."""
    p, q = np.asarray(p, dtype=np.float64), np.asarray(q, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * (np.log(p) - np.log(q)), 0.0)
    return terms.sum(axis=-1)


def best_response(P, beta: float, pi, ref) -> np.ndarray:
    """argmax over pi1 of pi1^T P pi - beta KL(pi1 || ref) = ref * exp(P pi / beta) / Z."""
    return softmax(np.log(ref) + win_rates(P, pi) / beta)


# ---------------------------------------------------------------- the equilibrium and the gap


def duality_gap(P, beta: float, pi, ref) -> np.ndarray:
    """Gap of the regularised game at (pi, pi): max_pi1 V(pi1, pi) - min_pi2 V(pi, pi2).

    Because P^T = 1 - P the two best responses coincide, and the gap equals
    2 beta KL(pi || BR(pi)) with BR the best response above: zero exactly at the
    equilibrium, computed in log space without cancellation (so it stays finite
    for small beta, where BR underflows in probability space).
    """
    pi = np.asarray(pi, dtype=np.float64)
    log_br = log_normalize(np.log(ref) + win_rates(P, pi) / beta)
    with np.errstate(divide="ignore"):
        terms = np.where(pi > 0, pi * (np.log(np.where(pi > 0, pi, 1.0)) - log_br), 0.0)
    return np.maximum(2.0 * beta * terms.sum(axis=-1), 0.0)  # rounding can leave -1e-17 at the equilibrium
