"""pair: judged responses -> the training examples the loss's data shape needs (iterpo.pairing)."""

from __future__ import annotations

from dataclasses import dataclass

from iterpo.pairing import RECORD_TYPE, build_examples
from iterpo.records import Judgement, Rollout, to_table
from iterpo.sampling import derive_seed
from iterpo.stages.base import Stage, register_stage

AUX_SAMPLES = 2  # extra samples per prompt for losses with a term on them (XPO, VPO, HyPO)


@register_stage("pair")
@dataclass
class Pair(Stage):
    """The configured pairing strategy on every prompt; prompts without an example are counted by reason."""

    reads = ("rollouts", "judgements")
    writes = {"examples": "preferences.parquet"}

    def run(self, ctx, r):
        plan = ctx.plan
        judgements = ctx.read(r, self.file("judgements"), Judgement)
        initial = ctx.initial_responses() if plan.strategy.uses_initial else None
        result = build_examples(
            plan.strategy,
            ctx.prompts_of_round(r),
            ctx.read(r, self.file("rollouts"), Rollout),
            judgements,
            derive_seed(ctx.config.run.seed, r, "pair"),
            initial,
        )
        if "aux_samples" in plan.loss.needs:  # the first k samples of the prompt: i.i.d. draws, unselected
            k = min(AUX_SAMPLES, ctx.config.sampling.samples_per_prompt)
            for x in result.examples:
                x.aux_idxs = list(range(k))
        ctx.store.write_parquet(
            ctx.store.path(r, self.file("examples")), to_table(result.examples, RECORD_TYPE[result.data_shape])
        )
        return {
            "examples": len(result.examples),
            "skipped": dict(result.skipped),
            "failed_judgements": result.failed_judgements,
        }
