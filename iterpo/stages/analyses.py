"""The eval stage's per-round analyses (eval.analyses): what the round did to rankings, rewards, KL and diversity.

Held-out pairs are made once, when the starting model is evaluated (round 0): ``eval.pair_samples`` responses to
each of the first ``eval.pair_prompts`` held-out prompts, sampled from the starting model and scored by the eval
judge, each correct response paired with every incorrect one (``round-000/heldout_rollouts.parquet`` and
``heldout_judgements.parquet``; the task's shifted prompts, when it has them, get pairs the same way). Every
round then scores those responses under its policy, its reference and the starting model, and draws
``eval.kl_samples`` fresh responses per prompt from its policy at temperature 1 for the KL estimates and
diversity. The formulas are in iterpo.metrics.
"""

from __future__ import annotations

import gc
from typing import Any

from iterpo import metrics
from iterpo.errors import JudgeFailure
from iterpo.judges import judge_all
from iterpo.pairing.base import scored_apart, sigmoid
from iterpo.progress import bar
from iterpo.records import Judgement, Prompt, Rollout, by_prompt, to_table
from iterpo.sampling import derive_seed
from iterpo.stages.sample import rollouts_of
from iterpo.training import LiveReference
from iterpo.training.trainer import reference_model

SETS = {"heldout": "", "shifted": "shifted_"}  # pair set -> prefix of its figures' names


def analyse(ctx, r: int, sampler, prompts: list[Prompt], greedy: list[Rollout], scores: list[float]) -> dict:
    """Round r's analyses. sampler: the round's policy's; greedy and scores: the eval responses to prompts (the
    held-out prompts) and the eval judge's scores of them."""
    e = ctx.config.eval
    if ctx.plan.environment is not None:
        return {"skipped": "the analyses score plain responses; episodes with an environment are not analysed"}
    chosen = prompts[: e.pair_prompts]
    shifted = ctx.plan.task.shifted_prompts()[: e.pair_prompts]
    out: dict[str, Any] = {"length": _mean_len(greedy)}
    pairs = heldout_pairs(ctx, r, sampler, {"heldout": chosen, "shifted": shifted})
    samples = _policy_samples(ctx, r, sampler, chosen) if e.kl_samples else []

    # every response analysed, scored once under each policy (a response is in several pairs): its position
    unique = {_key(x): x for name in pairs for w, lo, _ in pairs[name] for x in (w, lo)}
    unique.update({_key(x): x for x in samples})
    index = {k: i for i, k in enumerate(unique)}
    by_id = {p.prompt_id: p for p in chosen + shifted}
    seqs = [(ctx.prompt_ids(by_id[x.prompt_id]), x.token_ids) for x in unique.values()]
    policy = _score(ctx, LiveReference(ctx.policy_after(r)), seqs, "analyses: policy log-probs")
    others = _score_others(ctx, r, seqs)  # role -> log-probs under the reference and the starting model
    of = lambda values, xs: [values[index[_key(x)]] for x in xs]  # noqa: E731

    beta = ctx.plan.resolved["loss"].get("beta")
    ref = others.get("reference")
    for name, prefix in SETS.items():
        if name not in pairs or (name == "shifted" and not shifted):
            continue
        rows = pairs[name]
        responses = [x for w, lo, _ in rows for x in (w, lo)]  # chosen, rejected, chosen, ...
        figures = pair_figures(rows, of(policy, responses), of(ref, responses) if ref is not None else None, beta)
        out.update({prefix + k: v for k, v in figures.items()})
    if samples:
        out["kl_samples"] = len(samples)
        out["sample_length"] = _mean_len(samples)
        out["distinct_1"] = metrics.distinct_n([x.token_ids for x in samples], 1)
        out["distinct_2"] = metrics.distinct_n([x.token_ids for x in samples], 2)
        for role, values in others.items():
            if values is not None:
                out[f"kl_{role}"] = metrics.kl_estimate(of(policy, samples), of(values, samples))
    if r >= 1:
        out.update(win_rate_vs_initial(ctx, r, prompts, greedy, scores))
    return out


def _key(x: Rollout) -> tuple:
    return (x.source, x.prompt_id, x.sample_idx)


