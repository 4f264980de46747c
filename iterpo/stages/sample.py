"""sample: K responses per training prompt from the policy the round starts from, written shard by shard."""

from __future__ import annotations

import time
from dataclasses import dataclass

from iterpo.environments.episodes import Limits, run_episodes
from iterpo.progress import bar
from iterpo.records import Rollout, from_table, to_table
from iterpo.sampling import derive_seed
from iterpo.stages.base import Stage, register_stage


def rollouts_of(ctx, prompts: list, seeds: list[list[int]], outs: list, r: int, source: str) -> list[Rollout]:
    """A sampler's output for prompts (per prompt: one (ids, reason) per seed) as round r's Rollouts from source."""
    return [
        ctx.response(p.prompt_id, k, r, seeds[i][k], ids, reason, source)
        for i, p in enumerate(prompts)
        for k, (ids, reason) in enumerate(outs[i])
    ]


def greedy(ctx, sampler, prompts: list, r: int, source: str, advance) -> list[Rollout]:
    """One greedy response per prompt (eval.max_new_tokens; decode batches of sampling.batch_size) as round r's
    Rollouts from source."""
    e = ctx.config.eval
    outs = sampler.generate(
        [ctx.prompt_ids(p) for p in prompts], None, 1.0, 1.0, e.max_new_tokens, ctx.config.sampling.batch_size, advance
    )
    return [ctx.response(p.prompt_id, 0, r, 0, ids, reason, source) for p, [(ids, reason)] in zip(prompts, outs)]


def episodes_of(ctx, sampler, prompts: list, seeds, max_new_tokens: int, batch_size: int, advance) -> list[list]:
    """Per prompt, one episode with the run's environment per seed (seeds None: one greedy episode)."""
    e, s = ctx.config.environment, ctx.config.sampling
    limits = Limits(e.max_turns, e.max_tokens, max_new_tokens, e.max_observation_tokens)
    prompt_ids = [ctx.prompt_ids(p) for p in prompts]
    env = ctx.plan.environment
    return run_episodes(
        sampler, ctx.tokenizer, env, limits, prompt_ids, seeds, s.temperature, s.top_p, batch_size, advance
    )


def as_rollout(ctx, episode, prompt_id: str, k: int, r: int, seed: int, source: str) -> Rollout:
    """An episode as a Rollout: its final answer is what judges read; its tokens keep whose each one is."""
    return Rollout(
        prompt_id,
        k,
        r,
        seed,
        episode.final,
        episode.token_ids,
        episode.finish_reason,
        source,
        policy_mask=episode.policy_mask,
        step_ends=episode.step_ends,
        transcript=episode.transcript(),
        observations=episode.observations,
    )


def draw(ctx, sampler, prompts: list, seeds: list[list[int]], r: int, source: str, advance) -> list[Rollout]:
    """The samples of prompts from sampler, one per seed (per prompt: K seeds), as round r's Rollouts from source;
    with an environment, each an episode."""
    s = ctx.config.sampling
    if ctx.plan.environment is not None:
        played = episodes_of(ctx, sampler, prompts, seeds, s.max_new_tokens, s.batch_size, advance)
        return [
            as_rollout(ctx, ep, p.prompt_id, k, r, seeds[i][k], source)
            for i, p in enumerate(prompts)
            for k, ep in enumerate(played[i])
        ]
    outs = sampler.generate(
        [ctx.prompt_ids(p) for p in prompts], seeds, s.temperature, s.top_p, s.max_new_tokens, s.batch_size, advance
    )
    return rollouts_of(ctx, prompts, seeds, outs, r, source)


