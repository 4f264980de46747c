"""What keeps a sample independent of the batch it decodes in: fixed-size row blocks and grouped plain attention.

A sample depends on its seed alone only if every number computed for its row does not depend on the other rows
of the batch. Two things broke that:

- Matrix multiplies. CPU GEMM kernels for bfloat16 (oneDNN's on CPUs with AMX) pick their tiling, and so their
  order of summation, from the number of rows M: the same row multiplied in a matrix of 64 rows and in one of 256
  comes out rounded differently, and the sampled token can change (measured on SmolLM2-135M's shapes: up to 61
  of 64 rows differ for some M). With M fixed, a row's result does not depend on the other rows' values. So
  ``RowBlocks`` runs every linear layer on blocks of exactly ``rows`` rows, the last one padded with zeros.
  float32 kernels depend on M less, but do too (2 of 64 prompts' samples changed between batches of 64 and 256).
- Fused attention. PyTorch's fused CPU attention chooses how to pack its inputs from the batch size. Attention
  here is the plain one (matmul, softmax, matmul) that transformers calls "eager", where each row's product is
  its own, registered as ``GROUPED`` so that grouped-query models need not copy each key/value head once per
  query head it serves (the copy cost as much as the products at decode time).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

ROW_BLOCK = 128
"""Rows per linear-layer block while generating. benchmarks/sampling.py on a 2-core CPU with AMX, SmolLM2-135M in
bfloat16 at batch 256: blocks of 64, 128 and 256 rows drew 493, 535 and 475 tokens/s (smaller blocks fill the
matrix units less, larger ones pad more once rows finish)."""


class RowBlocks(TorchFunctionMode):
    """Inside ``with RowBlocks(rows):`` every ``F.linear`` multiplies its input in blocks of exactly ``rows`` rows.

    x (..., K) is flattened to (M, K) and cut into ceil(M / rows) blocks; the last is padded with zero rows, whose
    results are dropped. A row's result then depends on its own values only, whatever M is.
    """

    def __init__(self, rows: int = ROW_BLOCK):
        super().__init__()
        if rows < 1:
            raise ValueError(f"RowBlocks: rows must be >= 1, got {rows}")
        self.rows = rows

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is not F.linear:
            return func(*args, **kwargs)
        x, weight = args[0], args[1]
        bias = args[2] if len(args) > 2 else kwargs.get("bias")
        flat = x.reshape(-1, x.shape[-1])  # (M, K)
        M, B = flat.shape[0], self.rows
        out = flat.new_empty(M, weight.shape[0])  # (M, N)
        for start in range(0, M, B):
            block = flat[start : start + B]  # (<= B, K)
            if block.shape[0] < B:
                padded = block.new_zeros(B, block.shape[1])
                padded[: block.shape[0]] = block
                out[start:] = F.linear(padded, weight, bias)[: block.shape[0]]
            else:
                out[start : start + B] = F.linear(block, weight, bias)
        return out.reshape(*x.shape[:-1], weight.shape[0])


GROUPED = "iterpo_grouped_eager"  # the attention implementation name registered below


def _grouped_eager_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """transformers' plain attention, for fewer key/value heads than query heads without copying them.

    query (n, Hq, L, D), key/value (n, Hkv, S, D), attention_mask (n, 1, L, S) additive or None.
    The Hq / Hkv query heads that share a key/value head are stacked into one matrix of (Hq / Hkv) * L rows, so
    each (row, key/value head) is one product. The same steps as transformers' eager attention otherwise: scores
    in the model's dtype, softmax in float32, cast back. Returns (n, L, Hq, D) and the attention weights.
    """
    n, Hq, L, D = query.shape
    Hkv, S = key.shape[1], key.shape[2]
    G = Hq // Hkv
    scale = scaling if scaling is not None else D**-0.5
    q = query.reshape(n, Hkv, G * L, D)  # heads h*G ... h*G+G-1 share key/value head h
    scores = torch.matmul(q, key.transpose(2, 3)) * scale  # (n, Hkv, G * L, S)
    if attention_mask is not None:
        scores = (scores.view(n, Hkv, G, L, S) + attention_mask[:, :, None, :, :S]).view(n, Hkv, G * L, S)
    weights = F.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    if dropout and module.training:
        weights = F.dropout(weights, p=dropout, training=True)
    out = torch.matmul(weights, value)  # (n, Hkv, G * L, D)
    return out.view(n, Hq, L, D).transpose(1, 2).contiguous(), weights.view(n, Hq, L, S)


def register_grouped_attention() -> None:
    """Make ``GROUPED`` a name models accept in set_attn_implementation (with the eager attention's masks)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    AttentionInterface.register(GROUPED, _grouped_eager_attention)
    AttentionMaskInterface.register(GROUPED, eager_mask)
