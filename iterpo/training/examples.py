"""Training examples of each data shape, and how a micro-batch of them becomes a loss batch.

A collate function runs the policy once over every sequence the batch needs
(chosen and rejected, extra samples, KTO's mismatched pairs, a whole ranked
group), packed so that each prompt is processed once for all its responses,
and fills exactly the fields the loss declares in ``needs``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from iterpo.losses import Loss, PreferenceBatch, RankedBatch, ScoredBatch, UnpairedBatch
from iterpo.losses.base import require
from iterpo.models.device import batch_to
from iterpo.models.logprobs import response_token_stats
from iterpo.models.packing import Group, Layout, group, pack, sequence_logps, token_logps


@dataclass
class PairExample:
    prompt_ids: list[int]  # (P,) prompt tokens
    chosen_ids: list[int]  # (Tc,) chosen response tokens
    rejected_ids: list[int]  # (Tr,) rejected response tokens
    ref_logps: tuple[float, float] | None = None  # (chosen, rejected) under the reference
    prev_logps: tuple[float, float] | None = None  # (chosen, rejected) under the round's starting policy
    win_rates: tuple[float, float] | None = None  # (chosen, rejected) estimated P(y beats pi_t)
    soft_label: float | None = None  # estimated P(chosen beats rejected)
    scores: tuple[float, float] | None = None  # (chosen, rejected) the judge's scores
    aux_ids: list[list[int]] = field(default_factory=list)  # k extra responses to the same prompt
    ref_aux_logps: list[float] | None = None  # (k,) their reference log-probs
    weight: float = 1.0  # the pair's weight in the step's loss (a weighted mean when any is not 1)
    margin: float | None = None  # the target reward margin the loss asks of the pair (Preference.margin)
    chosen_mask: list[bool] | None = None  # (Tc,) True on the tokens trained on (Rollout.policy_mask); None: all
    rejected_mask: list[bool] | None = None  # (Tr,) likewise
    aux_masks: list[list[bool] | None] = field(default_factory=list)  # likewise for aux_ids (empty: all None)
    side: list[tuple[list[int], list[int]]] = field(default_factory=list)  # side targets: (request, target) tokens

    @property
    def tokens(self) -> int:  # in a packed pass: the prompt once, each response once, each side target's request
        pair = len(self.prompt_ids) + len(self.chosen_ids) + len(self.rejected_ids) + sum(map(len, self.aux_ids))
        return pair + sum(len(a) + len(b) for a, b in self.side)


@dataclass
class UnpairedExample:
    prompt_ids: list[int]
    response_ids: list[int]
    desirable: bool
    kl_response_ids: list[int]  # another prompt's response: (x, y') for KTO's reference point
    ref_logp: float | None = None
    ref_kl_logp: float | None = None
    response_mask: list[bool] | None = None  # True on the tokens trained on (Rollout.policy_mask); None: all
    kl_mask: list[bool] | None = None

    @property
    def tokens(self) -> int:
        return len(self.prompt_ids) + len(self.response_ids) + len(self.kl_response_ids)


@dataclass
class GroupExample:
    """Responses to one prompt: best first for ranked losses, every sample in sample order for scored ones."""

    prompt_ids: list[int]
    responses: list[list[int]]
    scores: list[float]  # non-increasing for ranked losses
    ref_logps: list[float] | None = None
    prev_logps: list[float] | None = None  # under the policy that sampled them (scored losses)
    weights: list[float] | None = None  # each response's probability (sampling.exhaustive), else None
    masks: list[list[bool] | None] | None = None  # per response, True on the tokens trained on; None: all

    @property
    def tokens(self) -> int:
        return len(self.prompt_ids) + sum(map(len, self.responses))


def _t(values) -> torch.Tensor:
    """Stored values as float64; batch_to() gives them the model's score dtype."""
    return torch.tensor(values, dtype=torch.float64)


def trained_length(ids: list[int], mask: list[bool] | None) -> int:
    """Tokens a response is scored on: the ones the policy produced (what length-normalised losses divide by)."""
    return len(ids) if mask is None else sum(mask)


