"""Log-probabilities of responses given prompts.

Only response tokens matter to preference losses, so the output layer (a
49k-wide matrix for SmolLM2, a large share of the compute) is applied only to
the span of positions that predict response tokens (``logits_to_keep``), and
the prompt's logits are never built.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from iterpo.models.device import model_device, score_dtype


def _pad_right(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, T) ids and attention mask, right-padded."""
    T = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), T), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, : len(s)] = 1
    return ids, mask


@torch.no_grad()
def next_token_odds(model, sequences: list[list[int]], pad_id: int, a: int, b: int, batch_size: int) -> list[float]:
    """For each token sequence, P(a) / (P(a) + P(b)) of the model's next token after it: a softmax over the two
    logits (a judge's "A" or "B", "Yes" or "No"), so the reply is never unparseable. The output layer runs only at
    each row's last real position."""
    device = model_device(model)
    out: list[float] = []
    for start in range(0, len(sequences), batch_size):
        batch = sequences[start : start + batch_size]
        ids, attn = (x.to(device) for x in _pad_right(batch, pad_id))  # (B, T)
        last = torch.tensor([len(s) - 1 for s in batch], device=device)  # (B,) each row's last real position
        keep = torch.unique(last)  # (L,) sorted positions whose logits are needed
        logits = model(input_ids=ids, attention_mask=attn, logits_to_keep=keep).logits  # (B, L, V)
        rows = torch.arange(len(batch), device=device)
        pair = logits[rows, torch.searchsorted(keep, last)][:, [a, b]].float()  # (B, 2)
        out += torch.softmax(pair, dim=-1)[:, 0].tolist()
    return out


@dataclass
class TokenStats:
    """Per-response-token quantities, aligned so column k is response token k. N rows, R = longest response."""

    logps: torch.Tensor  # (N, R) log pi(token | prefix), 0 where mask is False
    mask: torch.Tensor  # (N, R) bool, True on real response tokens
    log_dist: torch.Tensor | None = None  # (N, R, V) full log-softmax at each position (when asked)
    hidden: torch.Tensor | None = None  # (N, R, H) last-layer state at each predicting position (when asked)


def response_token_stats(
    model,
    prompts: list[list[int]],
    responses: list[list[int]],
    pad_id: int = 0,
    full_distribution: bool = False,
    hidden_states: bool = False,
) -> TokenStats:
    """Per-token log-probs of each response (with gradients when grad is enabled)."""
    assert len(prompts) == len(responses) and all(len(r) > 0 for r in responses)
    seqs = [p + r for p, r in zip(prompts, responses)]
    device = model_device(model)
    ids, attn = (x.to(device) for x in _pad_right(seqs, pad_id))  # (N, T)
    # Position t predicts token t+1; response token k of row i is predicted at position P_i - 1 + k.
    starts = torch.tensor([len(p) - 1 for p in prompts], device=device)  # (N,) first predicting position per row
    ends = torch.tensor([len(s) - 1 for s in seqs], device=device)  # (N,) one past the last predicting position
    lo, hi = int(starts.min()), int(ends.max())
    keep = torch.arange(lo, hi, device=device)  # (L,) positions whose logits we need
    out = model(input_ids=ids, attention_mask=attn, logits_to_keep=keep, output_hidden_states=hidden_states)
    logp = torch.log_softmax(out.logits.to(score_dtype(out.logits.dtype)), dim=-1)  # (N, L, V)
    targets = ids[:, lo + 1 : hi + 1]  # (N, L) the token each kept position predicts
    token_logp = logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # (N, L)
    lengths = torch.tensor([len(r) for r in responses], device=device)
    R = int(lengths.max())
    col = torch.arange(R, device=device).unsqueeze(0)  # (1, R)
    mask = col < lengths.unsqueeze(1)  # (N, R)
    idx = ((starts - lo).unsqueeze(1) + col).clamp(max=hi - lo - 1)  # (N, R) kept-position index of token k
    stats = TokenStats(logps=token_logp.gather(1, idx) * mask, mask=mask)
    if full_distribution:
        stats.log_dist = logp.gather(1, idx.unsqueeze(-1).expand(-1, -1, logp.shape[-1]))  # (N, R, V)
    if hidden_states:
        h = out.hidden_states[-1]  # (N, T, H), after the final norm
        stats.hidden = h.gather(1, (idx + lo).unsqueeze(-1).expand(-1, -1, h.shape[-1]))  # (N, R, H)
    return stats


def score_batches(prompts: list[list[int]], responses: list[list[int]], batch_size: int) -> list[list[list[int]]]:
    """How score_responses batches its sequences: per batch, groups of indices of responses sharing a prompt.

    Responses to the same prompt form groups of at most batch_size; groups are sorted shortest first and packed
    into batches of at most batch_size responses. A batch's log-probs depend on its own sequences only, so the
    batches can be scored anywhere (several workers) with the same results.
    """
    by_prompt: dict[tuple[int, ...], list[int]] = {}
    for i, p in enumerate(prompts):
        by_prompt.setdefault(tuple(p), []).append(i)
    groups = [idx[s : s + batch_size] for idx in by_prompt.values() for s in range(0, len(idx), batch_size)]
    groups.sort(key=lambda idx: len(prompts[idx[0]]) + sum(len(responses[i]) for i in idx))
    batches: list[list[list[int]]] = []
    batch: list[list[int]] = []
    for g in groups:
        if batch and sum(len(b) for b in batch) + len(g) > batch_size:
            batches.append(batch)
            batch = []
        batch.append(g)
    if batch:
        batches.append(batch)
    return batches


@torch.no_grad()
def score_batch(model, batch: list, pad_id: int = 0) -> list[float]:
    """Sum of response token log-probs of one batch: packing groups (prompt ids, its responses' ids[, their
    masks]), in order."""
    from iterpo.models.packing import sequence_logps

    return sequence_logps(model, batch, pad_id=pad_id).tolist()


def batch_groups(prompts, responses, masks, batch) -> list:
    """The packing groups of one of score_batches' batches; masks: per response, its tokens the policy produced
    (None: all), or None for flat responses."""
    from iterpo.models.packing import group

    return [group(prompts[g[0]], [responses[i] for i in g], [masks[i] if masks else None for i in g]) for g in batch]


def score_responses(
    model,
    prompts: list[list[int]],
    responses: list[list[int]],
    batch_size: int,
    pad_id: int = 0,
    progress=None,
    masks: list[list[bool] | None] | None = None,
) -> list[float]:
    """Sum of response token log-probs for many sequences: responses to the same prompt share one pass over it
    (models/packing.py), at most batch_size responses a batch, shortest groups first (score_batches). masks: per
    response, which tokens the policy produced (None: all); only those are scored."""
    out = [0.0] * len(prompts)
    for batch in score_batches(prompts, responses, batch_size):
        values = score_batch(model, batch_groups(prompts, responses, masks, batch), pad_id)
        for i, v in zip([i for g in batch for i in g], values):
            out[i] = v
        if progress is not None:
            progress(sum(len(g) for g in batch))
    return out
