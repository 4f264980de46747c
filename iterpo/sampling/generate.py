"""Batched generation with one random stream per sample.

Every sample owns a seed derived from (run seed, round, prompt id, sample
index) and its own torch.Generator, from which each of its tokens takes one
uniform draw (inverse CDF of softmax(logits / T)), so the random draws of a
sample depend only on its seed. Each prompt is prefilled once and its KV
cache forked for its K samples; stopped rows leave the batch when enough have
stopped to free a block of rows (iterpo.sampling.invariant: the linear layers
run on fixed row blocks, so a row's numbers do not depend on its batch).
Batches are formed inside a fixed shard of prompts, so a resumed run rebuilds
the same batches and reproduces every sample bit for bit.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from contextlib import nullcontext

import torch

from iterpo.models.device import model_device, score_dtype
from iterpo.sampling.invariant import ROW_BLOCK, RowBlocks

PAD_MULTIPLE = 32
"""Each prompt is left-padded to its length rounded up to a multiple of this, and a batch holds prompts of one such
length only: a row's layout (its padding, the blocks its keys fall in) then depends on its own prompt alone, so
its numbers, and its samples, do not depend on the prompts that share its batch. With each batch padded to its
longest prompt, a bfloat16 model's samples changed with the batch size."""


def derive_seed(*parts) -> int:
    """A 63-bit seed from any tuple of ids: stable across processes and machines."""
    blob = "/".join(str(p) for p in parts).encode()
    return int.from_bytes(hashlib.sha256(blob).digest()[:8], "little") & ((1 << 63) - 1)


