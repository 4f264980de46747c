"""From a round's stored records to training examples.

The pair stage stores records (Preference, LabelledResponse or RankedGroup);
the reference stage scores the responses they name; this module lists those
responses and joins everything into the examples the trainer consumes.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from iterpo.records import LabelledResponse, Preference, RankedGroup, RefLogp, Rollout
from iterpo.training.examples import GroupExample, PairExample, UnpairedExample

Key = tuple[str, str, str, int, str]  # (prompt scored after, prompt the response was sampled for, source,
# sample_idx, the chat messages after the prompt's it is scored after as context_key() gives them)
# Responses are scored in this order: the round's own samples, then the initial model's, then the look-ahead
# model's, then any other source by name. Batches of the reference pass follow it, and a different batching moves
# log-probs in their last bits, so it is kept fixed.
SOURCE_RANK = {"policy": 0, "initial": 1, "look_ahead": 2}


def context_key(messages: list[dict[str, str]]) -> str:
    """The canonical JSON of the chat messages a response is scored after, besides its prompt ("" for none): one
    response scored after two contexts has two log-probs."""
    return json.dumps([[m["role"], m["content"]] for m in messages], ensure_ascii=False) if messages else ""


def context_messages(key: str) -> list[dict[str, str]]:
    """The chat messages a context_key stands for."""
    return [{"role": role, "content": content} for role, content in json.loads(key)] if key else []


def _scored(table: dict[Key, float | None], key: Key) -> float:
    """A log-prob the reference stage stored (it stores None only for what the loss does not need)."""
    value = table[key]
    if value is None:
        raise ValueError(f"the reference stage stored no log-prob for {key}, which the loss needs")
    return value


def trained_mask(rollout: Rollout, shared: int = 0, mask_reasoning: bool = False) -> list[bool] | None:
    """Which of a response's tokens are trained on (None: all): the policy's, after the first ``shared`` (the steps
    a step pair or a group of sibling steps shares, up to the divergence point), and with mask_reasoning after its
    reasoning (reasoning.train false)."""
    if mask_reasoning:
        shared = max(shared, rollout.reasoning_tokens)
    if not shared:
        return rollout.policy_mask or None
    return [k >= shared and m for k, m in enumerate(rollout.policy_mask or [True] * len(rollout.token_ids))]


def shared_prefixes(records: list) -> dict[Key, int]:
    """Per response the records name, how many leading tokens they treat as context (0 for most). The reference
    log-prob of a response is over the same tokens as the policy's, so one response cannot have two such counts."""
    out: dict[Key, int] = {}
    for x in records:
        pid = x.prompt_id
        if isinstance(x, Preference):
            named = [(x.chosen_source, x.chosen_idx), (x.rejected_source, x.rejected_idx)]
        elif isinstance(x, RankedGroup):
            named = list(zip(x.sources, x.sample_idxs))
        else:
            continue
        shared, context = x.shared_prefix, context_key(getattr(x, "context", []))
        for source, idx in named:
            key = (pid, pid, source, idx, context)
            if out.setdefault(key, shared) != shared:
                raise ValueError(
                    f"response {source}#{idx} of prompt {pid} is named with {out[key]} and with {shared} shared "
                    "prefix tokens; a response's trained tokens must be the same in every example"
                )
    return out


def responses_to_score(records: list) -> list[Key]:
    """Every (prompt, response) the loss will look up reference log-probs for, sorted."""
    keys: set[Key] = set()
    for x in records:
        pid = x.prompt_id
        if isinstance(x, Preference):
            c = context_key(x.context)
            keys.add((pid, pid, x.chosen_source, x.chosen_idx, c))
            keys.add((pid, pid, x.rejected_source, x.rejected_idx, c))
            keys.update((pid, pid, "policy", i, c) for i in x.aux_idxs)
        elif isinstance(x, LabelledResponse):
            keys.add((pid, pid, x.source, x.sample_idx, ""))
            keys.add((pid, x.kl_prompt_id, x.kl_source, x.kl_sample_idx, ""))
        elif isinstance(x, RankedGroup):
            keys.update((pid, pid, s, i, "") for s, i in zip(x.sources, x.sample_idxs))
    return sorted(keys, key=lambda k: (k[0], k[1], SOURCE_RANK.get(k[2], len(SOURCE_RANK)), k[2], k[3], k[4]))


