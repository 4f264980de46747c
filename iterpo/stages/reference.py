"""reference: log-probs of every response the loss uses, under the reference and/or the round's starting policy."""

from __future__ import annotations

from dataclasses import dataclass

from iterpo.models.logprobs import score_batches
from iterpo.progress import bar
from iterpo.records import RefLogp, to_table
from iterpo.stages.base import Stage, register_stage
from iterpo.training import LiveReference
from iterpo.training.assemble import responses_to_score

SCORED_NEEDS = frozenset({"reference", "previous"})  # the needs of a loss this stage computes
BATCHES_PER_SHARD = 4  # reference batches a cluster worker scores at a time


def score(ctx, r: int, which: str, prompt_ids: list, responses: list, advance) -> list[float]:
    """Log-probs of responses under round r's "reference" or "previous" policy (the one it starts from), here or,
    batch by batch, on the cluster's workers (the batches are score_responses', so the values are the same)."""
    pool = ctx.pool()
    if pool is None:
        model = ctx.reference(r) if which == "reference" else LiveReference(ctx.policy_after(r - 1))
        return ctx.score(model, prompt_ids, responses, advance)
    start, adapters_off = ctx.reference_source(r) if which == "reference" else (ctx.policy_source(r - 1), False)
    batches = score_batches(prompt_ids, responses, ctx.config.eval.batch_size)
    shards = [batches[i : i + BATCHES_PER_SHARD] for i in range(0, len(batches), BATCHES_PER_SHARD)]
    jobs = [
        (start, adapters_off, [[(prompt_ids[g[0]], [responses[i] for i in g]) for g in b] for b in shard], ctx.pad_id)
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


def reference_rows(ctx, r: int, records: list) -> list[RefLogp]:
    """Reference (and previous-policy) log-probs of every response records name, scored once each."""
    rollouts = ctx.responses(r)
    keys = responses_to_score(records)
    prompt_ids = [ctx.prompt_ids_of(pid) for pid, _, _, _ in keys]
    responses = [rollouts[(rpid, source, idx)].token_ids for _, rpid, source, idx in keys]
    needs = ctx.plan.loss.needs
    ref: list[float | None] = [None] * len(keys)
    prev: list[float | None] = [None] * len(keys)
    if "reference" in needs:
        with bar("reference", len(keys)) as advance:
            ref = list(score(ctx, r, "reference", prompt_ids, responses, advance))
    if "previous" in needs:
        if "reference" in needs and ctx.config.reference.policy == "previous":
            prev = ref  # the same model: score once
        else:
            with bar("previous policy", len(keys)) as advance:
                prev = list(score(ctx, r, "previous", prompt_ids, responses, advance))
    return [RefLogp(pid, rpid, idx, a, b, source) for (pid, rpid, source, idx), a, b in zip(keys, ref, prev)]


@register_stage("reference")
@dataclass
class Reference(Stage):
    """Once per round, so training never runs a reference model (with LoRA: the policy with adapters off).
    Derived rounds skip it for reference-free losses."""

    reads = ("examples",)
    writes = {"ref_logps": "ref_logps.parquet"}

    def needed(self, plan) -> bool:
        return bool(plan.loss.needs & SCORED_NEEDS)

    def run(self, ctx, r):
        rows = reference_rows(ctx, r, ctx.records(r, self.file("examples")))
        ctx.store.write_parquet(ctx.store.path(r, self.file("ref_logps")), to_table(rows, RefLogp))
        return ctx.cluster_info()