class SeededSampler:
    """Temperature, top-p, then one uniform draw per row from that row's own generator, by inverse CDF.

    The drawn token is the first whose cumulative probability reaches u x (the row's total), u in (0, 1]: a
    token of probability 0 is never drawn, and a row's draw depends on its own scores and generator only. The
    cumulative sum is float32 (a token's probability is off by at most about float32's resolution, 6e-8).
    One uniform per row and token, where Gumbel-max noise needed one per vocabulary entry (49152 for the
    built-in model: a quarter of a bfloat16 decode step on a 2-core CPU).
    """

    def __init__(self, seeds: list[int], temperature: float, top_p: float):
        self.generators = [torch.Generator().manual_seed(s) for s in seeds]
        self.temperature = temperature
        self.top_p = top_p

    def __call__(self, rows: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """rows: (n,) which of the seeded rows these are; scores: (n, V). Returns the drawn tokens (n,)."""
        scores = scores / self.temperature
        if self.top_p < 1.0:
            scores = _top_p_filter(scores, self.top_p)
        cdf = scores.softmax(dim=-1).cumsum(dim=-1)  # (n, V)
        # drawn on the CPU from each row's generator, so a sample does not depend on the device it decodes on
        uniform = torch.stack(
            [torch.rand((), generator=self.generators[r], dtype=torch.float64) for r in rows.tolist()]
        )  # (n,) in [0, 1)
        target = ((1 - uniform) * cdf[:, -1].double().cpu()).to(cdf)  # (n,) in (0, total]
        picked = torch.searchsorted(cdf, target[:, None]).squeeze(-1)  # first index whose cdf >= target
        return picked.clamp_max(cdf.shape[-1] - 1)


def _top_p_filter(scores: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest set of tokens whose probability reaches top_p (at least one)."""
    sorted_scores, order = scores.sort(dim=-1, descending=True)
    cum = sorted_scores.softmax(dim=-1).cumsum(dim=-1)
    drop_sorted = (cum - sorted_scores.softmax(dim=-1)) >= top_p  # mass before this token already >= p
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return scores.masked_fill(drop, float("-inf"))


def _cache_kwarg(model) -> str:
    """transformers renamed forward's ``past_key_values`` to ``cache``; use whichever exists."""
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # peft wraps with **kwargs
    params = inspect.signature(base.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _new_cache(model):
    if hasattr(model, "new_cache"):  # a model of several (sampling.mixture): caches of its own
        return model.new_cache()
    from transformers import DynamicCache

    try:
        return DynamicCache(config=model.config)
    except TypeError:  # older transformers
        return DynamicCache()


@torch.no_grad()
def _decode(
    model, ids, mask, repeats, sampler, max_new_tokens, eos, stopped=None, row_block=ROW_BLOCK
) -> list[list[int]]:
    """Prefill each prompt once, fork it ``repeats`` times, decode until EOS, a stop string or the limit.

    ids, mask: (U, T) left-padded prompts. Returns U * repeats token lists, the
    ``repeats`` samples of prompt u at rows u*repeats ... u*repeats + repeats-1.
    stopped(tokens) -> bool: whether a row's tokens so far end at a stop string.
    With row_block (iterpo.sampling.invariant.RowBlocks), the linear layers run on blocks of that many rows, so a
    finished row costs nothing until enough have finished to free a whole block: finished rows stay in the batch
    (fed EOS, their outputs ignored) and are dropped from every tensor and the cache only when that lowers the
    number of blocks. Without it (row_block=None) they are dropped as they stop.
    """
    block = row_block or 1
    with RowBlocks(row_block) if row_block else nullcontext():
        cache_kw = _cache_kwarg(model)
        cache = _new_cache(model)
        pos = (mask.cumsum(-1) - 1).clamp_min(0)  # (U, T) positions ignoring left padding
        out = model(
            input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, logits_to_keep=1, **{cache_kw: cache}
        )
        logits = out.logits[:, -1].to(score_dtype(out.logits.dtype))  # (U, V)
        if repeats > 1:
            cache.batch_repeat_interleave(repeats)
            logits, mask, pos = (x.repeat_interleave(repeats, dim=0) for x in (logits, mask, pos))
        N = logits.shape[0]
        rows = torch.arange(N, device=logits.device)  # (n,) the original row of each row of the batch
        live = torch.ones(N, dtype=torch.bool, device=logits.device)  # (n,) which rows of the batch still decode
        next_pos = pos[:, -1:] + 1  # (n, 1)
        tokens: list[list[int]] = [[] for _ in range(N)]
        for step in range(max_new_tokens):
            at = live.nonzero().squeeze(-1)  # (m,) the batch positions of the rows still decoding
            decoding = rows[at]  # (m,) their original rows
            picked = sampler(decoding, logits[at]) if sampler is not None else logits[at].argmax(dim=-1)  # (m,)
            decoding_rows = decoding.tolist()
            for row, tok in zip(decoding_rows, picked.tolist()):
                tokens[row].append(tok)
            keep = picked != eos
            if stopped is not None:
                keep &= torch.tensor([not stopped(tokens[row]) for row in decoding_rows], device=keep.device)
            if step == max_new_tokens - 1 or not keep.any():
                break
            live[at[~keep]] = False
            nxt = torch.full_like(rows, eos).index_put_((at,), picked)  # (n,) finished rows are fed EOS
            left = int(live.sum())
            if -(-left // block) < -(-live.numel() // block):  # dropping the finished rows frees a block
                idx = live.nonzero().squeeze(-1)
                cache.batch_select_indices(idx)
                rows, live, nxt, mask, next_pos = rows[idx], live[idx], nxt[idx], mask[idx], next_pos[idx]
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            out = model(
                input_ids=nxt[:, None], attention_mask=mask, position_ids=next_pos, use_cache=True, **{cache_kw: cache}
            )
            logits = out.logits[:, -1].to(score_dtype(out.logits.dtype))
            next_pos = next_pos + 1
    return tokens


def _stop_check(tokenizer, stop: Sequence[str]) -> Callable[[list[int]], bool]:
    """tokens -> whether their last token completed one of the stop strings (it is in the decoded tail and was
    not one token earlier)."""
    span = max(len(s) for s in stop) + 2  # a stop string spans at most its length in tokens

    def stopped(tokens: list[int]) -> bool:
        tail = tokenizer.decode(tokens[-span:], skip_special_tokens=False)
        before = tokenizer.decode(tokens[-span:-1], skip_special_tokens=False)
        return any(s in tail and s not in before for s in stop)

    return stopped


def generate(
    model,
    tokenizer,
    prompts: list[list[int]],
    seeds: list[list[int]] | None,
    temperature: float = 1.0,
    top_p: float = 1.0,
    max_new_tokens: int = 32,
    batch_size: int = 64,
    progress: Callable[[int], None] | None = None,
    stop: Sequence[str] = (),
    row_block: int | None = ROW_BLOCK,
) -> list[list[tuple[list[int], str]]]:
    """Generate responses for each prompt; seeds=None means one greedy response.

    seeds[i] lists one seed per sample wanted for prompt i (all prompts the same
    number). Returns, per prompt, a list of (token_ids, finish_reason): token_ids
    include the EOS token when the response stopped ("stop"), else it hit
    max_new_tokens ("length"). Prompts are batched by padded length (PAD_MULTIPLE),
    with at most batch_size sequences decoding together. A response also
    stops ("stop", no EOS appended) at the token that completes one of the
    ``stop`` strings (a tool call's closing tag, a reasoning step's delimiter). row_block: the linear layers'
    fixed block of rows (iterpo.sampling.invariant; None: one block of whatever the batch holds, and samples
    that may change with the batch, in float32 too: 2 of 64 prompts' samples did between batches of 64 and 256
    on a CPU with AMX).
    """
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    repeats = len(seeds[0]) if seeds is not None else 1
    per_batch = max(1, batch_size // repeats)
    padded = [-(-len(p) // PAD_MULTIPLE) * PAD_MULTIPLE for p in prompts]  # each prompt's padded length
    batches = []  # prompts of one padded length, shortest first, per_batch at most
    for T in sorted(set(padded)):
        same = sorted((i for i in range(len(prompts)) if padded[i] == T), key=lambda i: len(prompts[i]))
        batches += [same[i : i + per_batch] for i in range(0, len(same), per_batch)]
    results: list = [None] * len(prompts)
    for idx in batches:
        T = padded[idx[0]]
        ids = torch.full((len(idx), T), pad, dtype=torch.long)  # (U, T) left-padded
        mask = torch.zeros((len(idx), T), dtype=torch.long)
        for row, i in enumerate(idx):
            ids[row, T - len(prompts[i]) :] = torch.tensor(prompts[i])
            mask[row, T - len(prompts[i]) :] = 1
        sampler = None
        if seeds is not None:
            sampler = SeededSampler([s for i in idx for s in seeds[i]], temperature, top_p)
        device = model_device(model)
        stopped = _stop_check(tokenizer, stop) if stop else None
        tokens = _decode(
            model, ids.to(device), mask.to(device), repeats, sampler, max_new_tokens, eos, stopped, row_block
        )
        for row, i in enumerate(idx):
            results[i] = [
                (t, "stop" if t[-1] == eos or (stopped and stopped(t)) else "length")
                for t in tokens[row * repeats : (row + 1) * repeats]
            ]
        if progress is not None:
            progress(len(idx) * repeats)
    return results
