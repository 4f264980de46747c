"""The iterative algorithms on preference games, each one update rule.

Every algorithm maps the current log-policy x_t = log pi_t (and, for APO, the
one before) to x_{t+1}. Expectations over the opponent come from an oracle:
exact (P pi) or sampled (preferences drawn from P against sampled responses),
so the same rule runs both ways. Step sizes are in mirror-descent units: one
OMD step of size eta is

    log pi <- (1 - eta beta) log pi + eta beta log ref + eta P pi

(for Nash-MP, ``step_size`` is its own proximal step eta of Tiapkin et al. 2025, "Accelerating Nash
Learning from Human Feedback via Mirror Prox": with a = 1/(1 + eta), log pi_{k+1/2} = a log pi_k +
(1 - a)(log ref + P pi_k / beta), then the same step from pi_k against pi_{k+1/2}).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from iterpo.games.core import log_normalize
from iterpo.registry import Registry


@dataclass
class Oracle:
    """Win rates of every response against a policy: exact, or estimated from samples.

    sampled: ``samples`` opponents are drawn from the policy (per context) and
    each response's win against each is a Bernoulli(P[y, opponent]) draw.
    """

    P: np.ndarray  # (..., N, N)
    samples: int | None = None
    rng: np.random.Generator | None = None
    queries: int = 0  # preference queries made so far (sampled: draws; exact: policies evaluated)

    def win_rates(self, pi: np.ndarray) -> np.ndarray:
        if self.samples is None:
            self.queries += 1
            return np.einsum("...ij,...j->...i", self.P, pi)
        n = self.P.shape[-1]
        flat_P, flat_pi = self.P.reshape(-1, n, n), pi.reshape(-1, n)
        out = np.empty_like(flat_pi)
        if self.rng is None:
            raise ValueError("a sampled Oracle (samples set) needs rng, the generator its draws come from")
        for c in range(flat_P.shape[0]):
            opponents = self.rng.choice(n, size=self.samples, p=flat_pi[c])  # (S,)
            wins = self.rng.uniform(size=(n, self.samples)) < flat_P[c][:, opponents]  # (N, S)
            out[c] = wins.mean(axis=1)
        self.queries += self.samples
        return out.reshape(pi.shape)


@dataclass
class Step:
    """What an update rule sees."""

    P: np.ndarray
    beta: float
    log_ref: np.ndarray  # (..., N)
    eta: float
    oracle: Oracle
    rng: np.random.Generator
    options: dict = field(default_factory=dict)


ALGORITHMS: Registry[Callable] = Registry("game algorithm")
register_algorithm = ALGORITHMS.register


def mirror_step(x, w, weight: float, s: Step):
    """x <- (1 - weight) x + weight (log ref + w / beta): a step toward the regularised best response to w.

    With option ``via_loss``, the same step is taken the way the language-model
    path takes it: one SGD step of learning rate weight * N / 4 on tabular
    logits with iterpo's ``online_ipo`` loss over every ordered pair (y, y')
    (with uniformly drawn pairs, as in EGPO's online-IPO loss, Zhou, Fazel and Du 2025: one such step equals
    the mirror step with eta * beta = 4 lr / N; tests/games checks it to 1e-10).
    """
    if s.options.get("via_loss"):
        from iterpo.games.sgd import online_ipo_sgd_step

        return online_ipo_sgd_step(x, w, s.log_ref, s.beta, lr=weight * x.shape[-1] / 4)
    return log_normalize((1 - weight) * x + weight * (s.log_ref + w / s.beta))


@register_algorithm("omd")
def omd(x, x_prev, s: Step):
    """Online mirror descent on the regularised game = online IPO (EGPO's OMD baseline)."""
    return mirror_step(x, s.oracle.win_rates(np.exp(x)), s.eta * s.beta, s)


@register_algorithm("inpo")
def inpo(x, x_prev, s: Step):
    """INPO's exact update pi ∝ pi_t^(1 - eta tau) ref^(eta tau) exp(eta P pi_t) with tau = beta (Zhang et al. 2024,
    Iterative Nash Policy Optimization, the online mirror descent step its loss is built on): OMD."""
    return omd(x, x_prev, s)


@register_algorithm("egpo")
def egpo(x, x_prev, s: Step):
    """Extragradient (EGPO): an OMD half step, then the step from x_t using the half step's win rates."""
    half = mirror_step(x, s.oracle.win_rates(np.exp(x)), s.eta * s.beta, s)
    return mirror_step(x, s.oracle.win_rates(np.exp(half)), s.eta * s.beta, s)


@register_algorithm("nash_mp")
def nash_mp(x, x_prev, s: Step):
    """Mirror prox (Nash-MP) with proximal step eta: a = 1/(1 + eta),
    log pi_half = a log pi_k + (1 - a)(log ref + P pi_k / beta), then the same with P pi_half:
    extragradient with eta * beta = eta / (1 + eta)."""
    weight = s.eta / (1.0 + s.eta)
    half = mirror_step(x, s.oracle.win_rates(np.exp(x)), weight, s)
    return mirror_step(x, s.oracle.win_rates(np.exp(half)), weight, s)


@register_algorithm("nash_md")
def nash_md(x, x_prev, s: Step):
    """Nash-MD with a constant step: the geometric mixture mu ∝ pi^(1 - eta beta) ref^(eta beta), then
    log pi <- log mu + eta P mu, i.e. a mirror step against the mixture."""
    mix = log_normalize((1 - s.eta * s.beta) * x + s.eta * s.beta * s.log_ref)
    return mirror_step(x, s.oracle.win_rates(np.exp(mix)), s.eta * s.beta, s)


@register_algorithm("sppo")
def sppo(x, x_prev, s: Step):
    """SPPO's exact target pi ∝ pi_t exp(eta P pi_t): multiplicative weights, no pull toward ref (beta unused)."""
    return log_normalize(x + s.eta * s.oracle.win_rates(np.exp(x)))


@register_algorithm("spo")
def spo(x, x_prev, s: Step):
    """Self-play SPO: reward = win proportion against the policy's own samples, one softmax policy-gradient
    step of size eta on E_pi[reward] (beta unused)."""
    pi = np.exp(x)
    r = s.oracle.win_rates(pi)
    grad = pi * (r - (pi * r).sum(axis=-1, keepdims=True))  # d E_pi[r] / d logits
    return log_normalize(x + s.eta * grad)


def _bt_fit(A: np.ndarray, ridge: float = 1e-14, iters: int = 200) -> np.ndarray:
    """Bradley-Terry scores s maximising sum_ij A_ij log sigmoid(s_i - s_j) (A_ij = weight of "i beat j").

    Newton's method on a convex objective, run until the step vanishes (responses
    of tiny weight converge last); a tiny ridge keeps separable data finite.
    """
    n = A.shape[-1]
    s = np.zeros(n)
    lam = ridge * max(A.sum(), 1e-300)
    S = A + A.T

    def objective(s):
        d = s[:, None] - s[None, :]
        return (A * np.logaddexp(0, -d)).sum() + 0.5 * lam * s @ s

    for _ in range(iters):
        d = s[:, None] - s[None, :]
        sig = 1 / (1 + np.exp(-d))
        g = -(A * (1 - sig)).sum(1) + (A.T * sig).sum(1) + lam * s
        curv = S * sig * (1 - sig)
        H = np.diag(curv.sum(1) + lam) - curv
        step = np.linalg.lstsq(H, -g, rcond=None)[0]
        t, f0 = 1.0, objective(s)
        while objective(s + t * step) > f0 + 1e-15 * abs(f0) and t > 1e-10:
            t *= 0.5
        s = s + t * step
        if np.abs(t * step).max() < 1e-12:
            break
    return s - s.mean()


def _dpo_scores(x: np.ndarray, s: Step) -> np.ndarray:
    """beta * l*: the population DPO optimum's implicit reward on pairs drawn from pi_t labelled by P.

    Exact: the Bradley-Terry fit of P with pair weights pi_t(i) pi_t(j). Sampled:
    K responses per group from pi_t, a round robin of Bernoulli(P) comparisons, the
    most-winning vs the least-winning response as (chosen, rejected), and the
    Bradley-Terry fit of those pairs (what DPO on tabular logits converges to).
    """
    pi = np.exp(x)
    if s.oracle.samples is None:
        return _bt_fit(pi[:, None] * pi[None, :] * s.P)
    K, groups, n = s.options.get("k", 4), s.oracle.samples, len(pi)
    A = np.zeros((n, n))
    for _ in range(groups):
        ys = s.rng.choice(n, size=K, p=pi)
        wins = (s.rng.uniform(size=(K, K)) < s.P[np.ix_(ys, ys)]).astype(float)
        wins = np.triu(wins, 1) + np.tril(1 - wins.T, -1)  # one outcome per pair
        score = wins.sum(1) + s.rng.uniform(size=K) * 1e-3  # random tie-break
        best, worst = ys[score.argmax()], ys[score.argmin()]
        if best != worst:
            A[best, worst] += 1.0 / groups
    s.oracle.queries += groups * K * (K - 1) // 2
    return _bt_fit(A)


def _per_context(fn, x, s: Step):
    if x.ndim == 1:
        return fn(x, s)
    return np.stack(
        [fn(x[c], Step(s.P[c], s.beta, s.log_ref[c], s.eta, s.oracle, s.rng, s.options)) for c in range(x.shape[0])]
    )


@register_algorithm("iterative_dpo")
def iterative_dpo(x, x_prev, s: Step):
    """Iterative DPO with the reference updated each round: pi_{t+1} ∝ pi_t exp(beta l* / beta), the DPO
    optimum against reference pi_t (step_size unused)."""
    return log_normalize(x + _per_context(_dpo_scores, x, s) / s.beta)


@register_algorithm("apo")
def apo(x, x_prev, s: Step):
    """APO: iterative DPO against the extrapolated reference log pi_hat = (1 + alpha) log pi_t - alpha log pi_{t-1}
    (option alpha, default 0.5)."""
    alpha = s.options.get("alpha", 0.5)
    ref_hat = x if x_prev is None else (1 + alpha) * x - alpha * x_prev
    return log_normalize(ref_hat + _per_context(_dpo_scores, x, s) / s.beta)
