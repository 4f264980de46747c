"""The round driver: stages in order, each persisted before the next starts.

Round r (1-based) samples from the policy left by round r-1, judges, pairs,
scores the pairs under the reference, trains, saves and evaluates. round-000
holds the evaluation of the starting model. A stage whose output file exists
is skipped, so a run killed at any moment resumes where it stopped and writes
what an uninterrupted run would have written. Before a stage is skipped its
outputs are checked against the checksums recorded when they were written; a
damaged one is set aside and the stage runs again.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import time
from collections import Counter

import torch

from iterpo.config import Config
from iterpo.errors import DamagedFile, DataError, RunFailure, UserInputError
from iterpo.judges import JudgeCache, JudgeContext, judge_all, make_judge
from iterpo.losses import get_loss
from iterpo.models.chat import encode_prompt
from iterpo.models.loading import (add_lora, check_lora_targets, is_lora, load_model, load_policy_checkpoint,
                                   load_tokenizer, resolve_model_path, save_policy)
from iterpo.models.logprobs import score_responses
from iterpo.pairing import RECORD_TYPE, build_examples, build_strategy, sigmoid
from iterpo.progress import bar, console, round_table
from iterpo.records import Judgement, RefLogp, Rollout, from_table, to_table
from iterpo.sampling import derive_seed, generate
from iterpo.sampling.vllm_backend import choose_backend
from iterpo.store import RunStore
from iterpo.tasks import build_task
from iterpo.training import LiveReference, train
from iterpo.training.assemble import responses_to_score, training_examples

AUX_SAMPLES = 2  # extra samples per prompt for losses with a term on them (XPO, VPO, HyPO)
SCORED_NEEDS = frozenset({"reference", "previous"})  # needs the reference stage computes
INITIAL_IDX = 1_000_000  # records name the initial model's (round 1's) responses as sample_idx + INITIAL_IDX
FUTURE_IDX = 2_000_000  # ... and a look-ahead model's responses (future-guided chosen) from here on
# What each stage writes in the round directory: the first marks the stage done, the others are checked with it.
STAGE_OUTPUTS = {"sample": ("rollouts.parquet",), "judge": ("judgements.parquet",),
                 "pair": ("preferences.parquet", "future_rollouts.parquet"), "reference": ("ref_logps.parquet",),
                 "train": ("train.jsonl", "checkpoint"), "eval": ("eval.json",)}


def check_prompts(judge, prompts: list, source: str) -> None:
    """DataError naming the source when the judge cannot judge some prompt (e.g. a verifier's answer is missing)."""
    for p in prompts:
        try:
            judge.check_prompt(p)
        except DataError as exc:
            raise DataError(f"{source}: {exc}") from None


class RoundDriver:
    def __init__(self, config: Config, store: RunStore | None = None):
        """Load everything the run needs (so bad input fails before the run directory is touched)."""
        self.config, self.store = config, store
        if config.run.threads:
            torch.set_num_threads(config.run.threads)
        self.task = build_task(config.task, config.run.seed)
        self.train_prompts = self.task.train_prompts()
        self.prompts_by_id = {p.prompt_id: p for p in self.train_prompts}
        self.eval_prompts = self.task.eval_prompts()
        self.judge = make_judge(config.judge_name, config.judge.options())
        # Held-out accuracy needs a verifier: the training judge if it is one, else the task's own judge.
        eval_judge = config.eval.judge or (self.judge.name if self.judge.verifier else self.task.default_judge)
        self.eval_judge = self.judge if eval_judge == self.judge.name else make_judge(eval_judge, {})
        self.judge.check()
        self.eval_judge.check()
        source = config.task.train_file if config.task.name == "file" else f"task {config.task.name}"
        check_prompts(self.judge, self.train_prompts, source)
        check_prompts(self.eval_judge, self.eval_prompts, config.task.eval_file or source)
        self.loss_fn = get_loss(config.loss.name, **config.loss.hyperparams())
        self.strategy = build_strategy(config.pairing, self.loss_fn.data_shape)
        self.base_path = resolve_model_path(config.model.path)
        if config.model.lora is not None:
            check_lora_targets(self.base_path, config.model.lora.target_modules)
        self.backend = choose_backend(config.sampling.backend)  # 'transformers' or 'vllm'
        self.tokenizer = load_tokenizer(self.base_path)
        self.pad_id = self.tokenizer.pad_token_id
        self._prompt_ids: dict[str, list[int]] = {}
        self._policy, self._policy_round = None, None  # the model in memory and the round it ended

    # ------------------------------------------------------------------ driver

    def run(self) -> list[dict]:
        cfg = self.config.run
        if self.eval_prompts:
            self._stage(0, "eval", self.evaluate)
        console.print(round_table([round_summary(self.store, 0)]))
        for r in range(1, cfg.rounds + 1):
            console.rule(f"round {r} of {cfg.rounds}")
            for stage, fn in [("sample", self.sample), ("judge", self.judge_rollouts), ("pair", self.pair),
                              ("reference", self.reference), ("train", self.train), ("eval", self.evaluate)]:
                if stage == "reference" and not self.loss_fn.needs & SCORED_NEEDS:
                    continue
                if stage == "eval" and not self.eval_prompts:
                    continue
                self._stage(r, stage, fn)
            console.print(round_table([round_summary(self.store, i) for i in range(0, r + 1)]))
        return [round_summary(self.store, i) for i in range(0, cfg.rounds + 1)]

    def _stage(self, r: int, stage: str, fn) -> None:
        """Run a stage unless its outputs are there and intact; time it and record what it reports."""
        outputs = [self.store.path(r, name) for name in STAGE_OUTPUTS[stage]]
        states = {path: self.store.check(path) for path in outputs}
        damaged = {path: (self.store.recorded_digest(path), self.store.written_after(path))
                   for path, state in states.items() if state == "damaged"}
        if states[outputs[0]] == "ok" and not damaged:
            return
        for path in damaged:
            aside = self.store.set_aside(path)
            console.print(f"[bold red]{path} is damaged[/bold red] (it does not match the checksum recorded when it "
                          f"was written); moved to {aside.name}, and round {r}'s {stage} stage runs again")
        start = time.perf_counter()
        try:
            info = fn(r) or {}
        except RunFailure as exc:
            exc.args = (f"round {r}, stage {stage}: {exc}",)
            raise
        self.store.record_stage(r, stage, time.perf_counter() - start, **info)
        for path, (before, later) in damaged.items():
            if later and self.store.recorded_digest(path) != before:
                raise DamagedFile(
                    f"{path} was damaged, and computing it again gave different contents, but {len(later)} later "
                    f"files of the run ({', '.join(later[:3])}{', ...' if len(later) > 3 else ''}) were made from "
                    "the original. Restore the file from a copy, or delete this round's later outputs and the later "
                    "rounds so that they are computed again")

    # ------------------------------------------------------------------ policy

    def policy_after(self, r: int):
        """The policy as it was at the end of round r (0 = the starting model)."""
        if self._policy_round == r:
            return self._policy
        ckpt = self.store.path(r, "checkpoint")
        lora = self.config.model.lora
        if r == 0:
            model = load_model(self.base_path, self.config.model.dtype)
            if lora:  # adapter init draws random numbers: seed it so a resumed run gets the same adapter
                torch.manual_seed(derive_seed(self.config.run.seed, "lora-init"))
                model = add_lora(model, lora)
        elif ckpt.exists():
            model = load_policy_checkpoint(ckpt, self.base_path, self.config.model.dtype, lora)
        else:  # a round whose checkpoint was not kept (save_every > 1): replay its training
            self.policy_after(r - 1)
            self.train(r)
            return self._policy
        self._policy, self._policy_round = model, r
        return model

    def prompt_ids(self, prompt) -> list[int]:
        if prompt.prompt_id not in self._prompt_ids:
            self._prompt_ids[prompt.prompt_id] = encode_prompt(self.tokenizer, prompt.messages, self.config.model.system_prompt)
        return self._prompt_ids[prompt.prompt_id]

    # ------------------------------------------------------------------ stages

    def sample(self, r: int) -> dict:
        """K samples per training prompt, written shard by shard."""
        s = self.config.sampling
        K, size = s.samples_per_prompt, s.shard_size
        shards = [self.train_prompts[i : i + size] for i in range(0, len(self.train_prompts), size)]
        rows: list[Rollout] = []
        new_tokens = 0
        start = time.perf_counter()
        generate_fn = self._generator(r - 1)
        with bar("sampling", len(self.train_prompts) * K) as advance:
            for n, shard in enumerate(shards):
                path = self.store.shard_path(r, "rollouts", n)
                state = self.store.check(path)
                if state == "ok":
                    rows += from_table(self.store.read_parquet(path), Rollout)
                    advance(len(shard) * K)
                    continue
                if state == "damaged":  # sampled again below: each sample depends on its seed alone
                    self.store.set_aside(path)
                seeds = [[derive_seed(self.config.run.seed, r, p.prompt_id, k) for k in range(K)] for p in shard]
                outs = generate_fn([self.prompt_ids(p) for p in shard], seeds, s.temperature, s.top_p,
                                   s.max_new_tokens, s.batch_size, advance)
                shard_rows = [
                    Rollout(p.prompt_id, k, r, seeds[i][k], self.tokenizer.decode(ids, skip_special_tokens=True), ids, reason)
                    for i, p in enumerate(shard) for k, (ids, reason) in enumerate(outs[i])
                ]
                new_tokens += sum(len(x.token_ids) for x in shard_rows)
                self.store.write_parquet(path, to_table(shard_rows, Rollout))
                rows += shard_rows
        self.store.write_parquet(self.store.path(r, "rollouts.parquet"), to_table(rows, Rollout))
        self.store.remove(self.store.round_dir(r) / "rollouts")
        generate_fn.close()
        seconds = time.perf_counter() - start
        return {"new_tokens": new_tokens, "tokens_per_s": round(new_tokens / seconds, 1), "backend": self.backend}

    def _generator(self, r: int) -> "_Generator":
        """generate(prompts, seeds, temperature, top_p, max_new_tokens, batch_size, progress) for the policy
        after round r, on the run's backend; nothing loads until the first call."""
        def start():
            if self.backend == "vllm":
                from iterpo.sampling.vllm_backend import VLLMSampler

                engine = VLLMSampler(self.policy_dir(r), self.config.model.dtype,
                                     self.config.sampling.gpu_memory_utilization, self.config.run.seed)
                eos = self.tokenizer.eos_token_id
                return (lambda prompts, seeds, temperature, top_p, max_new, batch_size, progress:
                        engine.generate(prompts, seeds, temperature, top_p, max_new, eos, progress)), engine.close
            model = self.policy_after(r)
            return (lambda *args: generate(model, self.tokenizer, *args)), None

        return _Generator(start)

    def policy_dir(self, r: int) -> str:
        """A directory with the full policy after round r, for an engine that loads weights from disk."""
        lora = self.config.model.lora
        if r == 0 and not lora:
            return self.base_path
        if self.store.path(r, "checkpoint").exists() and not lora:
            return str(self.store.path(r, "checkpoint"))
        target = self.store.path(r, "policy-full")
        if self.store.check(target) != "ok":
            model = self.policy_after(r)
            full = copy.deepcopy(model).merge_and_unload() if is_lora(model) else model

            def fill(tmp):
                full.save_pretrained(tmp, safe_serialization=True)
                self.tokenizer.save_pretrained(tmp)

            self.store.write_dir(target, fill)
        return str(target)

    def rollouts(self, r: int) -> list[Rollout]:
        return from_table(self.store.read_parquet(self.store.path(r, "rollouts.parquet")), Rollout)

    def judge_rollouts(self, r: int) -> dict:
        """One verdict per rollout; verdicts go through the run's cache, flushed every shard of prompts."""
        by_prompt: dict[str, list[Rollout]] = {}
        for x in self.rollouts(r):
            by_prompt.setdefault(x.prompt_id, []).append(x)
        cache = self._judge_cache()
        self.judge.setup(self._judge_context(r, cache))
        with bar("judging", len(self.train_prompts)) as advance:
            judgements = judge_all(self.judge, self.train_prompts, by_prompt, cache, self.config.sampling.shard_size,
                                   self.config.judge.max_failed_share, advance)
        self.store.write_parquet(self.store.path(r, "judgements.parquet"), to_table(judgements, Judgement))
        failed = Counter(j.detail for j in judgements if j.failed)
        return {"cache_hits": cache.hits, "cache_misses": cache.misses, "failed": sum(failed.values()),
                "failure_reasons": dict(failed.most_common(5))}

    def pair(self, r: int) -> dict:
        """Judged rollouts -> the training records the loss's data shape needs."""
        judgements = from_table(self.store.read_parquet(self.store.path(r, "judgements.parquet")), Judgement)
        initial = self.initial_responses() if self.strategy.uses_initial else None
        result = build_examples(self.strategy, self.train_prompts, self.rollouts(r), judgements,
                                derive_seed(self.config.run.seed, r, "pair"), initial)
        replaced = self.future_guided(r, result.examples) if self.strategy.look_ahead() and result.examples else None
        if "aux_samples" in self.loss_fn.needs:  # the first k samples of the prompt: i.i.d. draws, unselected
            k = min(AUX_SAMPLES, self.config.sampling.samples_per_prompt)
            for x in result.examples:
                x.aux_idxs = list(range(k))
        self.store.write_parquet(self.store.path(r, "preferences.parquet"),
                                 to_table(result.examples, RECORD_TYPE[result.data_shape]))
        info = {"examples": len(result.examples), "skipped": dict(result.skipped),
                "failed_judgements": result.failed_judgements}
        return info if replaced is None else {**info, "future_chosen": replaced}

    def future_guided(self, r: int, pairs: list) -> int:
        """Temporal Self-Rewarding's future-guided chosen; returns how many chosen responses it replaced.

        A look-ahead copy of the policy trains on this round's pairs, answers
        each paired prompt K times, and the round's judge scores its answers;
        where the best of them beats a pair's chosen, it becomes the chosen.
        Its answers are kept as ``future_rollouts.parquet`` (sample_idx from
        FUTURE_IDX on), so later stages find them.
        """
        scored = self._ref_rows(r, pairs) if self.loss_fn.needs & SCORED_NEEDS else []
        future = copy.deepcopy(self.policy_after(r - 1))
        self._fit(future, r, pairs, scored, "look-ahead")
        s, K = self.config.sampling, self.config.sampling.samples_per_prompt
        prompts = [self.prompts_by_id[pid] for pid in dict.fromkeys(p.prompt_id for p in pairs)]
        seeds = [[derive_seed(self.config.run.seed, r, "future", p.prompt_id, k) for k in range(K)] for p in prompts]
        with bar("look-ahead samples", len(prompts) * K) as advance:
            outs = generate(future, self.tokenizer, [self.prompt_ids(p) for p in prompts], seeds, s.temperature, s.top_p,
                            s.max_new_tokens, s.batch_size, advance)
        del future
        answers = [Rollout(p.prompt_id, FUTURE_IDX + k, r, seeds[i][k], self.tokenizer.decode(ids, skip_special_tokens=True),
                           ids, reason) for i, p in enumerate(prompts) for k, (ids, reason) in enumerate(outs[i])]
        cache = self._judge_cache()
        self.judge.setup(self._judge_context(r, cache))
        by_prompt: dict[str, list[Rollout]] = {}
        for a in answers:
            by_prompt.setdefault(a.prompt_id, []).append(a)
        with bar("judging look-ahead", len(prompts)) as advance:
            verdicts = judge_all(self.judge, prompts, by_prompt, cache, self.config.sampling.shard_size,
                                 self.config.judge.max_failed_share, advance)
        best: dict[str, tuple[float, Rollout]] = {}
        for a, j in zip([a for p in prompts for a in by_prompt[p.prompt_id]], verdicts):
            if not j.failed and (a.prompt_id not in best or j.score > best[a.prompt_id][0]):
                best[a.prompt_id] = (j.score, a)
        self.store.write_parquet(self.store.path(r, "future_rollouts.parquet"), to_table(answers, Rollout))
        replaced = 0
        for x in pairs:
            if x.prompt_id in best and best[x.prompt_id][0] > x.chosen_score:
                score, a = best[x.prompt_id]
                x.chosen_idx, x.chosen, x.chosen_score = a.sample_idx, a.text, score
                x.soft_label = sigmoid(score - x.rejected_score)
                replaced += 1
        return replaced

    def _judge_cache(self) -> JudgeCache:
        return JudgeCache(self.store.root / "judge-cache", self.store)

    def _judge_context(self, r: int, cache: JudgeCache) -> JudgeContext:
        return JudgeContext(r, self.config.run.seed, cache, lambda: self.policy_after(r - 1), self.tokenizer,
                            self.config.model.system_prompt)

    def initial_rollouts(self) -> list[Rollout]:
        """The initial model's responses (round 1's samples), renumbered from INITIAL_IDX on."""
        return [dataclasses.replace(x, sample_idx=x.sample_idx + INITIAL_IDX) for x in self.rollouts(1)]

    def initial_responses(self) -> tuple[list[Rollout], list[Judgement]]:
        """initial_rollouts with their judgements, numbered the same way."""
        judgements = [dataclasses.replace(j, sample_idx=j.sample_idx + INITIAL_IDX)
                      for j in from_table(self.store.read_parquet(self.store.path(1, "judgements.parquet")), Judgement)]
        return self.initial_rollouts(), judgements

    def responses(self, r: int) -> dict[tuple[str, int], Rollout]:
        """Every response round r's records may name, by (prompt_id, sample_idx)."""
        out = {(x.prompt_id, x.sample_idx): x for x in self.rollouts(r)}
        if self.strategy.uses_initial:
            out.update({(x.prompt_id, x.sample_idx): x for x in self.initial_rollouts()})
        if self.store.path(r, "future_rollouts.parquet").exists():
            out.update({(x.prompt_id, x.sample_idx): x
                        for x in from_table(self.store.read_parquet(self.store.path(r, "future_rollouts.parquet")),
                                            Rollout)})
        return out

    def records(self, r: int) -> list:
        return from_table(self.store.read_parquet(self.store.path(r, "preferences.parquet")),
                          RECORD_TYPE[self.loss_fn.data_shape])

    def reference(self, r: int) -> dict:
        """Reference (and previous-policy) log-probs of every response the loss will use, once per round."""
        self.store.write_parquet(self.store.path(r, "ref_logps.parquet"), to_table(self._ref_rows(r, self.records(r)), RefLogp))
        return {}

    def _ref_rows(self, r: int, records: list) -> list[RefLogp]:
        rollouts = self.responses(r)
        keys = responses_to_score(records)
        prompt_ids = [self.prompt_ids(self.prompts_by_id[pid]) for pid, _, _ in keys]
        responses = [rollouts[(rpid, idx)].token_ids for _, rpid, idx in keys]
        needs = self.loss_fn.needs
        ref = prev = [None] * len(keys)
        if "reference" in needs:
            with bar("reference", len(keys)) as advance:
                ref = self._score(self._reference(r), prompt_ids, responses, advance)
        if "previous" in needs:
            if "reference" in needs and self.config.reference.policy == "previous":
                prev = ref  # the same model: score once
            else:
                with bar("previous policy", len(keys)) as advance:
                    prev = self._score(LiveReference(self.policy_after(r - 1)), prompt_ids, responses, advance)
        return [RefLogp(pid, rpid, idx, a, b) for (pid, rpid, idx), a, b in zip(keys, ref, prev)]

    def _reference(self, r: int, frozen_copy: bool = False) -> LiveReference:
        """The reference policy of round r as a model run without gradients.

        'previous' is the policy the round starts from (a frozen copy when it must
        outlive training's updates); 'initial' is the same weights with LoRA
        adapters off, or the base model loaded again.
        """
        policy = self.policy_after(r - 1)
        if self.config.reference.policy == "previous":
            return LiveReference(copy.deepcopy(policy) if frozen_copy else policy)
        if is_lora(policy):
            return LiveReference(policy, adapters_off=True)
        return LiveReference(load_model(self.base_path, self.config.model.dtype))

    def _score(self, reference: LiveReference, prompt_ids, responses, advance) -> list[float]:
        with reference.active() as model:
            return score_responses(model, prompt_ids, responses, self.config.eval.batch_size, self.pad_id, advance)

    def train(self, r: int) -> dict:
        model = self.policy_after(r - 1)
        scored = []
        if self.loss_fn.needs & SCORED_NEEDS:
            scored = from_table(self.store.read_parquet(self.store.path(r, "ref_logps.parquet")), RefLogp)
        log = self._fit(model, r, self.records(r), scored, "train")
        self._policy_round = r
        cfg = self.config.run
        if r % cfg.save_every == 0 or r == cfg.rounds:
            lora = self.config.model.lora
            save_policy(model, self.tokenizer, self.store.path(r, "checkpoint"), bool(lora and lora.save_merged),
                        self.store.write_dir)
        self.store.write_text(self.store.path(r, "train.jsonl"), "".join(json.dumps(x) + "\n" for x in log))
        return {"steps": len(log)}

    def _fit(self, model, r: int, records: list, scored: list[RefLogp], purpose: str) -> list[dict]:
        """Train model in place on round r's records with the configured loss; the log, one row per step."""
        needs = self.loss_fn.needs
        examples = training_examples(records, self.responses(r), lambda pid: self.prompt_ids(self.prompts_by_id[pid]),
                                     scored, needs)
        reference = self._reference(r, frozen_copy=True) if "token_stats" in needs else None
        seed = derive_seed(self.config.run.seed, r, purpose)
        torch.manual_seed(seed)
        with bar("training" if purpose == "train" else purpose, len(examples) * self.config.train.epochs) as advance:
            return train(model, examples, self.loss_fn, self.config.train, seed, self.pad_id, advance, reference)

    def evaluate(self, r: int) -> dict:
        """Greedy accuracy of the policy after round r on the held-out prompts."""
        e = self.config.eval
        generate_fn = self._generator(r)
        with bar("evaluation", len(self.eval_prompts)) as advance:
            outs = generate_fn([self.prompt_ids(p) for p in self.eval_prompts], None, 1.0, 1.0, e.max_new_tokens,
                               e.batch_size, advance)
        generate_fn.close()
        items = []
        for p, [(ids, reason)] in zip(self.eval_prompts, outs):
            text = self.tokenizer.decode(ids, skip_special_tokens=True)
            j = self.eval_judge.judge(p, [Rollout(p.prompt_id, 0, r, 0, text, ids, reason)])[0]
            items.append({"prompt_id": p.prompt_id, "response": text, "score": j.score, "detail": j.detail})
        accuracy = sum(x["score"] for x in items) / len(items)
        self.store.write_json(self.store.path(r, "eval.json"), {"round": r, "accuracy": accuracy, "n": len(items),
                                                                 "items": items})
        return {"accuracy": accuracy}


class _Generator:
    """generate() bound to one policy on one backend, started on first use; close() frees an engine."""

    def __init__(self, start):
        self._start, self._fn, self._close = start, None, None

    def __call__(self, *args):
        if self._fn is None:
            self._fn, self._close = self._start()
        return self._fn(*args)

    def close(self) -> None:
        if self._close is not None:
            self._close()


def round_summary(store: RunStore, r: int) -> dict:
    """One row of the round table, read from the run directory (missing or unreadable parts are None)."""
    row = {"round": r, "accuracy": None, "mean_reward": None, "pairs": None, "skipped": None,
           "mean_loss": None, "reward_margin": None, "times": store.stage_seconds(r),
           "sample_tokens_per_s": (store.stage_info(r, "sample") or {}).get("tokens_per_s")}

    def read(name: str):
        path = store.path(r, name)
        if not path.exists():
            return None
        try:
            if name.endswith(".parquet"):
                return store.read_parquet(path)
            if name.endswith(".jsonl"):
                return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
            return store.read_json(path)
        except (UserInputError, ValueError, OSError):  # a damaged file: shown as missing; a resume recomputes it
            return None

    evaluation, judgements, prefs, log = read("eval.json"), read("judgements.parquet"), \
        read("preferences.parquet"), read("train.jsonl")
    if isinstance(evaluation, dict):
        row["accuracy"] = evaluation.get("accuracy")
    if judgements is not None:
        scores = judgements.column("score").to_pylist()
        row["mean_reward"] = sum(scores) / max(1, len(scores))
    if prefs is not None:
        row["pairs"] = prefs.num_rows
        if judgements is not None:
            prompts = set(judgements.column("prompt_id").to_pylist())
            row["skipped"] = len(prompts - set(prefs.column("prompt_id").to_pylist()))
    if log:
        row["mean_loss"] = sum(x["loss"] for x in log) / len(log)
        margins = [x["reward_margin"] for x in log if "reward_margin" in x]
        row["reward_margin"] = sum(margins) / len(margins) if margins else None
    return row