def collate_pairs(
    model, examples: list[PairExample], loss: Loss, pad_id: int, reference=None, layout: Layout = Layout()
) -> PreferenceBatch:
    B = len(examples)
    needs = loss.needs
    prompts = [e.prompt_ids for e in examples]
    k = len(examples[0].aux_ids) if "aux_samples" in needs else 0
    # one group per pair: the prompt once, then chosen, rejected and k aux responses
    groups = [
        group(
            e.prompt_ids,
            [e.chosen_ids, e.rejected_ids, *e.aux_ids[:k]],
            [e.chosen_mask, e.rejected_mask, *(e.aux_masks or [None] * k)[:k]],
        )
        for e in examples
    ]
    batch = PreferenceBatch(
        chosen_logps=torch.empty(0),
        rejected_logps=torch.empty(0),
        chosen_lengths=_t([trained_length(e.chosen_ids, e.chosen_mask) for e in examples]),
        rejected_lengths=_t([trained_length(e.rejected_ids, e.rejected_mask) for e in examples]),
    )
    if "token_stats" in needs:
        responses = [e.chosen_ids for e in examples] + [e.rejected_ids for e in examples]
        masks = [e.chosen_mask for e in examples] + [e.rejected_mask for e in examples]
        s = _token_stats(model, reference, prompts * 2, responses, masks, pad_id, loss)  # rows: chosen, rejected
        batch.chosen_token_logps, batch.rejected_token_logps = s["token_logps"][:B], s["token_logps"][B:]
        batch.ref_chosen_token_logps, batch.ref_rejected_token_logps = (
            s["ref_token_logps"][:B],
            s["ref_token_logps"][B:],
        )
        batch.chosen_token_kl, batch.rejected_token_kl = s["token_kl"][:B], s["token_kl"][B:]
        batch.chosen_mask, batch.rejected_mask = s["mask"][:B], s["mask"][B:]
        if "ref_hidden" in s:
            batch.ref_chosen_hidden, batch.ref_rejected_hidden = s["ref_hidden"][:B], s["ref_hidden"][B:]
        batch.chosen_logps, batch.rejected_logps = batch.chosen_token_logps.sum(1), batch.rejected_token_logps.sum(1)
    else:
        logps = sequence_logps(model, groups, layout, pad_id).view(B, 2 + k)
        batch.chosen_logps, batch.rejected_logps = logps[:, 0], logps[:, 1]
        if k:
            batch.aux_logps = logps[:, 2:]
    if "reference" in needs and examples[0].ref_logps is None:  # not stored: the live reference scores them now
        if reference is None:
            raise ValueError("pairs without reference log-probs need a live reference model")
        with reference.active() as ref_model:
            ref = sequence_logps(ref_model, groups, layout, pad_id).view(B, 2 + k)
        batch.ref_chosen_logps, batch.ref_rejected_logps = ref[:, 0], ref[:, 1]
        if k:
            batch.ref_aux_logps = ref[:, 2:]
    elif "reference" in needs:
        batch.ref_chosen_logps = _t([require(e.ref_logps, "stored reference log-probs")[0] for e in examples])
        batch.ref_rejected_logps = _t([require(e.ref_logps, "stored reference log-probs")[1] for e in examples])
        if k:
            batch.ref_aux_logps = _t([e.ref_aux_logps for e in examples])  # (B, k)
    if "previous" in needs:
        batch.prev_chosen_logps = _t([require(e.prev_logps, "previous-policy log-probs")[0] for e in examples])
        batch.prev_rejected_logps = _t([require(e.prev_logps, "previous-policy log-probs")[1] for e in examples])
    if "win_rate" in needs:
        batch.chosen_win_rate = _t([require(e.win_rates, "win rates")[0] for e in examples])
        batch.rejected_win_rate = _t([require(e.win_rates, "win rates")[1] for e in examples])
    if "soft_label" in needs:
        batch.soft_label = _t([e.soft_label for e in examples])
    if "margin" in needs:
        batch.margin = _t([require(e.margin, "target margins") for e in examples])
    if "scores" in needs:
        batch.chosen_score = _t([require(e.scores, "judge scores")[0] for e in examples])
        batch.rejected_score = _t([require(e.scores, "judge scores")[1] for e in examples])
    if "side_targets" in needs:
        _side_targets(model, examples, batch, layout, pad_id)
    return batch_to(batch, model)


