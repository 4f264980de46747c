"""Every response of nonzero probability, with its probability: exact expectations over a small response space.

Drawn samples estimate what a judge or loss needs (a response's win rate
against the policy, the policy gradient) with noise; over a response space
small enough to list (the tabular policy of iterpo.models.tabular, whose
responses are one token and <eos>), the expectation can be taken exactly,
which is how the loop is checked against the closed-form updates of
iterpo.games (sampling.exhaustive).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from iterpo.errors import DataError
from iterpo.models.device import model_device, score_dtype

Enumerated = list[list[tuple[list[int], str, float]]]  # per prompt: (token ids, "stop" | "length", probability)


@torch.no_grad()
def enumerate_responses(
    model,
    eos: int,
    prompts: list[list[int]],
    temperature: float,
    top_p: float,
    max_new_tokens: int,
    limit: int = 4096,
    progress: Callable[[int], None] | None = None,
) -> Enumerated:
    """Per prompt, every continuation that ends with eos within max_new_tokens (or reaches the limit: "length"),
    with its probability under temperature and top-p sampling, in token order.

    Expands the tree of prefixes of nonzero probability one token a step (every
    prefix of a step has the same length, so a step is one unpadded batch).
    DataError when a prompt has more than ``limit`` of them: exhaustive sampling
    is for small response spaces, a language model's is astronomically large.
    """
    from iterpo.sampling.generate import _cache_kwarg, _new_cache, _top_p_filter

    device, cache_kw = model_device(model), _cache_kwarg(model)
    out: Enumerated = []
    for prompt in prompts:
        done: list[tuple[list[int], str, float]] = []
        frontier: list[tuple[list[int], float]] = [([], 0.0)]  # (tokens so far, their log-prob)
        for step in range(max_new_tokens):
            if not frontier:
                break
            ids = torch.tensor([prompt + tokens for tokens, _ in frontier], device=device)  # (F, T)
            mask = torch.ones_like(ids)
            pos = torch.arange(ids.shape[1], device=device).expand_as(ids)
            logits = model(
                input_ids=ids,
                attention_mask=mask,
                position_ids=pos,
                use_cache=True,
                logits_to_keep=1,
                **{cache_kw: _new_cache(model)},
            ).logits[:, -1]
            scores = logits.to(score_dtype(logits.dtype)) / temperature  # (F, V)
            if top_p < 1.0:
                scores = _top_p_filter(scores, top_p)
            logp = torch.log_softmax(scores, dim=-1)
            grown: list[tuple[list[int], float]] = []
            for (tokens, lp), row in zip(frontier, logp):
                for tok in (row.exp() > 0).nonzero().squeeze(-1).tolist():
                    item = (tokens + [tok], lp + float(row[tok]))
                    if tok == eos:
                        done.append((item[0], "stop", item[1]))
                    elif step == max_new_tokens - 1:
                        done.append((item[0], "length", item[1]))
                    else:
                        grown.append(item)
            frontier = grown
            if len(done) + len(frontier) > limit:
                raise DataError(
                    f"sampling.exhaustive: a prompt has more than {limit} responses of nonzero probability within "
                    f"{max_new_tokens} tokens; exhaustive sampling lists a small response space (such as the "
                    "tabular policy's), not a language model's"
                )
        done.sort(key=lambda x: x[0])
        out.append([(tokens, reason, math.exp(lp)) for tokens, reason, lp in done])
        if progress is not None:
            progress(1)
    return out