def training_examples(
    records: list,
    rollouts: dict[tuple[str, str, int], Rollout],
    prompt_ids: Callable[[str, str], list[int]],
    scored: list[RefLogp],
    needs: frozenset[str],
    mask_reasoning: bool = False,
    side_tokens: Callable[[str, str], tuple[list[int], list[int]]] | None = None,
) -> list:
    """Join records, responses (by prompt_id, source, sample_idx) and reference log-probs into PairExample /
    UnpairedExample / GroupExample; prompt_ids(prompt_id, context_key) are the tokens a response follows. With
    mask_reasoning, responses' reasoning tokens are context (never trained on). side_tokens(request, target) gives
    a side target's tokens, for losses that need them."""
    ref = {(x.prompt_id, x.response_prompt_id, x.source, x.sample_idx, x.context): x.ref_logp for x in scored}
    prev = {(x.prompt_id, x.response_prompt_id, x.source, x.sample_idx, x.context): x.prev_logp for x in scored}
    use_ref, use_prev = "reference" in needs, "previous" in needs
    use_side = "side_targets" in needs
    if use_side and side_tokens is None:
        raise ValueError("the loss reads side targets: training_examples needs side_tokens")

    def ids(pid: str, source: str, idx: int) -> list[int]:
        return rollouts[(pid, source, idx)].token_ids

    def mask(pid: str, source: str, idx: int, shared: int = 0) -> list[bool] | None:
        return trained_mask(rollouts[(pid, source, idx)], shared, mask_reasoning)

    out: list[PairExample | UnpairedExample | GroupExample] = []
    for x in records:
        pid = x.prompt_id
        if isinstance(x, Preference):
            after = context_key(x.context)
            c = (pid, pid, x.chosen_source, x.chosen_idx, after)
            r = (pid, pid, x.rejected_source, x.rejected_idx, after)
            aux = [(pid, pid, "policy", i, after) for i in x.aux_idxs]
            out.append(
                PairExample(
                    prompt_ids(pid, after),
                    ids(pid, x.chosen_source, x.chosen_idx),
                    ids(pid, x.rejected_source, x.rejected_idx),
                    ref_logps=(_scored(ref, c), _scored(ref, r)) if use_ref else None,
                    prev_logps=(_scored(prev, c), _scored(prev, r)) if use_prev else None,
                    win_rates=(x.chosen_win_rate, x.rejected_win_rate),
                    soft_label=x.soft_label,
                    scores=(x.chosen_score, x.rejected_score),
                    aux_ids=[ids(pid, "policy", i) for i in x.aux_idxs],
                    ref_aux_logps=[_scored(ref, k) for k in aux] if use_ref else None,
                    weight=x.weight,
                    margin=x.margin,
                    chosen_mask=mask(pid, x.chosen_source, x.chosen_idx, x.shared_prefix),
                    rejected_mask=mask(pid, x.rejected_source, x.rejected_idx, x.shared_prefix),
                    aux_masks=[mask(pid, "policy", i) for i in x.aux_idxs],
                    side=[side_tokens(t["request"], t["target"]) for t in x.side] if side_tokens and use_side else [],
                )
            )
        elif isinstance(x, LabelledResponse):
            own = (pid, pid, x.source, x.sample_idx, "")
            mismatched = (pid, x.kl_prompt_id, x.kl_source, x.kl_sample_idx, "")
            out.append(
                UnpairedExample(
                    prompt_ids(pid, ""),
                    ids(pid, x.source, x.sample_idx),
                    x.label,
                    ids(x.kl_prompt_id, x.kl_source, x.kl_sample_idx),
                    ref_logp=ref[own] if use_ref else None,
                    ref_kl_logp=ref[mismatched] if use_ref else None,
                    response_mask=mask(pid, x.source, x.sample_idx),
                    kl_mask=mask(x.kl_prompt_id, x.kl_source, x.kl_sample_idx),
                )
            )
        elif isinstance(x, RankedGroup):
            out.append(
                GroupExample(
                    prompt_ids(pid, ""),
                    [ids(pid, s, i) for s, i in zip(x.sources, x.sample_idxs)],
                    list(x.scores),
                    ref_logps=[_scored(ref, (pid, pid, s, i, "")) for s, i in zip(x.sources, x.sample_idxs)]
                    if use_ref
                    else None,
                    prev_logps=[_scored(prev, (pid, pid, s, i, "")) for s, i in zip(x.sources, x.sample_idxs)]
                    if use_prev
                    else None,
                    weights=list(x.weights) if x.weights else None,
                    masks=[mask(pid, s, i, x.shared_prefix) for s, i in zip(x.sources, x.sample_idxs)],
                )
            )
    return out