def _side_targets(model, examples: list[PairExample], batch: PreferenceBatch, layout: Layout, pad_id: int) -> None:
    """Each pair's side targets under the policy, after their own requests: (B, S) summed log-probs, token counts
    and a mask of the real ones (pairs have different numbers; S = the most any has)."""
    B, S = len(examples), max((len(e.side) for e in examples), default=0)
    targets = [(i, s, request, target) for i, e in enumerate(examples) for s, (request, target) in enumerate(e.side)]
    logps, lengths, mask = torch.zeros(B, S), torch.ones(B, S), torch.zeros(B, S, dtype=torch.bool)
    if targets:
        values = sequence_logps(
            model, [group(request, [target], [None]) for _, _, request, target in targets], layout, pad_id
        )  # (N,) one per side target, in targets' order
        rows, cols = torch.tensor([i for i, *_ in targets]), torch.tensor([s for _, s, *_ in targets])
        logps = values.new_zeros(B, S).index_put((rows.to(values.device), cols.to(values.device)), values)
        lengths[rows, cols] = torch.tensor([max(1, len(t)) for *_, t in targets], dtype=lengths.dtype)
        mask[rows, cols] = True
    batch.side_logps, batch.side_lengths, batch.side_mask = logps, lengths, mask


def _token_stats(model, reference, prompts, responses, masks, pad_id, loss) -> dict[str, torch.Tensor]:
    """Per-token policy and reference log-probs, KL(ref || policy) per position, masks (and reference states).
    masks: per response, True on the tokens trained on, or None for all; the others count nowhere."""
    if reference is None:
        raise ValueError(f"{type(loss).__name__} needs a live reference model during training")
    hidden = getattr(loss, "needs_hidden_states", False)
    pol = response_token_stats(model, prompts, responses, pad_id, full_distribution=True)
    with reference.active() as ref_model:
        ref = response_token_stats(ref_model, prompts, responses, pad_id, full_distribution=True, hidden_states=hidden)
    assert ref.log_dist is not None and pol.log_dist is not None  # full_distribution=True fills them
    trained = pol.mask.clone()  # (N, R)
    for i, m in enumerate(masks):
        if m is not None:
            trained[i, : len(m)] &= torch.tensor(m, device=trained.device)
    # KL(ref || pi) at each position = sum_v p_ref(v) (log p_ref(v) - log pi(v)): (N, R)
    kl = (ref.log_dist.exp() * (ref.log_dist - pol.log_dist)).sum(-1) * trained
    out = {"token_logps": pol.logps * trained, "ref_token_logps": ref.logps * trained, "token_kl": kl, "mask": trained}
    if hidden:
        assert ref.hidden is not None  # hidden_states=True fills it
        out["ref_hidden"] = ref.hidden
    return out


def collate_unpaired(
    model, examples: list[UnpairedExample], loss: Loss, pad_id: int, reference=None, layout: Layout = Layout()
) -> UnpairedBatch:
    # the mismatched response is scored after this example's prompt, so both share it
    groups = [group(e.prompt_ids, [e.response_ids, e.kl_response_ids], [e.response_mask, e.kl_mask]) for e in examples]
    logps = sequence_logps(model, groups, layout, pad_id).view(-1, 2)  # (B, 2): matched, mismatched
    batch = UnpairedBatch(
        logps=logps[:, 0],
        desirable=torch.tensor([e.desirable for e in examples]),
        kl_logps=logps[:, 1].detach(),  # KTO's reference point gets no gradient
        lengths=_t([trained_length(e.response_ids, e.response_mask) for e in examples]),
    )
    if "reference" in loss.needs:
        batch.ref_logps = _t([e.ref_logp for e in examples])
        batch.ref_kl_logps = _t([e.ref_kl_logp for e in examples])
    return batch_to(batch, model)


