"""train: the configured loss on the round's examples, from the policy the round starts from."""

from __future__ import annotations

import copy
import json
import shutil
from dataclasses import dataclass
from typing import Any

import torch

from iterpo.config import TrainSection
from iterpo.losses.base import LIVE_NEEDS, LOSSES
from iterpo.models.loading import load_policy_checkpoint, save_policy
from iterpo.progress import bar
from iterpo.records import RefLogp
from iterpo.sampling import derive_seed
from iterpo.stages.base import ServesLoss, register_stage
from iterpo.stages.reference import SCORED_NEEDS
from iterpo.training import train
from iterpo.training.assemble import training_examples
from iterpo.training.distributed import TrainJob, launch


def fit(ctx, model, r: int, records: list, scored: list[RefLogp], purpose: str, loss=None, stage=None) -> list[dict]:
    """Train model in place on round r's records with loss (default: the run's); the log, one row per optimizer
    step. A live reference "previous" is the policy at stage's place in the round (default: the round's start).

    purpose names the training ("train", "look-ahead"): its seed derives from it, so two trainings of a round
    draw different batch orders, and a repeated one the same.
    """
    loss = loss or ctx.plan.loss
    settings = (stage.settings(ctx.plan) if isinstance(stage, Train) else ctx.config.train).of_round(r)
    needs = loss.needs
    examples = training_examples(
        records, ctx.responses(r), ctx.prompt_ids_of, scored, needs, ctx.mask_reasoning, ctx.side_tokens
    )
    reference = ctx.reference(r, frozen_copy=True, stage=stage) if needs & LIVE_NEEDS else None
    seed = derive_seed(ctx.config.run.seed, r, purpose)
    torch.manual_seed(seed)
    with bar("training" if purpose == "train" else purpose, len(examples) * settings.epochs) as advance:
        return train(model, examples, loss, settings, seed, ctx.pad_id, advance, reference)


def fit_on_processes(
    ctx, r: int, records: list, scored: list[RefLogp], purpose: str, loss_spec: dict, stage
) -> tuple[list[dict], object]:
    """fit() on train.processes processes (iterpo.training.distributed); (the log, the trained policy).
    loss_spec: {name: ..., hyperparameters...}, as the processes build the loss again."""
    cfg, plan = ctx.config, ctx.plan
    settings = stage.settings(plan).of_round(r)
    needs = LOSSES.get(loss_spec["name"]).needs
    scratch = ctx.store.round_dir(r) / f".{purpose}-processes"
    shutil.rmtree(scratch, ignore_errors=True)
    job = TrainJob(
        examples=training_examples(
            records, ctx.responses(r), ctx.prompt_ids_of, scored, needs, ctx.mask_reasoning, ctx.side_tokens
        ),
        loss=loss_spec,
        train=settings.model_dump(),
        seed=derive_seed(cfg.run.seed, r, purpose),
        pad_id=ctx.pad_id,
        base_path=plan.base_path,
        dtype=cfg.model.dtype,
        lora=cfg.model.lora.model_dump() if cfg.model.lora else None,
        lora_seed=derive_seed(cfg.run.seed, "lora-init"),
        start=ctx.source_before(r, stage),  # where the processes load the policy the stage starts from
        reference=cfg.reference.policy if needs & LIVE_NEEDS else None,
        device=plan.device,
        ema_path=ctx.ema_source(r - 1) if cfg.reference.policy == "ema" and needs & LIVE_NEEDS else None,
    )
    ctx.release_policy()  # the processes load their own replicas: do not hold another one meanwhile
    log, trained = launch(job, scratch, settings.processes, cfg.run.threads)
    model = load_policy_checkpoint(trained, plan.base_path, cfg.model.dtype, cfg.model.lora, plan.device)
    shutil.rmtree(scratch, ignore_errors=True)
    return log, model


@register_stage("train")
@dataclass
class Train(ServesLoss):
    """AdamW with warm-up, gradient accumulation and clipping (iterpo.training); the policy is saved every
    ``run.save_every`` rounds and after the last, and kept in memory for the next round."""

    reads = ("examples", "ref_logps")
    writes = {"train_log": "train.jsonl", "policy": "checkpoint"}
    updates_policy: bool = True
    """True: train the policy at this place in the round (the round's start, or what an earlier train stage of
    the round made: SFT, then DPO); the round's last such stage makes the round's policy. False: a side training
    of a copy (EGPO's and Nash-MP's half step), always saved under the stage's own name for later stages of the
    round (``sample: {policy: NAME}``), the policy left as it was."""
    train: dict[str, Any] | None = None
    """This stage's training settings over the run's train section, e.g. {lr: 1.0e-6, epochs: 1}: an SFT stage
    at a smaller learning rate than the preference stage after it, the remedy Wang et al. 2025 ("Implicit
    Reward as the Bridge: A Unified View of SFT and DPO Connections") propose for SFT's updates, which no KL
    term constrains."""

    def settings(self, plan) -> TrainSection:
        """The run's train section with this stage's own settings over it (ConfigError when they are invalid)."""
        if not self.train:
            return plan.config.train
        return plan.config.train.overridden(self.train, f"round.stages: stage {self.label!r}: train")

    def reads_for(self, plan) -> tuple[str, ...]:
        return self.reads if self.loss_of(plan).needs & SCORED_NEEDS else ("examples",)

    def run(self, ctx, r):
        loss = self.loss_of(ctx.plan)
        scored = []
        if loss.needs & SCORED_NEEDS:
            scored = ctx.read(r, self.file("ref_logps"), RefLogp)
        records = ctx.records(r, self.file("examples"), loss.data_shape)
        if not self.updates_policy:
            return self.side(ctx, r, records, scored)
        ctx.forget_handoffs(r)  # this round's policy is about to change: copies made of it for other processes go
        if self.settings(ctx.plan).processes > 1:
            log, model = fit_on_processes(ctx, r, records, scored, self.label, self.loss_spec(ctx.plan), self)
            ctx.set_policy(model, r, self)
        else:
            model = ctx.policy_before(r, self)  # the round's start, or what an earlier train stage of it made
            log = fit(ctx, model, r, records, scored, self.label, loss, self)
            ctx.trained(r, self)
        cfg = ctx.config.run
        last = self is ctx.plan.policy_stage()  # a train stage before the round's last always saves: it resumes
        if not last or r % cfg.save_every == 0 or r == cfg.rounds:
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

    def side(self, ctx, r: int, records: list, scored: list[RefLogp]) -> dict:
        """Train a copy of the policy at this stage's place in the round and save it under this stage's name."""
        if self.settings(ctx.plan).processes > 1:
            log, model = fit_on_processes(ctx, r, records, scored, self.label, self.loss_spec(ctx.plan), self)
        else:
            model = copy.deepcopy(ctx.policy_before(r, self))
            log = fit(ctx, model, r, records, scored, self.label, self.loss_of(ctx.plan), self)
        target = ctx.store.path(r, self.file("policy"))
        merged = target.with_name(target.name + "-full")  # a merged copy of an earlier version (vLLM, LoRA)
        if merged.exists():
            ctx.store.remove(merged)
        save_policy(model, ctx.tokenizer, target, write_dir=ctx.store.write_dir)
        ctx.store.write_text(ctx.store.path(r, self.file("train_log")), "".join(json.dumps(x) + "\n" for x in log))
        return {"steps": len(log)}
