"""train: the configured loss on the round's examples, from the policy the round starts from."""

from __future__ import annotations

import json
from dataclasses import dataclass

import torch

from iterpo.models.loading import save_policy
from iterpo.progress import bar
from iterpo.records import RefLogp
from iterpo.sampling import derive_seed
from iterpo.stages.base import Stage, register_stage
from iterpo.stages.reference import SCORED_NEEDS
from iterpo.training import train
from iterpo.training.assemble import training_examples


def fit(ctx, model, r: int, records: list, scored: list[RefLogp], purpose: str) -> list[dict]:
    """Train model in place on round r's records with the run's loss; the log, one row per optimizer step.

    purpose names the training ("train", "look-ahead"): its seed derives from it, so two trainings of a round
    draw different batch orders, and a repeated one the same.
    """
    needs = ctx.plan.loss.needs
    examples = training_examples(records, ctx.responses(r), ctx.prompt_ids_of, scored, needs)
    reference = ctx.reference(r, frozen_copy=True) if "token_stats" in needs else None
    seed = derive_seed(ctx.config.run.seed, r, purpose)
    torch.manual_seed(seed)
    with bar("training" if purpose == "train" else purpose, len(examples) * ctx.config.train.epochs) as advance:
        return train(model, examples, ctx.plan.loss, ctx.config.train, seed, ctx.pad_id, advance, reference)


@register_stage("train")
@dataclass
class Train(Stage):
    """AdamW with warm-up, gradient accumulation and clipping (iterpo.training); the policy is saved every
    ``run.save_every`` rounds and after the last, and kept in memory for the next round."""

    reads = ("examples", "ref_logps")
    writes = {"train_log": "train.jsonl", "policy": "checkpoint"}

    def reads_for(self, plan) -> tuple[str, ...]:
        return self.reads if plan.loss.needs & SCORED_NEEDS else ("examples",)

    def run(self, ctx, r):
        model = ctx.policy_after(r - 1)
        scored = []
        if ctx.plan.loss.needs & SCORED_NEEDS:
            scored = ctx.read(r, self.file("ref_logps"), RefLogp)
        log = fit(ctx, model, r, ctx.records(r, self.file("examples")), scored, "train")
        ctx.trained(r)
        cfg = ctx.config.run
        if r % cfg.save_every == 0 or r == cfg.rounds:
            lora = ctx.config.model.lora
            save_policy(
                model,
                ctx.tokenizer,
                ctx.store.path(r, self.file("policy")),
                bool(lora and lora.save_merged),
                ctx.store.write_dir,
            )
        ctx.store.write_text(ctx.store.path(r, self.file("train_log")), "".join(json.dumps(x) + "\n" for x in log))
        return {"steps": len(log)}
