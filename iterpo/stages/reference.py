"""reference: log-probs of every response the loss uses, under the reference and/or the round's starting policy."""

from __future__ import annotations

from dataclasses import dataclass

from iterpo.models.logprobs import batch_groups, score_batches
from iterpo.progress import bar
from iterpo.records import RefLogp, to_table
from iterpo.stages.base import ServesLoss, register_stage
from iterpo.training import LiveReference
from iterpo.training.assemble import responses_to_score, shared_prefixes, trained_mask

SCORED_NEEDS = frozenset({"reference", "previous"})  # the needs of a loss this stage computes
BATCHES_PER_SHARD = 4  # reference batches a cluster worker scores at a time


def score(ctx, r: int, which: str, prompt_ids: list, responses: list, masks: list, advance, stage=None) -> list[float]:
    """Log-probs of responses under round r's "reference" policy, the "previous" one (the policy at stage's place
    in the round: the one the round starts from, unless a train stage before it changed it) or the one "before
    previous" (after round r - 2), here or, batch by batch, on the cluster's workers (the batches are
    score_responses', so the values are the same)."""
    pool = ctx.pool()
    if pool is None:
        if which == "reference":
            model = ctx.reference(r, stage=stage)
        elif which == "previous":
            model = LiveReference(ctx.policy_before(r, stage) if stage is not None else ctx.policy_after(r - 1))
        else:
            model = LiveReference(ctx.policy_after(r - 2))
        return ctx.score(model, prompt_ids, responses, advance, masks)
    if which == "reference":
        start, adapters_off = ctx.reference_source(r, stage)
    elif which == "previous":
        start, adapters_off = (ctx.source_before(r, stage) if stage is not None else ctx.policy_source(r - 1)), False
    else:
        start, adapters_off = ctx.policy_source(r - 2), False
    batches = score_batches(prompt_ids, responses, ctx.config.eval.batch_size)
    shards = [batches[i : i + BATCHES_PER_SHARD] for i in range(0, len(batches), BATCHES_PER_SHARD)]
    jobs = [
        (start, adapters_off, [batch_groups(prompt_ids, responses, masks, b) for b in shard], ctx.pad_id)
        for shard in shards
    ]
    out = [0.0] * len(prompt_ids)

    def arrived(n: int, values: list[list[float]]) -> None:
        for batch, batch_values in zip(shards[n], values):
            for i, v in zip([i for g in batch for i in g], batch_values):
                out[i] = v
            advance(sum(len(g) for g in batch))

    pool.map("score", jobs, arrived)
    return out


def reference_rows(ctx, r: int, records: list, needs: frozenset[str], stage=None) -> list[RefLogp]:
    """Reference (and previous-policy) log-probs of every response records name, scored once each, as a loss
    with these needs uses them; the previous policy is the one at stage's place in the round."""
    rollouts = ctx.responses(r)
    keys = responses_to_score(records)
    prompt_ids = [ctx.prompt_ids_of(pid, context) for pid, _, _, _, context in keys]
    responses = [rollouts[(rpid, source, idx)].token_ids for _, rpid, source, idx, _ in keys]
    shared = shared_prefixes(records)  # a step pair's shared steps: context here as in training
    masks = [trained_mask(rollouts[k[1:4]], shared.get(k, 0), ctx.mask_reasoning) for k in keys]
    done: dict[str, list[float]] = {}  # policy -> log-probs of every response: each policy is scored once

    def under(which: str, title: str) -> list[float]:
        if which not in done:
            with bar(title, len(keys)) as advance:
                done[which] = list(score(ctx, r, which, prompt_ids, responses, masks, advance, stage))
        return done[which]

    ref: list[float] | list[None] = [None] * len(keys)
    prev: list[float] | list[None] = [None] * len(keys)
    kind = ctx.config.reference.policy
    if "reference" in needs:
        if kind == "extrapolated":
            ref = extrapolated(r, ctx.config.reference.alpha, under)
        else:  # "previous" is the policy the round starts from: scored once if the loss needs both
            ref = under("previous" if kind == "previous" else "reference", "reference")
    if "previous" in needs:
        prev = under("previous", "previous policy")
    return [RefLogp(k[0], k[1], k[3], a, b, k[2], k[4]) for k, a, b in zip(keys, ref, prev)]


def extrapolated(r: int, alpha: float, under) -> list[float]:
    """APO's reference (He et al. 2024, "Accelerated Preference Optimization", arXiv 2410.06293): round r is
    trained against pi_hat proportional to pi_t (pi_t / pi_{t-1})^alpha, with pi_t the policy the round starts
    from. Pairwise losses see only differences of log-probs of responses to one prompt, where the normaliser
    cancels, so each response gets log pi_hat(y) = (1 + alpha) log pi_t(y) - alpha log pi_{t-1}(y). It is not a
    distribution, so token-level losses cannot use it (the plan refuses them). Round 1 has no pi_{t-1}: pi_hat is
    the starting policy. under(which, title) scores every response under a policy."""
    if r == 1:
        return under("previous", "reference")
    before = under("before previous", "reference: the policy before")  # first: pi_t stays in memory to train
    now = under("previous", "reference: previous policy")
    return [(1 + alpha) * a - alpha * b for a, b in zip(now, before)]


@register_stage("reference")
@dataclass
class Reference(ServesLoss):
    """Once per round, so training never runs a reference model (with LoRA: the policy with adapters off).
    Derived rounds skip it for reference-free losses."""

    reads = ("examples",)
    writes = {"ref_logps": "ref_logps.parquet"}

    def needed(self, plan) -> bool:
        return bool(plan.loss.needs & SCORED_NEEDS)

    def run(self, ctx, r):
        loss = self.loss_of(ctx.plan)
        rows = reference_rows(ctx, r, ctx.records(r, self.file("examples"), loss.data_shape), loss.needs, self)
        ctx.store.write_parquet(ctx.store.path(r, self.file("ref_logps")), to_table(rows, RefLogp))
        return ctx.cluster_info()
