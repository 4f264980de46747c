"""warmup: before round 1, train the model on a file once (SFT on demonstrations, or a pairwise loss on pairs);
the result is the run's starting model.

Pipelines that align a model usually start from a supervised fine-tune of it.
With ``warmup.file`` the run makes that fine-tune itself, in round 0, with the
same trainer as ``iterpo train``, and everything the run calls the starting
model (round 0's evaluation, round 1's policy, ``reference.policy: initial``,
what the cluster's workers load) is then the warmed-up model. It is saved
whole (with LoRA: merged), so it stands in for ``model.path``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from iterpo.losses import get_loss
from iterpo.models.loading import save_policy
from iterpo.progress import bar
from iterpo.stages.base import Stage, register_stage
from iterpo.training.offline import read_preferences, train_file


def warmup_rows(config) -> list[dict]:
    """The warm-up file's rows, checked for the warm-up loss's data shape (UserInputError naming the file)."""
    spec = config.warmup.loss_section()
    demonstrations = get_loss(spec.name, **spec.hyperparams()).data_shape == "demonstrations"
    return read_preferences(config.warmup.file, demonstrations, what="warmup.file")


@register_stage("warmup")
@dataclass
class Warmup(Stage):
    writes = {"policy": "warmup", "train_log": "warmup.jsonl"}

    def needed(self, plan) -> bool:
        return plan.config.warmup.file is not None

    def run(self, ctx, r):
        cfg = ctx.config
        settings = cfg.train.overridden(cfg.warmup.train, "warmup.train")
        config = cfg.model_copy(update={"loss": cfg.warmup.loss_section(), "train": settings})
        model, tokenizer, examples, result = train_file(config, warmup_rows(cfg), bar)
        if cfg.model.lora is not None:  # the starting model is a whole model: the adapters merged in
            model = model.merge_and_unload()
        target = ctx.store.path(r, self.file("policy"))
        save_policy(model, tokenizer, target, write_dir=ctx.store.write_dir)
        ctx.store.write_text(
            ctx.store.path(r, self.file("train_log")), "".join(json.dumps(x) + "\n" for x in result.log)
        )
        ctx.start_from(target)
        return {"examples": len(examples), "steps": len(result.log)}
