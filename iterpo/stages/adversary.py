"""adversary: a discriminator retrained each round to tell the policy's responses from reference texts, for the
``adversarial`` judge of the next round.

The co-trained judge of EvoBot (Li et al. 2024, "EvoBot: An Evolving Bot Detection and Generation Framework"),
where a detector is trained against the generator's latest outputs and its verdict is the generator's reward,
and of Adversarial Preference Optimization (Cheng et al. 2024), where the reward model is retrained on the
policy's newest samples against gold responses. Each round the stage takes the round's responses (label 0) and
as many reference texts (label 1), trains a one-output classifier on the backbone with binary cross-entropy,
and saves it as the round's ``adversary/``; the ``adversarial`` judge of the next round scores each response
with its log-odds of being a reference text, so the policy is pushed towards what the discriminator cannot
tell from the references, and the discriminator of the round after is trained against that policy.

Reference texts (``texts``): ``answers``, each prompt's reference answer (``Prompt.answer``) as the response;
or a file of demonstrations, rows with ``prompt`` (text or chat messages) and ``chosen`` (the reference text),
as ``warmup.file`` and ``iterpo train --loss sft`` read them.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from iterpo.errors import ConfigError, DataError
from iterpo.progress import bar
from iterpo.records import Rollout
from iterpo.sampling import derive_seed
from iterpo.stages.base import register_stage
from iterpo.stages.reward_model import TrainsClassifier
from iterpo.training.offline import read_preferences
from iterpo.training.reward_model import (
    LabelledText,
    reply_text,
    row_chat,
    save_reward_model,
    steps,
    train_discriminator,
)


def file_texts(path: str, what: str) -> list[LabelledText]:
    """A demonstrations file's rows as reference texts: (prompt as chat messages, chosen as the text)."""
    out = []
    for row in read_preferences(path, demonstrations=True, what=what):
        key, messages = row_chat(row)
        out.append(LabelledText(key, messages, reply_text(row["chosen"]), True))
    return out


def balanced(reference: list[LabelledText], policy: list[LabelledText], most: int, seed: int) -> list[LabelledText]:
    """As many texts of each side, at most ``most``, drawn without replacement from a seeded generator."""
    n = min(len(reference), len(policy), most)
    rng = random.Random(seed)
    return rng.sample(reference, n) + rng.sample(policy, n)


@register_stage("adversary")
@dataclass
class Adversary(TrainsClassifier):
    """A classifier of reference texts against the round's responses; the adversarial judge of later rounds."""

    reads = ("rollouts",)
    writes = {"adversary_report": "adversary.json", "adversary": "adversary"}
    model_role = "adversary"
    texts: str = "answers"
    """'answers': each prompt's reference answer; else a demonstrations file (prompt, chosen) of reference texts."""
    max_texts: int = 256
    """Texts of each side a round trains on, at most (the smaller side sets the number)."""

    def check(self, earlier: list) -> None:
        if self.max_texts < 1:
            raise ValueError(f"max_texts must be at least 1, got {self.max_texts}")
        self.training().check()
        if self.texts != "answers":
            self.reference_file()  # bad rows fail before anything runs

    def fits(self, plan) -> None:
        if self.texts == "answers" and not any(p.answer for p in plan.train_prompts):
            raise ConfigError(
                f"stage {self.label!r}: texts: answers needs prompts with reference answers; task "
                f"{plan.config.task.name!r} has none. Give a file of reference texts (prompt, chosen)"
            )

    def reference_file(self) -> list[LabelledText]:
        if getattr(self, "_file", None) is None:
            self._file = file_texts(self.texts, f"stage {self.label}: texts")
        return self._file

    def reference_texts(self, ctx, prompt_ids: list[str]) -> list[LabelledText]:
        if self.texts != "answers":
            return self.reference_file()
        prompts = [ctx.prompt(pid) for pid in prompt_ids]
        return [LabelledText(p.prompt_id, p.messages, p.answer, True) for p in prompts if p.answer]

    def run(self, ctx, r):
        rollouts = ctx.read(r, self.file("rollouts"), Rollout)
        prompt_ids = list(dict.fromkeys(x.prompt_id for x in rollouts))
        policy = [
            LabelledText(x.prompt_id, ctx.prompt(x.prompt_id).messages + x.context, x.text, False)
            for x in rollouts
            if x.text.strip()
        ]
        seed = derive_seed(ctx.config.run.seed, "adversary", r)
        texts = balanced(self.reference_texts(ctx, prompt_ids), policy, self.max_texts, seed)
        if not texts:
            raise DataError(f"round {r}, stage {self.label}: no reference texts or no non-empty responses to train on")
        opts = self.training()
        opts.seed = ctx.config.run.seed + r
        backbone = self.backbone or ctx.plan.base_path
        with bar("discriminator", steps(texts, opts)) as advance:
            model, tok, report = train_discriminator(backbone, texts, opts, ctx.plan.device, advance)
        ctx.store.write_dir(ctx.store.path(r, self.file("adversary")), lambda tmp: save_reward_model(model, tok, tmp))
        summary = {"round": r, "trained": True, "backbone": backbone, **report}
        ctx.store.write_json(ctx.store.path(r, self.file("adversary_report")), summary)
        return {k: summary[k] for k in ("texts", "heldout_texts", "heldout_accuracy", "train_accuracy")}