def pair_figures(rows: list, policy: list[float], reference: list[float] | None, beta: Any) -> dict:
    """A set of pairs' figures from its responses' log-probs (chosen, rejected, chosen, ...): R(pi), and with a
    reference the implicit reward's accuracy and R* (with the loss's beta)."""
    w, lo = policy[0::2], policy[1::2]
    out: dict[str, Any] = {"pairs": len(rows), "ranking_accuracy": metrics.ranking_accuracy(w, lo)}
    if reference is not None:
        rw, rl = reference[0::2], reference[1::2]
        out["implicit_reward_accuracy"] = metrics.implicit_reward_accuracy(w, lo, rw, rl)
        if isinstance(beta, (int, float)) and beta > 0:
            p = [q for _, _, q in rows]
            out["ranking_accuracy_ideal"] = metrics.idealized_ranking_accuracy(rw, rl, p, float(beta))
    return out


def _score_others(ctx, r: int, seqs: list) -> dict[str, list[float] | None]:
    """seqs' log-probs under round r's reference and the starting model, each policy loaded and scored once;
    None for one that cannot be loaded. Nothing in round 0."""
    done: dict[tuple, list[float] | None] = {}
    out: dict[str, list[float] | None] = {}
    for role, key in _other_policies(ctx, r).items():
        if key is not None and key not in done:
            model = _load(ctx, r, key)
            done[key] = _score(ctx, model, seqs, f"analyses: {role} log-probs") if model is not None else None
            del model
            gc.collect()
        out[role] = done.get(key) if key is not None else None
    return out


def heldout_pairs(ctx, r: int, sampler, sets: dict[str, list[Prompt]]) -> dict[str, list]:
    """Per set, the held-out pairs: (preferred Rollout, other Rollout, P(preferred beats other)). Made from the
    starting model's samples in round 0 and read back in later rounds; none in a run whose round 0 made none."""
    store = ctx.store
    path, verdicts_path = store.path(0, "heldout_rollouts.parquet"), store.path(0, "heldout_judgements.parquet")
    if store.check(path) != "ok" or store.check(verdicts_path) != "ok":
        if r != 0:
            return {}
        _sample_pairs(ctx, sampler, sets, path, verdicts_path)
    rollouts, judgements = ctx.read(0, path.name, Rollout), ctx.read(0, verdicts_path.name, Judgement)
    score = {(j.prompt_id, j.sample_idx): j.score for j in judgements if not j.failed}
    out: dict[str, list] = {}
    for name in sets:
        groups = by_prompt(x for x in rollouts if x.source == name).values()
        out[name] = [pair for group in groups for pair in _pairs_of(group, score)]
    return out


def _pairs_of(group: list[Rollout], score: dict) -> list:
    """One prompt's pairs (pairing.scored_apart) with P(first beats second) = sigmoid(score difference), as the
    pairing stage's soft labels."""
    s = lambda x: score[(x.prompt_id, x.sample_idx)]  # noqa: E731
    return [(w, lo, sigmoid(s(w) - s(lo))) for w, lo in scored_apart(group, score)]


def _sample_pairs(ctx, sampler, sets: dict[str, list[Prompt]], path, verdicts_path) -> None:
    """Sample and judge the held-out pairs' responses (round 0, the starting model)."""
    e, s = ctx.config.eval, ctx.config.sampling
    rollouts: list[Rollout] = []
    for name, prompts in sets.items():
        if prompts:
            rollouts += _draw(ctx, sampler, prompts, 0, name, e.pair_samples, s.temperature, s.top_p, f"{name} pairs")
    by_id = {p.prompt_id: p for prompts in sets.values() for p in prompts}
    judgements = []
    for x in rollouts:
        judgements += ctx.plan.eval_judge.judge(by_id[x.prompt_id], [x])
    ctx.store.write_parquet(path, to_table(rollouts, Rollout))
    ctx.store.write_parquet(verdicts_path, to_table(judgements, Judgement))


def _draw(ctx, sampler, prompts, r: int, source: str, k: int, temperature: float, top_p: float, title: str):
    """k samples per prompt, seeded by (run seed, round, source, prompt id, index), as round r's Rollouts from
    source."""
    e = ctx.config.eval
    seeds = [[derive_seed(ctx.config.run.seed, r, source, p.prompt_id, i) for i in range(k)] for p in prompts]
    with bar(f"analyses: {title}", len(prompts) * k) as advance:
        outs = sampler.generate(
            [ctx.prompt_ids(p) for p in prompts],
            seeds,
            temperature,
            top_p,
            e.max_new_tokens,
            ctx.config.sampling.batch_size,
            advance,
        )
    return rollouts_of(ctx, prompts, seeds, outs, r, source)