def listed(ctx, sampler, prompts: list, r: int, source: str, advance) -> list[Rollout]:
    """Every response of prompts with nonzero probability under sampler's policy, weighted by it
    (sampling.exhaustive), as round r's Rollouts from source."""
    s = ctx.config.sampling
    outs = sampler.enumerate([ctx.prompt_ids(p) for p in prompts], s.temperature, s.top_p, s.max_new_tokens, advance)
    return [
        ctx.response(p.prompt_id, k, r, 0, ids, reason, source, weight=prob)
        for p, out in zip(prompts, outs)
        for k, (ids, reason, prob) in enumerate(out)
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
    policy: str | None = None
    """Sample from the policy an earlier train stage of the round made (its name, e.g. EGPO's half step
    'train_half'); default: the policy the round starts from."""

    mixture: float | None = None
    """Sample from the geometric mixture pi^(1 - w) ref^w of the stage's policy and the round's reference
    (reference.policy), token by token, with w this weight: Nash-MD's opponent. With the transformers backend,
    in this process (vLLM runs one model per engine)."""

    def check(self, earlier: list[Stage]) -> None:
        if self.mixture is not None and not 0.0 <= self.mixture <= 1.0:
            raise ValueError(f"mixture must be a weight in [0, 1], got {self.mixture}")
        if self.policy is not None and not any(s.label == self.policy and s.kind == "train" for s in earlier):
            raise ValueError(f"policy {self.policy!r} names no earlier train stage of the round")

    def run(self, ctx, r):
        s, store = ctx.config.sampling, ctx.store
        K, size = s.samples_per_prompt, s.shard_size
        source = self.source or ("policy" if self.label == "sample" else self.label)
        out = store.path(r, self.file("rollouts"))
        prompts = ctx.prompts_of_round(r)
        shards = [prompts[i : i + size] for i in range(0, len(prompts), size)]
        # a second sampling stage draws its own samples: its name goes into the seeds
        tag = () if self.label == "sample" else (self.label,)
        seeds = [
            [[derive_seed(ctx.config.run.seed, r, *tag, p.prompt_id, k) for k in range(K)] for p in sh] for sh in shards
        ]
        made_by = ctx.plan.stage_labelled(self.policy) if self.policy else None
        if made_by is not None and made_by is ctx.plan.policy_stage():  # the round's policy: kept in memory
            made_by = None
            after = r
        else:
            after = r - 1  # the policy after round r - 1: the one the round starts from
        checkpoint = store.path(r, made_by.file("policy")) if made_by else None
        done: dict[int, list[Rollout]] = {}  # shard -> its rows
        new_tokens = 0
        start = time.perf_counter()

        def finish(n: int, rows: list[Rollout]) -> None:
            nonlocal new_tokens
            new_tokens += sum(len(x.token_ids) for x in rows)
            store.write_parquet(store.shard(out, n), to_table(rows, Rollout))
            done[n] = rows

        # a damaged shard is sampled again below: each sample depends on its seed alone
        done.update({n: from_table(t, Rollout) for n, t in store.intact_shards(out, len(shards)).items()})
        todo = [n for n in range(len(shards)) if n not in done]
        per_prompt = 1 if s.exhaustive else K  # progress counts responses, or prompts when listing them all
        with bar("sampling", len(prompts) * per_prompt) as advance:
            advance(sum(len(shards[n]) * per_prompt for n in done))
            local = self.mixture is not None or s.exhaustive or ctx.plan.environment is not None
            pool = ctx.pool() if todo and not local else None
            if self.mixture is not None:
                sampler = ctx.mixture_sampler(r, self, after, checkpoint, self.mixture)
            elif checkpoint is None:
                sampler = ctx.sampler(after)
            else:
                sampler = ctx.sampler_from(checkpoint)
            if pool is None:
                with sampler:
                    for n in todo:
                        if s.exhaustive:
                            finish(n, listed(ctx, sampler, shards[n], r, source, advance))
                        else:
                            finish(n, draw(ctx, sampler, shards[n], seeds[n], r, source, advance))
            else:  # each shard on a worker; written here as it arrives
                if checkpoint is None:
                    model_dir = ctx.policy_dir(after) if ctx.plan.backend == "vllm" else ""
                    policy = ctx.policy_source(after)  # where the workers load the policy
                else:
                    model_dir = ctx.full_policy_dir(checkpoint) if ctx.plan.backend == "vllm" else ""
                    policy = str(checkpoint)
                jobs = [
                    (
                        policy,
                        model_dir,
                        [ctx.prompt_ids(p) for p in shards[n]],
                        seeds[n],
                        s.temperature,
                        s.top_p,
                        s.max_new_tokens,
                        s.batch_size,
                    )
                    for n in todo
                ]

                def arrived(i: int, outs: list) -> None:
                    n = todo[i]
                    finish(n, rollouts_of(ctx, shards[n], seeds[n], outs, r, source))
                    advance(len(shards[n]) * K)

                pool.map("sample", jobs, arrived)
        rows = [x for n in range(len(shards)) for x in done[n]]
        store.write_parquet(out, to_table(rows, Rollout))
        store.remove(out.with_suffix(""))  # the shards
        seconds = time.perf_counter() - start
        backend = "transformers" if self.mixture is not None else ctx.plan.backend
        info = {"new_tokens": new_tokens, "tokens_per_s": round(new_tokens / seconds, 1), "backend": backend}
        return {**info, **ctx.cluster_info()}
