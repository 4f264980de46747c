"""reference: log-probs of every response the loss uses, under the reference and/or the round's starting policy."""

from __future__ import annotations

from dataclasses import dataclass

from iterpo.progress import bar
from iterpo.records import RefLogp, to_table
from iterpo.stages.base import Stage, register_stage
from iterpo.training import LiveReference
from iterpo.training.assemble import responses_to_score

SCORED_NEEDS = frozenset({"reference", "previous"})  # the needs of a loss this stage computes


def reference_rows(ctx, r: int, records: list) -> list[RefLogp]:
    """Reference (and previous-policy) log-probs of every response records name, scored once each."""
    rollouts = ctx.responses(r)
    keys = responses_to_score(records)
    prompt_ids = [ctx.prompt_ids_of(pid) for pid, _, _, _ in keys]
    responses = [rollouts[(rpid, source, idx)].token_ids for _, rpid, source, idx in keys]
    needs = ctx.plan.loss.needs
    ref = prev = [None] * len(keys)
    if "reference" in needs:
        with bar("reference", len(keys)) as advance:
            ref = ctx.score(ctx.reference(r), prompt_ids, responses, advance)
    if "previous" in needs:
        if "reference" in needs and ctx.config.reference.policy == "previous":
            prev = ref  # the same model: score once
        else:
            with bar("previous policy", len(keys)) as advance:
                prev = ctx.score(LiveReference(ctx.policy_after(r - 1)), prompt_ids, responses, advance)
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
        return {}