def _policy_samples(ctx, r: int, sampler, prompts: list[Prompt]) -> list[Rollout]:
    """eval.kl_samples responses per prompt from round r's policy at temperature 1, untruncated: samples of pi
    itself, as the KL estimates need."""
    return _draw(ctx, sampler, prompts, r, "analyses", ctx.config.eval.kl_samples, 1.0, 1.0, "policy samples")


def _other_policies(ctx, r: int) -> dict[str, tuple | None]:
    """The policies round r's responses are also scored under, by role: its reference and the starting model,
    each as (kind, round); None for APO's extrapolated reference, which is no distribution. Round 0 has
    neither."""
    if r == 0:
        return {}
    kind = ctx.config.reference.policy
    initial = ("after", 0)
    reference: tuple | None
    if kind == "ema":
        reference = ("ema", r - 1) if r > 1 else initial  # round 0's average is the starting model
    else:
        reference = {"previous": ("after", r - 1), "initial": initial}.get(kind)
    return {"reference": reference, "initial": initial}


def _load(ctx, r: int, key: tuple) -> LiveReference | None:
    """A policy of key (see _other_policies), loaded without replacing round r's in memory (with LoRA, the
    starting model is round r's policy with its adapters off); None when it was not kept (save_every > 1)."""
    kind, k = key
    c = ctx.config
    if kind == "ema":
        return LiveReference(ctx.ema_after(k))
    if k == 0:
        return reference_model(
            "initial", ctx.policy_after(r), ctx.plan.base_path, c.model.dtype, ctx.plan.device, False
        )
    for path in (ctx.checkpoint(k), ctx.store.round_dir(k) / ".policy-handoff"):
        if path.exists():
            return LiveReference(ctx.load_saved(path))
    return None


def _score(ctx, model: LiveReference, seqs: list, title: str) -> list[float]:
    with bar(title, len(seqs)) as advance:
        return ctx.score(model, [p for p, _ in seqs], [y for _, y in seqs], advance)


def _mean_len(rollouts: list[Rollout]) -> float | None:
    return sum(len(x.token_ids) for x in rollouts) / len(rollouts) if rollouts else None


def win_rate_vs_initial(ctx, r: int, prompts: list[Prompt], greedy: list[Rollout], scores: list[float]) -> dict:
    """The round's greedy eval responses against the starting model's (round 0's eval.json), under the run's
    judge: a pointwise judge's scores compared per prompt (a tie is half a win), a pairwise judge's
    P(this beats that). With the eval judge as the run's judge, its scores are reused."""
    store = ctx.store
    first = store.path(0, ctx.plan.stage_of_kind("eval").file("eval"))
    if store.check(first) != "ok":
        return {}
    initial = {x["prompt_id"]: x for x in store.read_json(first).get("items", [])}
    mine = [(p, x, s) for p, x, s in zip(prompts, greedy, scores) if p.prompt_id in initial]
    judge = ctx.plan.judge
    if judge is ctx.plan.eval_judge:
        outcomes = [metrics.outcome(s, initial[p.prompt_id]["score"]) for p, _, s in mine]
        return {"win_rate_vs_initial": metrics.win_rate(outcomes), "win_rate_prompts": len(outcomes)}
    by_prompt = {}
    for p, x, _ in mine:
        text = initial[p.prompt_id]["response"]
        ids = ctx.tokenizer.encode(text, add_special_tokens=False)
        theirs = Rollout(p.prompt_id, 1, 0, 0, text, ids, "stop", "initial")
        by_prompt[p.prompt_id] = [Rollout(p.prompt_id, 0, r, 0, x.text, x.token_ids, x.finish_reason, "policy"), theirs]
    cache = ctx.judge_cache()
    judge.setup(ctx.judge_context(r + 1, cache))  # a judge that is the policy: this round's
    try:
        with bar("analyses: win rate vs the starting model", len(mine)) as advance:
            verdicts = judge_all(
                judge, [p for p, _, _ in mine], by_prompt, cache, ctx.config.sampling.shard_size, 1.0, advance
            )
    except JudgeFailure as why:
        return {"win_rate_error": str(why)}
    outcomes = []
    for mine_j, theirs_j in zip(verdicts[0::2], verdicts[1::2]):
        if mine_j.failed or theirs_j.failed:
            continue
        outcomes.append(mine_j.beats[1] if mine_j.beats else metrics.outcome(mine_j.score, theirs_j.score))
    return {"win_rate_vs_initial": metrics.win_rate(outcomes), "win_rate_prompts": len(outcomes)}
