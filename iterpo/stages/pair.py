"""pair: judged responses -> the training examples the loss's data shape needs (iterpo.pairing)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from iterpo.config import PairingSection
from iterpo.errors import ConfigError
from iterpo.pairing import RECORD_TYPE, Strategy, build_examples, build_strategy
from iterpo.records import Judgement, Rollout, to_table
from iterpo.sampling import derive_seed
from iterpo.stages.base import ServesLoss, register_stage

AUX_SAMPLES = 2  # extra samples per prompt for losses with a term on them (XPO, VPO, HyPO)


@register_stage("pair")
@dataclass
class Pair(ServesLoss):
    """The configured pairing strategy on every prompt; prompts without an example are counted by reason."""

    reads = ("rollouts", "judgements")
    writes = {"examples": "preferences.parquet"}
    pairing: dict[str, Any] | None = None
    """This stage's pairing options over the run's pairing section ({strategy: correct, per_prompt: 4}). A stage
    with its own loss takes only the section's shared options, and the default strategy of its loss's data
    shape unless it names one."""

    opponents: str | None = None
    """An earlier judge stage of the round (e.g. 'judge_mix'): each response's win rate is estimated against
    the responses that stage judged, mean sigmoid(score difference), instead of against its own policy's
    samples (Nash-MD's win rates against the mixture)."""

    def check(self, earlier: list) -> None:
        if self.opponents is not None and not any(s.label == self.opponents and s.kind == "judge" for s in earlier):
            raise ValueError(f"opponents {self.opponents!r} names no earlier judge stage of the round")

    def strategy_of(self, plan) -> Strategy:
        """The pairing strategy this stage applies (built once; ConfigError if it does not fit the loss)."""
        if self.loss is None and self.pairing is None:
            return plan.strategy
        if getattr(self, "_strategy", None) is None:
            if self.pairing is not None and not isinstance(self.pairing, dict):
                raise ValueError(f"pairing must be a mapping of pairing options, got {self.pairing!r}")
            section = plan.config.pairing
            base = section.model_dump() if self.loss is None else section.model_dump(exclude={"strategy"})
            if self.loss is not None:
                base = {k: v for k, v in base.items() if k in type(section).model_fields}  # the shared options
            fields = {**base, **(self.pairing or {})}
            try:
                options = PairingSection(**fields)
            except ValidationError as exc:
                raise ConfigError(f"pairing options of stage {self.label!r}: {exc.errors()[0]['msg']}") from None
            self._strategy = build_strategy(options, self.loss_of(plan).data_shape)
        return self._strategy

    def opponent_scores(self, ctx, r: int) -> dict[str, list[float]] | None:
        """Per prompt, the scores the opponents' judge stage gave (failed verdicts left out)."""
        if self.opponents is None:
            return None
        path = ctx.plan.stage_labelled(self.opponents).file("judgements")
        out: dict[str, list[float]] = {}
        for j in ctx.read(r, path, Judgement):
            if not j.failed:
                out.setdefault(j.prompt_id, []).append(j.score)
        return out

    def run(self, ctx, r):
        plan = ctx.plan
        strategy = self.strategy_of(plan)
        judgements = ctx.read(r, self.file("judgements"), Judgement)
        initial = ctx.initial_responses() if strategy.uses_initial else None
        result = build_examples(
            strategy,
            ctx.prompts_of_round(r),
            ctx.read(r, self.file("rollouts"), Rollout),
            judgements,
            derive_seed(ctx.config.run.seed, r, "pair" if self.label == "pair" else self.label),
            initial,
            self.opponent_scores(ctx, r),
        )
        if "aux_samples" in self.loss_of(plan).needs:  # the first k samples of the prompt: i.i.d. draws, unselected
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
            **(
                {"pairs_without_rationale": result.without_rationale}
                if self.strategy_of(plan).shared().rationale
                else {}
            ),
        }
