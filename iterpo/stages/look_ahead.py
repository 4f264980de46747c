"""look_ahead: Temporal Self-Rewarding's future-guided chosen (Temporal Self-Rewarding Language Models, 2025).

A look-ahead copy of the policy trains on the round's pairs, answers each
paired prompt K times, and the round's judge scores its answers; where the
best of them beats a pair's chosen response, it becomes the chosen. Its
answers are kept (source 'look_ahead'), so later stages find the responses
the examples name. Runs after ``pair`` when the pairing strategy asks for it
(``anchored`` with ``future_guided: true``).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from iterpo.judges import judge_all
from iterpo.pairing import RECORD_TYPE, sigmoid
from iterpo.progress import bar
from iterpo.records import Rollout, by_prompt, to_table
from iterpo.sampling import derive_seed
from iterpo.sampling.base import TransformersSampler
from iterpo.stages.base import Stage, register_stage
from iterpo.stages.reference import SCORED_NEEDS, reference_rows
from iterpo.stages.sample import draw
from iterpo.stages.train import fit


@register_stage("look_ahead")
@dataclass
class LookAhead(Stage):
    """Replace chosen responses by a look-ahead model's better answers (one extra training and sampling pass)."""

    reads = ("examples",)
    writes = {"examples": "guided_preferences.parquet", "look_ahead_rollouts": "future_rollouts.parquet"}

    def needed(self, plan) -> bool:
        return plan.strategy.look_ahead()

    def run(self, ctx, r):
        pairs = ctx.records(r, self.input("examples"))
        replaced = self.guide(ctx, r, pairs) if pairs else 0
        ctx.store.write_parquet(
            ctx.store.path(r, self.file("examples")), to_table(pairs, RECORD_TYPE[ctx.plan.loss.data_shape])
        )
        return {"examples": len(pairs), "future_chosen": replaced}

    def guide(self, ctx, r: int, pairs: list) -> int:
        """Replace chosen responses in place; returns how many it replaced."""
        needs = ctx.plan.loss.needs
        scored = reference_rows(ctx, r, pairs, needs) if needs & SCORED_NEEDS else []
        future = copy.deepcopy(ctx.policy_after(r - 1))
        fit(ctx, future, r, pairs, scored, "look-ahead")
        s, K = ctx.config.sampling, ctx.config.sampling.samples_per_prompt
        prompts = [ctx.prompt(pid) for pid in dict.fromkeys(p.prompt_id for p in pairs)]
        seeds = [[derive_seed(ctx.config.run.seed, r, "future", p.prompt_id, k) for k in range(K)] for p in prompts]

        def future_model(f: Any = future) -> Any:  # the model bound now (mypy infers no lambda with a default)
            return f

        with (
            TransformersSampler(future_model, ctx.tokenizer) as sampler,
            bar("look-ahead samples", len(prompts) * K) as advance,
        ):
            answers = draw(ctx, sampler, prompts, seeds, r, "look_ahead", advance)
        del sampler, future, future_model  # the look-ahead model is not needed any more: free it before judging
        judge, cache = ctx.plan.judge, ctx.judge_cache()
        judge.setup(ctx.judge_context(r, cache))
        of_prompt = by_prompt(answers)
        with bar("judging look-ahead", len(prompts)) as advance:
            verdicts = judge_all(
                judge, prompts, of_prompt, cache, s.shard_size, ctx.config.judge.max_failed_share, advance
            )
        best: dict[str, tuple[float, Rollout]] = {}
        for a, j in zip([a for p in prompts for a in of_prompt[p.prompt_id]], verdicts):
            if not j.failed and (a.prompt_id not in best or j.score > best[a.prompt_id][0]):
                best[a.prompt_id] = (j.score, a)
        ctx.store.write_parquet(ctx.store.path(r, self.file("look_ahead_rollouts")), to_table(answers, Rollout))
        replaced = 0
        for x in pairs:
            if x.prompt_id in best and best[x.prompt_id][0] > x.chosen_score:
                score, a = best[x.prompt_id]
                x.chosen_idx, x.chosen_source, x.chosen, x.chosen_score = a.sample_idx, a.source, a.text, score
                x.soft_label = sigmoid(score - x.rejected_score)
                replaced += 1
        return replaced
