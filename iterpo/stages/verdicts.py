"""A judge asked from inside a stage that needs verdicts as it goes (a tree search's values, which answers a
refinement revises): through the run's cache, failures counted, an outage stopping the stage; and the shard loop
of the stages that add responses to the round's (refine, rationalize) while asking it."""

from __future__ import annotations

import dataclasses

from iterpo.errors import JudgeFailure
from iterpo.judges.base import judge_with_cache
from iterpo.progress import bar
from iterpo.records import Judgement, Prompt, Rollout, from_table, to_table

Items = list[tuple[Prompt, list[Rollout]]]  # prompts, each with the responses the stage read for it


class Verdicts:
    """Judges (set up for the round) asked through cache on behalf of the stage called ``what``."""

    def __init__(self, cache, what: str):
        self.cache, self.what = cache, what
        self.asked = self.failed = 0

    def __call__(self, judge, prompt: Prompt, rollouts: list[Rollout]) -> list[Judgement]:
        """judge's verdicts on rollouts of prompt, in order (rollouts need not have distinct sample indices); a
        judge that stops answering stops the stage (every verdict obtained is kept in the cache)."""
        numbered = [dataclasses.replace(ro, sample_idx=k) for k, ro in enumerate(rollouts)]  # distinct in one call
        out = judge_with_cache(judge, prompt, numbered, self.cache)
        self.asked += len(out)
        self.failed += sum(j.failed for j in out)
        if judge.outage():
            self.cache.flush()
            raise JudgeFailure(
                f"judge {judge.name} stopped answering during the {self.what}: {judge.outage()}. The "
                "finished shards and every verdict obtained are saved; a resume does the rest again"
            )
        return out

    def check_failures(self, share: float, consequence: str) -> None:
        """JudgeFailure, before a shard is written, when more than share of the verdicts so far failed."""
        if self.asked and self.failed > share * self.asked:
            self.cache.flush()
            raise JudgeFailure(
                f"{self.what}: {self.failed} of {self.asked} verdicts failed, above judge.max_failed_share "
                f"{share:g}; {consequence}. Fix the judge, or raise judge.max_failed_share to go on"
            )


def in_shards(
    ctx, r: int, out, title: str, items: Items, make, sampler, cache, asking: Verdicts | None, consequence: str
):
    """make(shard) -> its rows, for each shard of sampling.shard_size items not already written to ``out``'s shards
    by a run that crashed; each shard's verdicts cached before the shard is written, so a shard on disk has them.
    Writes ``out`` (the rows, shard after shard) and removes the shards. Returns (rows, the shards found written)."""
    store, size = ctx.store, ctx.config.sampling.shard_size
    shards = [items[i : i + size] for i in range(0, len(items), size)]
    done = {n: from_table(t, Rollout) for n, t in store.intact_shards(out, len(shards)).items()}
    resumed = [shards[n] for n in sorted(done)]
    with bar(title, len(items)) as advance:
        advance(sum(len(shard) for shard in resumed))
        with sampler:
            for n, shard in enumerate(shards):
                if n in done:
                    continue
                rows = make(shard)
                if asking is not None:
                    asking.check_failures(ctx.config.judge.max_failed_share, consequence)
                cache.flush()
                store.write_parquet(store.shard(out, n), to_table(rows, Rollout))
                done[n] = rows
                advance(len(shard))
    rows = [x for n in range(len(shards)) for x in done[n]]
    store.write_parquet(out, to_table(rows, Rollout))
    store.remove(out.with_suffix(""))  # the shards
    return rows, resumed
