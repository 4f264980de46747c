"""Token-level losses: they need per-token log-probs and a live reference model."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F

from iterpo.losses.base import (
    PairwiseLoss,
    PreferenceBatch,
    check_positive,
    check_range,
    pair_output,
    register_loss,
    require,
)


@register_loss("sparsepo")
@dataclass
class SparsePO(PairwiseLoss):
    """Sparse Preference Optimization (Christopoulou et al. 2024, arXiv 2410.05102).

    Per response token t, with l_t the token log-ratio and KL_t = KL(pi_ref || pi)
    over the vocabulary at that position:
        u = sum_t m_u l_t(y_w) - sum_t m_u l_t(y_l)
        d = sum_t m_d KL_t(y_l) - sum_t m_d KL_t(y_w)
        loss = -log sigmoid(beta (u - d)) + l1_u |m_u|_1 + l1_d |m_d|_1
    mask "ones": m_u = m_d = 1, which is TDPO's token-level objective (the test
    of the reduction). mask "learned": m = relu(w . h + b) with h the
    reference model's last-layer state at the position (two heads, u and d),
    trained with the policy; w starts at 0 and b at 1 so training starts from
    the "ones" objective. The head is re-created at the start of each round.
    Verified against the authors' code (huawei-noah/HEBO,
    SparsePO/src/trainers/sparse_trainer.py,
    ``SparseTrainer.get_batch_loss_metrics``): u and d summed over response
    tokens, its per-token "KL" being sum_v p_ref (log p - log p_ref) = -KL_t,
    so its d = sum m_d(-KL_t)(y_w) - sum m_d(-KL_t)(y_l) is the d above;
    -logsigmoid(beta (u - d)); L1 of the masks on response tokens; logged
    rewards beta (sum m_u l_t - sum m_d KL_t), as here. The "learned" mask is
    its ``simple_last`` mask layer (linear + ReLU on the reference model's last
    layer) with independent heads (``rw_kl_independent=True``), without the
    mask dropout and with this port's initialisation; its experiments use
    ``simple_all`` (heads on every layer, mixed), not done here.
    L1 defaults: its config defaults are 0; l1_u = l1_d = 1e-3 are the values
    of its README's HH shared-mask run (which halves both, the shared mask
    entering both norms).
    """

    beta: float = 0.1
    mask: Literal["ones", "learned"] = "ones"
    l1_u: float = 1e-3
    l1_d: float = 1e-3
    _head: torch.nn.Linear | None = field(default=None, init=False, repr=False)

    needs = frozenset({"token_stats"})

    def __post_init__(self):
        check_positive("beta", self.beta)
        check_range("l1_u", self.l1_u, 0.0, float("inf"))
        check_range("l1_d", self.l1_d, 0.0, float("inf"))
        if self.mask not in ("ones", "learned"):
            raise ValueError(f"mask must be 'ones' or 'learned', got {self.mask!r}")

    @property
    def needs_hidden_states(self) -> bool:
        return self.mask == "learned"

    def start(self, model=None, examples=None) -> None:
        if self.mask == "learned":
            hidden = model.config.hidden_size
            device = next(model.parameters()).device
            self._head = torch.nn.Linear(hidden, 2, device=device)  # outputs (m_u, m_d) per token
            torch.nn.init.zeros_(self._head.weight)
            torch.nn.init.ones_(self._head.bias)

    def parameters(self) -> list[torch.nn.Parameter]:
        return list(self._head.parameters()) if self._head is not None else []

    def _masks(self, hidden: torch.Tensor | None, token_mask: torch.Tensor):
        """(m_u, m_d), each (B, T), zero outside the response."""
        if self.mask == "ones":
            m = token_mask.to(torch.float32)
            return m, m
        h = require(hidden, "reference hidden states")
        if self._head is None:  # start() builds it; the training loop calls start() before any batch
            raise RuntimeError("sparsepo's learned mask head is not built: call start(model) before the loss")
        out = torch.relu(self._head(h.to(self._head.weight.dtype)))  # (B, T, 2)
        m = token_mask.unsqueeze(-1).to(out.dtype)
        return out[..., 0] * m[..., 0], out[..., 1] * m[..., 0]

    def __call__(self, batch: PreferenceBatch):
        mw_tok = require(batch.chosen_mask, "per-token masks")
        ml_tok = require(batch.rejected_mask, "per-token masks")
        lw = require(batch.chosen_token_logps, "per-token log-probs") - require(
            batch.ref_chosen_token_logps, "per-token reference log-probs"
        )
        ll = require(batch.rejected_token_logps, "per-token log-probs") - require(
            batch.ref_rejected_token_logps, "per-token reference log-probs"
        )
        kw = require(batch.chosen_token_kl, "per-token KL")
        kl = require(batch.rejected_token_kl, "per-token KL")
        uw, dw = self._masks(batch.ref_chosen_hidden, mw_tok)
        ul, dl = self._masks(batch.ref_rejected_hidden, ml_tok)
        u = (uw * lw).sum(1) - (ul * ll).sum(1)  # (B,)
        d = (dl * kl).sum(1) - (dw * kw).sum(1)  # (B,)
        losses = F.softplus(-self.beta * (u - d))
        if self.mask == "learned":
            losses = losses + self.l1_u * (uw.sum(1) + ul.sum(1)) + self.l1_d * (dw.sum(1) + dl.sum(1))
        n_tok = mw_tok.sum() + ml_tok.sum()
        zeros_u = ((uw == 0) & mw_tok).sum() + ((ul == 0) & ml_tok).sum()
        zeros_d = ((dw == 0) & mw_tok).sum() + ((dl == 0) & ml_tok).sum()
        # rewards as the reference code logs them: beta * (masked log-ratio sum - masked KL sum)
        rw = self.beta * ((uw * lw).sum(1) - (dw * kw).sum(1))
        rl = self.beta * ((ul * ll).sum(1) - (dl * kl).sum(1))
        return pair_output(
            losses,
            rw,
            rl,
            mask_sparsity_u=zeros_u / n_tok,
            mask_sparsity_d=zeros_d / n_tok,
            kl_chosen=(kw * mw_tok).sum(1).detach().mean(),
        )