def collate_groups(
    model, examples: list[GroupExample], loss: Loss, pad_id: int, reference=None, layout: Layout = Layout()
) -> RankedBatch:
    B, n = len(examples), max(len(e.responses) for e in examples)
    flat = sequence_logps(model, [_group_of(e) for e in examples], layout, pad_id)  # (sum of group sizes,)
    logps = torch.zeros(B, n, device=flat.device)
    mask = torch.zeros(B, n, dtype=torch.bool)
    scores, lengths, ref = torch.zeros(B, n), torch.ones(B, n), torch.zeros(B, n)
    rows, cols = [], []
    for b, e in enumerate(examples):
        m = len(e.responses)
        rows += [b] * m
        cols += list(range(m))
        mask[b, :m] = True
        scores[b, :m] = _t(e.scores)
        # a padded slot repeats the group's lowest score so it never outranks a real response
        scores[b, m:] = e.scores[-1]
        lengths[b, :m] = _t(_lengths_of(e))
        if e.ref_logps is not None:
            ref[b, :m] = _t(e.ref_logps)
    at = (torch.tensor(rows, device=flat.device), torch.tensor(cols, device=flat.device))
    logps = logps.index_put(at, flat)  # keeps the graph to flat
    batch = RankedBatch(
        logps=logps, scores=scores, mask=mask, lengths=lengths, ref_logps=ref if "reference" in loss.needs else None
    )
    return batch_to(batch, model)


def collate_scored(
    model, examples: list[GroupExample], loss: Loss, pad_id: int, reference=None, layout: Layout = Layout()
) -> ScoredBatch:
    B, n = len(examples), max(len(e.responses) for e in examples)
    groups = [_group_of(e) for e in examples]
    # slot of each response, numbered group by group as pack numbers them: b * n + i
    slot = torch.tensor([b * n + i for b, e in enumerate(examples) for i in range(len(e.responses))])
    mask = torch.zeros(B, n, dtype=torch.bool)
    rewards, lengths = torch.zeros(B, n, dtype=torch.float64), torch.ones(B, n, dtype=torch.float64)
    for b, e in enumerate(examples):
        m = len(e.responses)
        mask[b, :m] = True
        rewards[b, :m] = _t(e.scores)
        lengths[b, :m] = _t(_lengths_of(e))
    batch = ScoredBatch(logps=torch.empty(0), rewards=rewards, mask=mask, lengths=lengths)
    if "token_logps" in loss.needs:  # per token, under the policy and the live reference, in one layout
        if reference is None:
            raise ValueError(f"{type(loss).__name__} needs a live reference model during training")
        packed = pack(groups, layout, pad_id)
        batch.token_logps = token_logps(model, packed, layout)  # (M,)
        with reference.active() as ref_model:
            batch.ref_token_logps = token_logps(ref_model, packed, layout)  # (M,)
        owner = packed.owner.to(batch.token_logps.device)
        batch.token_slot = slot.to(owner.device)[owner]  # (M,)
        flat = torch.zeros(len(slot), dtype=batch.token_logps.dtype, device=owner.device)
        flat = flat.index_add(0, owner, batch.token_logps)  # (responses,)
    else:
        flat = sequence_logps(model, groups, layout, pad_id)  # (responses,)
    batch.logps = (
        torch.zeros(B * n, dtype=flat.dtype, device=flat.device).index_put((slot.to(flat.device),), flat).view(B, n)
    )  # keeps the graph to flat
    if "reference" in loss.needs:
        batch.ref_logps = _padded([require(e.ref_logps, "stored reference log-probs") for e in examples], n)
    if "previous" in loss.needs:
        batch.prev_logps = _padded([require(e.prev_logps, "sampling-policy log-probs") for e in examples], n)
    if any(e.weights is not None for e in examples):
        batch.weights = _padded([require(e.weights, "response probabilities") for e in examples], n)
    return batch_to(batch, model)


def _group_of(e: GroupExample) -> Group:
    return group(e.prompt_ids, e.responses, e.masks or [None] * len(e.responses))


def _lengths_of(e: GroupExample) -> list[int]:
    return [trained_length(r, m) for r, m in zip(e.responses, e.masks or [None] * len(e.responses))]


def _padded(rows: list[list[float]], n: int) -> torch.Tensor:
    """(B, n), each row padded with zeros."""
    return _t([list(r) + [0.0] * (n - len(r)) for r in rows])


# data shape -> collate(model, examples, loss, pad_id, reference, layout) -> the loss's batch
COLLATE: dict[str, Callable[..., PreferenceBatch | UnpairedBatch | RankedBatch | ScoredBatch]] = {
    "pairs": collate_pairs,
    "unpaired": collate_unpaired,
    "ranked": collate_groups,
    "scored": collate_scored,
    "demonstrations": collate_scored,
}
