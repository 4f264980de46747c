"""reward_model: a Bradley-Terry reward model trained on the round's preferences, for the judge of later rounds.

The model is saved as the round's ``reward_model/`` directory, a sequence-classification model the
``learned_reward`` judge (in later rounds) and the ``reward_model`` judge (anywhere) load; ``reward_model.json``
reports its held-out pair accuracy and its training losses.
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass
from typing import Literal

from iterpo.errors import ConfigError
from iterpo.pairing.base import scored_apart
from iterpo.progress import bar
from iterpo.records import Judgement, Preference, Rollout, by_prompt
from iterpo.stages.base import Stage, register_stage
from iterpo.training.reward_model import (
    RewardPair,
    RewardTraining,
    save_reward_model,
    steps,
    train_ensemble,
    train_preference_model,
)


def all_pairs(ctx, rollouts: list[Rollout], judgements: list[Judgement], per_prompt: int) -> list[RewardPair]:
    """Every pair of one prompt's responses the judge scored apart, higher first: each response with each one
    scored lower, in sample order, at most per_prompt pairs a prompt."""
    score = {(j.prompt_id, j.sample_idx): j.score for j in judgements if not j.failed}
    out = []
    for pid, group in by_prompt(rollouts).items():
        found = scored_apart(group, score)[:per_prompt]
        messages = ctx.prompt(pid).messages
        out += [RewardPair(pid, messages + w.context, w.text, lo.text) for w, lo in found]
    return out


def example_pairs(ctx, prefs: list[Preference]) -> list[RewardPair]:
    """The round's training pairs, after the context each was trained after."""
    return [RewardPair(x.prompt_id, ctx.prompt(x.prompt_id).messages + x.context, x.chosen, x.rejected) for x in prefs]


@dataclass
class TrainsClassifier(Stage):
    """Base of the stages that train a sequence-classification head on a backbone for a judge of later rounds
    (reward_model, adversary): their training options."""

    backbone: str | None = None
    """The model the head is put on (a directory; default: the run's starting model)."""
    epochs: int = 2
    lr: float = 1.0e-5
    batch_size: int = 8
    heldout: float = 0.2
    """Share of the prompts whose pairs or texts are held out to measure its accuracy."""
    max_length: int = 512

    def training(self) -> RewardTraining:
        own = ("epochs", "lr", "batch_size", "heldout", "max_length")
        return RewardTraining(**{k: getattr(self, k) for k in own})


@register_stage("reward_model")
@dataclass
class TrainRewardModel(TrainsClassifier):
    """A Bradley-Terry reward model (a one-output head on the backbone) trained on the round's pairs; a held-out
    share of the prompts measures its pair accuracy."""

    reads = ("rollouts", "judgements")
    writes = {"reward_model_report": "reward_model.json", "reward_model": "reward_model"}
    model_role = "reward_model"
    pairs: Literal["all", "examples"] = "all"
    """'all': every pair of the round's responses the judge scored apart (each response with each lower-scored
    one of its prompt, at most per_prompt a prompt); 'examples': the pairs the pair stage made for the loss."""
    per_prompt: int = 4
    rounds: list[int] | None = None
    """The rounds that train one (null: every round); the others record that they did not."""
    model_type: Literal["bradley_terry", "general_preference"] = "bradley_terry"
    """A reward model (the learned_reward judge scores with it), or a general preference model, GPM (the
    learned_reward judge compares each prompt's responses with it, as a pairwise judge)."""
    members: int = 1
    """bradley_terry: models to train, each on a bootstrap resample of the training prompts, saved as
    reward_model/member-N/: the learned_reward judge averages them (their spread is its uncertainty) and a
    strength stage reads their reward differences per pair."""
    dims: int = 4
    """general_preference: the embedding's size 2k."""
    tau: float = 0.1
    """general_preference: P(y beats y') = sigmoid(s(y, y') / tau)."""

    def check(self, earlier: list) -> None:
        if self.per_prompt < 1:
            raise ValueError(f"per_prompt must be at least 1, got {self.per_prompt}")
        if self.members < 1 or (self.members > 1 and self.model_type != "bradley_terry"):
            raise ValueError(
                f"members must be at least 1, and an ensemble is of bradley_terry models (got {self.members})"
            )
        self.training().check()

    def reads_for(self, plan) -> tuple[str, ...]:
        return ("examples",) if self.pairs == "examples" else self.reads

    def fits(self, plan) -> None:
        if self.pairs == "examples" and plan.loss.data_shape != "pairs":
            raise ConfigError(
                f"stage {self.label!r}: pairs: examples needs preference pairs; the loss {plan.loss.name} trains on "
                f"{plan.loss.data_shape}. Use pairs: all"
            )

    def training(self) -> RewardTraining:
        return dataclasses.replace(super().training(), kind=self.model_type, dims=self.dims, tau=self.tau)

    def run(self, ctx, r):
        report_path = ctx.store.path(r, self.file("reward_model_report"))
        if self.rounds is not None and r not in self.rounds:
            ctx.store.write_json(report_path, {"round": r, "trained": False})
            return {"trained": False}
        if self.pairs == "examples":
            pairs = example_pairs(ctx, ctx.read(r, self.file("examples"), Preference))
        else:
            rollouts = ctx.read(r, self.file("rollouts"), Rollout)
            pairs = all_pairs(ctx, rollouts, ctx.read(r, self.file("judgements"), Judgement), self.per_prompt)
        if not pairs:
            ctx.store.write_json(report_path, {"round": r, "trained": False, "why": "no pair"})
            return {"trained": False}
        opts = self.training()
        opts.seed = ctx.config.run.seed + r
        backbone = self.backbone or ctx.plan.base_path
        target = ctx.store.path(r, self.file("reward_model"))
        with bar("reward model", self.members * steps(pairs, opts)) as advance:
            if self.members == 1:
                model, tok, report = train_preference_model(backbone, pairs, opts, ctx.plan.device, advance)
                ctx.store.write_dir(target, lambda tmp: save_reward_model(model, tok, tmp))
            else:
                built, report = train_ensemble(backbone, pairs, opts, self.members, ctx.plan.device, advance)

                def fill(tmp):
                    for m, (model, tok) in enumerate(built):
                        save_reward_model(model, tok, tmp / f"member-{m}")

                ctx.store.write_dir(target, fill)
        summary = {"round": r, "trained": True, "backbone": backbone, "members": self.members, **asdict(report)}
        ctx.store.write_json(report_path, summary)
        return {k: summary[k] for k in ("pairs", "heldout_pairs", "heldout_accuracy", "train_accuracy")}
