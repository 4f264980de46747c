"""From a round's stored records to training examples.

The pair stage stores records (Preference, LabelledResponse or RankedGroup);
the reference stage scores the responses they name; this module lists those
responses and joins everything into the examples the trainer consumes.
"""

from __future__ import annotations

from typing import Callable

from iterpo.records import LabelledResponse, Preference, RankedGroup, RefLogp, Rollout
from iterpo.training.examples import GroupExample, PairExample, UnpairedExample

Key = tuple[str, str, int]  # (prompt scored after, prompt the response was sampled for, sample_idx)


def responses_to_score(records: list) -> list[Key]:
    """Every (prompt, response) the loss will look up reference log-probs for, sorted."""
    keys: set[Key] = set()
    for x in records:
        if isinstance(x, Preference):
            keys.update((x.prompt_id, x.prompt_id, i) for i in (x.chosen_idx, x.rejected_idx, *x.aux_idxs))
        elif isinstance(x, LabelledResponse):
            keys.add((x.prompt_id, x.prompt_id, x.sample_idx))
            keys.add((x.prompt_id, x.kl_prompt_id, x.kl_sample_idx))
        elif isinstance(x, RankedGroup):
            keys.update((x.prompt_id, x.prompt_id, i) for i in x.sample_idxs)
    return sorted(keys)


def training_examples(records: list, rollouts: dict[tuple[str, int], Rollout], prompt_ids: Callable[[str], list[int]],
                      scored: list[RefLogp], needs: frozenset[str]) -> list:
    """Join records, rollouts and reference log-probs into PairExample / UnpairedExample / GroupExample."""
    ref = {(x.prompt_id, x.response_prompt_id, x.sample_idx): x.ref_logp for x in scored}
    prev = {(x.prompt_id, x.response_prompt_id, x.sample_idx): x.prev_logp for x in scored}
    use_ref, use_prev = "reference" in needs, "previous" in needs

    def ids(pid: str, idx: int) -> list[int]:
        return rollouts[(pid, idx)].token_ids

    out = []
    for x in records:
        pid = x.prompt_id
        if isinstance(x, Preference):
            c, r = (pid, pid, x.chosen_idx), (pid, pid, x.rejected_idx)
            aux = [(pid, pid, i) for i in x.aux_idxs]
            out.append(PairExample(
                prompt_ids(pid), ids(pid, x.chosen_idx), ids(pid, x.rejected_idx),
                ref_logps=(ref[c], ref[r]) if use_ref else None,
                prev_logps=(prev[c], prev[r]) if use_prev else None,
                win_rates=(x.chosen_win_rate, x.rejected_win_rate),
                soft_label=x.soft_label,
                aux_ids=[ids(pid, i) for i in x.aux_idxs],
                ref_aux_logps=[ref[k] for k in aux] if use_ref else None,
            ))
        elif isinstance(x, LabelledResponse):
            own, mismatched = (pid, pid, x.sample_idx), (pid, x.kl_prompt_id, x.kl_sample_idx)
            out.append(UnpairedExample(
                prompt_ids(pid), ids(pid, x.sample_idx), x.label, ids(x.kl_prompt_id, x.kl_sample_idx),
                ref_logp=ref[own] if use_ref else None, ref_kl_logp=ref[mismatched] if use_ref else None,
            ))
        elif isinstance(x, RankedGroup):
            out.append(GroupExample(
                prompt_ids(pid), [ids(pid, i) for i in x.sample_idxs], list(x.scores),
                ref_logps=[ref[(pid, pid, i)] for i in x.sample_idxs] if use_ref else None,
            ))
    return out
