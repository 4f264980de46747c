"""Tabular logits trained with iterpo's own loss functions, the way the language-model path trains.

This is the bridge that lets the games check the LM losses: one SGD step on
``online_ipo`` over all ordered pairs of responses must equal the closed-form
mirror-descent step with eta * beta = 4 lr / N (the online-IPO loss of EGPO, Zhou, Fazel and Du 2025,
"Extragradient Preference Optimization", over uniformly drawn pairs; derived here and checked in tests/games).
"""

from __future__ import annotations

import numpy as np
import torch

from iterpo.losses import PreferenceBatch, get_loss


def online_ipo_sgd_step(x: np.ndarray, w: np.ndarray, log_ref: np.ndarray, beta: float, lr: float) -> np.ndarray:
    """One SGD step of learning rate lr on tabular logits x with the online_ipo loss, every ordered pair
    (y, y') weighted uniformly, opponent win rates w. Returns the new log-policy. Shapes (..., N)."""
    if x.ndim > 1:
        return np.stack([online_ipo_sgd_step(x[c], w[c], log_ref[c], beta, lr) for c in range(x.shape[0])])
    n = x.shape[-1]
    theta = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    logp = torch.log_softmax(theta, dim=-1)  # (N,)
    y, y2 = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
    y, y2 = y.flatten(), y2.flatten()  # (N*N,) every ordered pair
    ref = torch.tensor(log_ref, dtype=torch.float64)
    wins = torch.tensor(w, dtype=torch.float64)
    batch = PreferenceBatch(
        chosen_logps=logp[y],
        rejected_logps=logp[y2],
        ref_chosen_logps=ref[y],
        ref_rejected_logps=ref[y2],
        chosen_win_rate=wins[y],
        rejected_win_rate=wins[y2],
    )
    get_loss("online_ipo", beta=beta)(batch).loss.backward()
    assert theta.grad is not None  # backward() above filled it: theta is a leaf that requires grad
    with torch.no_grad():
        new = theta - lr * theta.grad
        return torch.log_softmax(new, dim=-1).numpy()


def dpo_fit(x: np.ndarray, A: np.ndarray, beta: float, iterations: int = 500) -> np.ndarray:
    """Tabular logits trained to convergence with iterpo's ``dpo`` loss, reference = pi_t = exp(x).

    A[i, j] weighs the pair (chosen i, rejected j) (for the population loss,
    pi_t(i) pi_t(j) P[i, j]). L-BFGS on the weighted sum of per-pair losses;
    returns the new log-policy, which iterative DPO's closed form must match.
    """
    n = x.shape[-1]
    theta = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    y, y2 = (t.flatten() for t in torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij"))
    ref = torch.tensor(x, dtype=torch.float64)
    weight = torch.tensor(A, dtype=torch.float64).flatten() / float(A.sum())
    loss_fn = get_loss("dpo", beta=beta)
    opt = torch.optim.LBFGS(
        [theta],
        lr=1.0,
        max_iter=iterations,
        tolerance_grad=1e-14,
        tolerance_change=1e-16,
        line_search_fn="strong_wolfe",
    )

    def closure():
        opt.zero_grad()
        logp = torch.log_softmax(theta, dim=-1)
        out = loss_fn(
            PreferenceBatch(
                chosen_logps=logp[y], rejected_logps=logp[y2], ref_chosen_logps=ref[y], ref_rejected_logps=ref[y2]
            )
        )
        total = (out.losses * weight).sum()
        total.backward()
        return total

    opt.step(closure)
    with torch.no_grad():
        return torch.log_softmax(theta, dim=-1).numpy()
