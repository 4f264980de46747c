"""Sequence log-probabilities of responses given prompts.

Only response tokens matter to preference losses, so the output layer (a
49k-wide matrix for SmolLM2, a large share of the compute) is applied only to
the span of positions that predict response tokens (``logits_to_keep``), and
the prompt's logits are never built.
"""

from __future__ import annotations

import torch


def _pad_right(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, T) ids and attention mask, right-padded."""
    T = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), T), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, : len(s)] = 1
    return ids, mask


def response_logps(model, prompts: list[list[int]], responses: list[list[int]], pad_id: int = 0) -> torch.Tensor:
    """Sum of log pi(response token | prefix) per sequence: (N,) float32.

    Gradients flow when called with grad enabled (training); wrap in
    torch.no_grad() for reference scoring.
    """
    assert len(prompts) == len(responses) and all(len(r) > 0 for r in responses)
    seqs = [p + r for p, r in zip(prompts, responses)]
    ids, mask = _pad_right(seqs, pad_id)  # (N, T)
    # Position t predicts token t+1; response token k of row i sits at P_i + k.
    starts = torch.tensor([len(p) - 1 for p in prompts])  # first predicting position per row
    ends = torch.tensor([len(s) - 1 for s in seqs])  # one past the last predicting position
    lo, hi = int(starts.min()), int(ends.max())
    keep = torch.arange(lo, hi)  # (L,) positions whose logits we need
    logits = model(input_ids=ids, attention_mask=mask, logits_to_keep=keep).logits  # (N, L, V)
    logp = torch.log_softmax(logits.float(), dim=-1)
    targets = ids[:, lo + 1 : hi + 1]  # (N, L) the token each kept position predicts
    token_logp = logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # (N, L)
    pos = keep.unsqueeze(0)  # (1, L)
    in_response = (pos >= starts.unsqueeze(1)) & (pos < ends.unsqueeze(1))  # (N, L)
    return (token_logp * in_response).sum(dim=1)


@torch.no_grad()
def score_responses(model, prompts: list[list[int]], responses: list[list[int]], batch_size: int, pad_id: int = 0, progress=None) -> list[float]:
    """response_logps over many sequences in batches, sorted by length to limit padding."""
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]) + len(responses[i]))
    out = [0.0] * len(prompts)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        values = response_logps(model, [prompts[i] for i in idx], [responses[i] for i in idx], pad_id)
        for i, v in zip(idx, values.tolist()):
            out[i] = v
        if progress is not None:
            progress(len(idx))
    return out
