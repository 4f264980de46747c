"""judge: one verdict per response, through the run's judgement cache (see iterpo.judges.base.judge_all)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from iterpo.judges import judge_all, uncached
from iterpo.judges.base import Ask
from iterpo.progress import bar
from iterpo.records import Judgement, Rollout, by_prompt, to_table
from iterpo.stages.base import Stage, register_stage


def remote_verdicts(ctx, r: int, judge, by_prompt: dict[str, list[Rollout]], cache) -> Ask | None:
    """With a cluster, what the cache does not know, judged on the workers (shards of sampling.shard_size prompts),
    as an ``ask`` for judge_all; None to judge here (no cluster, or a judge that compares responses or is the
    policy itself, which stay in this process)."""
    pool = ctx.pool() if judge.pointwise and not (judge.uses_policy or judge.local) else None
    if pool is None:
        return None
    prompts = ctx.prompts_of_round(r)
    items = [(p, todo) for p in prompts if (todo := uncached(judge, p, by_prompt[p.prompt_id], cache))]
    size = ctx.config.sampling.shard_size
    shards = [items[i : i + size] for i in range(0, len(items), size)]
    answers: dict[str, list[Judgement]] = {}
    with bar("judging on workers", len(items)) as advance:

        def arrived(n: int, verdicts: list[list[Judgement]]) -> None:
            answers.update({p.prompt_id: v for (p, _), v in zip(shards[n], verdicts)})
            advance(len(shards[n]))

        pool.map("judge", [(shard,) for shard in shards], arrived)
    return lambda prompt, todo: answers[prompt.prompt_id]


@register_stage("judge")
@dataclass
class Judge(Stage):
    """The run's judge on every response of the round; the cache is flushed every ``sampling.shard_size`` prompts.
    A judge that stops answering, or fails on more than ``judge.max_failed_share``, stops the run here."""

    reads = ("rollouts",)
    writes = {"judgements": "judgements.parquet"}
    opponents: str | None = None
    """An earlier sample stage of the round (e.g. Nash-MD's 'sample_mix'): a pairwise judge compares each response
    with that stage's responses to the prompt instead of with its own stage's, so its win rate is against that
    stage's policy (each opponent weighted by its probability with sampling.exhaustive). The pair stage's
    option of the same name does this for pointwise judges' scores."""

    def check(self, earlier: list) -> None:
        if self.opponents is not None and not any(s.label == self.opponents and s.kind == "sample" for s in earlier):
            raise ValueError(f"opponents {self.opponents!r} names no earlier sample stage of the round")

    def run(self, ctx, r):
        of_prompt = by_prompt(ctx.read(r, self.file("rollouts"), Rollout))
        judge, cache = ctx.plan.judge, ctx.judge_cache()
        judge.setup(ctx.judge_context(r, cache))
        if self.opponents is not None:
            path = ctx.plan.stage_labelled(self.opponents).file("rollouts")
            against = by_prompt(ctx.read(r, path, Rollout))
            ask = lambda prompt, todo: judge.judge_against(prompt, todo, against.get(prompt.prompt_id, []))  # noqa: E731
        else:
            ask = remote_verdicts(ctx, r, judge, of_prompt, cache)
        prompts = ctx.prompts_of_round(r)
        with bar("judging", len(prompts)) as advance:
            judgements = judge_all(
                judge,
                prompts,
                of_prompt,
                cache,
                ctx.config.sampling.shard_size,
                ctx.config.judge.max_failed_share,
                advance,
                ask,
            )
        ctx.store.write_parquet(ctx.store.path(r, self.file("judgements")), to_table(judgements, Judgement))
        failed = Counter(j.detail for j in judgements if j.failed)
        return {
            "cache_hits": cache.hits,
            "cache_misses": cache.misses,
            "failed": sum(failed.values()),
            "failure_reasons": dict(failed.most_common(5)),
            **ctx.cluster_info(),
        }
