"""Tabular logits trained with iterpo's own loss functions, the way the language-model path trains.

This is the bridge that lets the games check the LM losses: one SGD step on
``online_ipo`` over all ordered pairs of responses must equal the closed-form
mirror-descent step (ALGORITHMS.md §8, eta * beta = 4 lr / N).
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
    batch = PreferenceBatch(chosen_logps=logp[y], rejected_logps=logp[y2], ref_chosen_logps=ref[y],
                            ref_rejected_logps=ref[y2], chosen_win_rate=wins[y], rejected_win_rate=wins[y2])
    get_loss("online_ipo", beta=beta)(batch).loss.backward()
    with torch.no_grad():
        new = theta - lr * theta.grad
        return torch.log_softmax(new, dim=-1).numpy()
