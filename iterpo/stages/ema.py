"""ema: the reference policy as an exponential moving average of the policy's weights over the rounds.

With ``reference.policy: ema`` each round is trained against the average
after the round before: average_0 is the starting model, and after round t
trains, average_t = ema_decay x average_{t-1} + (1 - ema_decay) x policy_t,
computed in float32 and saved in round t's directory, so a resumed run reads
the same reference.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from iterpo.losses.base import LIVE_NEEDS
from iterpo.stages.base import Stage, register_stage
from iterpo.stages.reference import SCORED_NEEDS


@register_stage("ema")
@dataclass
class EMA(Stage):
    """Average the trained policy into the reference (after train); only for losses that use a reference."""

    writes = {"reference_ema": "reference-ema"}

    def needed(self, plan) -> bool:
        return plan.config.reference.policy == "ema" and bool(plan.loss.needs & (SCORED_NEEDS | LIVE_NEEDS))

    def run(self, ctx, r):
        decay = ctx.config.reference.ema_decay
        average = ctx.ema_after(r - 1)  # a model of its own, loaded for this
        policy = dict(ctx.policy_after(r).named_parameters())
        with torch.no_grad():
            for name, p in average.named_parameters():  # tied weights are listed once
                blended = decay * p.float() + (1 - decay) * policy[name].float()
                p.copy_(blended.to(p.dtype))

        def fill(tmp):
            average.save_pretrained(tmp, safe_serialization=True)

        ctx.store.write_dir(ctx.store.path(r, self.file("reference_ema")), fill)
        return {"decay": decay}
