"""sample: K responses per training prompt from the policy the round starts from, written shard by shard."""

from __future__ import annotations

import time
from dataclasses import dataclass

from iterpo.progress import bar
from iterpo.records import Rollout, from_table, to_table
from iterpo.sampling import derive_seed
from iterpo.stages.base import Stage, register_stage


def draw(ctx, sampler, prompts: list, seeds: list[list[int]], r: int, source: str, advance) -> list[Rollout]:
    """The samples of prompts from sampler, one per seed (per prompt: K seeds), as round r's Rollouts from source."""
    s = ctx.config.sampling
    outs = sampler.generate(
        [ctx.prompt_ids(p) for p in prompts], seeds, s.temperature, s.top_p, s.max_new_tokens, s.batch_size, advance
    )
    return [
        Rollout(
            p.prompt_id, k, r, seeds[i][k], ctx.tokenizer.decode(ids, skip_special_tokens=True), ids, reason, source
        )
        for i, p in enumerate(prompts)
        for k, (ids, reason) in enumerate(outs[i])
    ]


@register_stage("sample")
@dataclass
class Sample(Stage):
    """Each sample's seed derives from (run seed, round, prompt id, sample index), so a resumed run redraws it;
    a finished shard of ``sampling.shard_size`` prompts survives a crash."""

    writes = {"rollouts": "rollouts.parquet"}
    source: str | None = None
    """What the responses are recorded as coming from (default: 'policy', or the stage's name when it is not
    'sample', so a second sampling stage's responses stay apart)."""

    def run(self, ctx, r):
        s, store = ctx.config.sampling, ctx.store
        K, size = s.samples_per_prompt, s.shard_size
        source = self.source or ("policy" if self.label == "sample" else self.label)
        out = store.path(r, self.file("rollouts"))
        shard_dir = out.with_suffix("")  # rollouts.parquet -> rollouts/shard-00000.parquet ...
        prompts = ctx.train_prompts
        shards = [prompts[i : i + size] for i in range(0, len(prompts), size)]
        rows: list[Rollout] = []
        new_tokens = 0
        start = time.perf_counter()
        with ctx.sampler(r - 1) as sampler, bar("sampling", len(prompts) * K) as advance:
            for n, shard in enumerate(shards):
                path = shard_dir / f"shard-{n:05d}.parquet"
                state = store.check(path)
                if state == "ok":
                    rows += from_table(store.read_parquet(path), Rollout)
                    advance(len(shard) * K)
                    continue
                if state == "damaged":  # sampled again below: each sample depends on its seed alone
                    store.set_aside(path)
                seeds = [[derive_seed(ctx.config.run.seed, r, p.prompt_id, k) for k in range(K)] for p in shard]
                shard_rows = draw(ctx, sampler, shard, seeds, r, source, advance)
                new_tokens += sum(len(x.token_ids) for x in shard_rows)
                store.write_parquet(path, to_table(shard_rows, Rollout))
                rows += shard_rows
        store.write_parquet(out, to_table(rows, Rollout))
        store.remove(shard_dir)
        seconds = time.perf_counter() - start
        return {"new_tokens": new_tokens, "tokens_per_s": round(new_tokens / seconds, 1), "backend": ctx.plan.backend}
