"""What the stages of a run share: the plan's components, the run store, the tokenizer, and the policies.

Stages exchange data through the store only; the context keeps what is
expensive to rebuild: the policy in memory (the one the last stage loaded or
trained, with the round it ended) and the prompts' token ids.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any

from iterpo.judges import JudgeCache, JudgeContext
from iterpo.models.chat import encode_prompt
from iterpo.models.loading import is_lora, load_model, load_policy_checkpoint, load_starting_policy, save_policy
from iterpo.models.logprobs import score_responses
from iterpo.pairing import RECORD_TYPE
from iterpo.records import Judgement, Prompt, Rollout, from_table
from iterpo.sampling import derive_seed
from iterpo.sampling.backends import open_sampler
from iterpo.sampling.base import Sampler
from iterpo.sampling.reasoning import split_reasoning
from iterpo.store import RunStore
from iterpo.training import LiveReference
from iterpo.training.assemble import context_messages
from iterpo.training.trainer import reference_model

# roles whose files hold responses that examples may name
ROLLOUT_ROLES = ("rollouts", "look_ahead_rollouts", "replay_rollouts")
ResponseKey = tuple[str, str, int]  # (prompt_id, source, sample_idx)


class RunContext:
    def __init__(self, plan: Any, store: RunStore):
        self.plan, self.config, self.store = plan, plan.config, store
        self.tokenizer = plan.tokenizer
        self.pad_id = self.tokenizer.pad_token_id
        self.train_prompts: list[Prompt] = plan.train_prompts
        self.eval_prompts: list[Prompt] = plan.eval_prompts
        self.prompts_by_id = {p.prompt_id: p for p in self.train_prompts}
        self._prompt_ids: dict[str, list[int]] = {}
        self._proposed: dict[int, list[Prompt]] = {}  # round -> the prompts its propose stages wrote
        self._policy: Any = None
        # which policy is in memory: (r, None) the one after round r; (r, NAME) the one train stage NAME made in
        # round r before the round's last (e.g. SFT before DPO)
        self._policy_tag: tuple[int, str | None] | None = None
        self._pool: Any = None  # the cluster's workers (iterpo.stages.workers.Pool), started when first needed
        for stage in plan.initial_stages:  # a warm-up already made (a resumed run): it is the starting model
            if stage.kind == "warmup" and store.check(warm := store.path(0, stage.file("policy"))) == "ok":
                self.start_from(warm)

    # ------------------------------------------------------------------ prompts

    def prompts_of_round(self, r: int) -> list[Prompt]:
        """The training prompts round r samples: all of them, or sampling.prompts_per_round of them, the next in
        the fixed order each round (cycling); then the problems the policy proposed in round r - 1, if any."""
        n, prompts = self.config.sampling.prompts_per_round, self.train_prompts
        if n is not None and n < len(prompts):
            start = (r - 1) * n % len(prompts)
            prompts = [prompts[(start + i) % len(prompts)] for i in range(n)]
        return prompts + self.proposed(r - 1)

    def proposed(self, r: int) -> list[Prompt]:
        """The prompts the propose stages of round r wrote (none in round 0, or before they ran)."""
        if r not in self._proposed:
            found: list[Prompt] = []
            for stage in self.plan.stages if r >= 1 else []:
                if stage.kind == "propose" and self.store.check(self.store.path(r, stage.file("proposed"))) == "ok":
                    found += self.read(r, stage.file("proposed"), Prompt)
            if not found:
                return []  # not cached: the stage may run later in this process
            self._proposed[r] = found
            for p in found:
                self.prompts_by_id.setdefault(p.prompt_id, p)
        return self._proposed[r]

    def prompt(self, prompt_id: str) -> Prompt:
        """A training prompt by id, a proposed one included (read from its round's file when first asked)."""
        if prompt_id not in self.prompts_by_id:
            for r in range(1, self.config.run.rounds + 1):
                self.proposed(r)
        return self.prompts_by_id[prompt_id]

    def prompt_ids(self, prompt: Prompt) -> list[int]:
        if prompt.prompt_id not in self._prompt_ids:
            self._prompt_ids[prompt.prompt_id] = self.encode(prompt.messages)
        return self._prompt_ids[prompt.prompt_id]

    def encode(self, messages: list[dict[str, str]]) -> list[int]:
        """Chat messages as prompt tokens, with the run's system prompt (a request a stage makes of the policy)."""
        return encode_prompt(self.tokenizer, messages, self.plan.system_prompt)

    def side_tokens(self, request: str, target: str) -> tuple[list[int], list[int]]:
        """A pair's side target as tokens: its request as a user message, then the target, ended as a reply."""
        target_ids = self.tokenizer.encode(target, add_special_tokens=False) + [self.tokenizer.eos_token_id]
        return self.encode([{"role": "user", "content": request}]), target_ids

    def prompt_ids_of(self, prompt_id: str, context: str = "") -> list[int]:
        """A training prompt's tokens, followed by the chat messages of a context_key (a refinement's request)."""
        prompt = self.prompt(prompt_id)
        if not context:
            return self.prompt_ids(prompt)
        key = f"{prompt_id}\n{context}"
        if key not in self._prompt_ids:
            self._prompt_ids[key] = self.encode(prompt.messages + context_messages(context))
        return self._prompt_ids[key]

    # ------------------------------------------------------------------ responses

    def response(self, prompt_id: str, idx: int, r: int, seed: int, ids: list[int], reason: str, source: str, **more):
        """Generated tokens as a Rollout: the text judges read is the decoded response, or with a reasoning section
        the answer after its end marker (the reasoning kept beside it)."""
        decode = lambda x: self.tokenizer.decode(x, skip_special_tokens=True)  # noqa: E731
        thinking = self.config.reasoning
        if thinking is None:
            return Rollout(prompt_id, idx, r, seed, decode(ids), ids, reason, source, **more)
        part = split_reasoning(decode, ids, thinking.end, thinking.start)
        more.update(reasoning=part.reasoning, reasoning_tokens=part.reasoning_tokens)
        return Rollout(prompt_id, idx, r, seed, part.answer, ids, reason, source, **more)

    @property
    def mask_reasoning(self) -> bool:
        """Whether reasoning tokens are context in training (reasoning.train false)."""
        return self.config.reasoning is not None and not self.config.reasoning.train

    # ------------------------------------------------------------------ policies

    def checkpoint(self, r: int):
        """Where the policy after round r is saved (when it is): its last policy-updating train stage's output."""
        return self.store.path(r, self.plan.policy_stage().file("policy"))

    def load_saved(self, path, device: str | None = None):
        """A policy saved in the run (a checkpoint directory), on the run's device unless told another."""
        lora, dtype = self.config.model.lora, self.config.model.dtype
        return load_policy_checkpoint(path, self.plan.base_path, dtype, lora, device or self.plan.device)

    def start_from(self, path) -> None:
        """The run's starting model is now the whole model saved at path (the warm-up's): everything that loads
        the starting model (round 0's policy, reference.policy initial, the workers) loads it from there."""
        self.plan.base_path = str(path)
        self.release_policy()

    def policy_after(self, r: int):
        """The policy as it was at the end of round r (0 = the starting model)."""
        if self._policy_tag == (r, None):
            return self._policy
        ckpt = self.checkpoint(r)
        lora = self.config.model.lora
        if r == 0:
            model = load_starting_policy(
                self.plan.base_path,
                self.config.model.dtype,
                lora,
                derive_seed(self.config.run.seed, "lora-init"),
                self.plan.device,
            )
        elif ckpt.exists() or (ckpt := self.store.round_dir(r) / ".policy-handoff").exists():
            # the checkpoint, or the copy saved for other processes when it was not kept (save_every > 1)
            model = self.load_saved(ckpt)
        else:  # a round whose checkpoint was not kept (save_every > 1): replay its (last) training
            self.plan.policy_stage().run(self, r)
            return self._policy
        self._policy, self._policy_tag = model, (r, None)
        return model

    def policy_before(self, r: int, stage: Any):
        """The policy at stage's place in round r: what the last policy-updating train stage before it made, or
        the policy after round r - 1 (what a train stage starts from, and what reference.policy previous is)."""
        made_by = self.plan.updating_before(stage)
        if made_by is None:
            return self.policy_after(r - 1)
        if made_by is self.plan.policy_stage():  # after the round's last train stage: the round's policy
            return self.policy_after(r)
        if self._policy_tag != (r, made_by.label):
            self._policy = self.load_saved(self.store.path(r, made_by.file("policy")))
            self._policy_tag = (r, made_by.label)
        return self._policy

    def source_before(self, r: int, stage: Any) -> str | None:
        """Where another process loads policy_before(r, stage) (see policy_source)."""
        made_by = self.plan.updating_before(stage)
        if made_by is None:
            return self.policy_source(r - 1)
        if made_by is self.plan.policy_stage():
            return self.policy_source(r)
        return str(self.store.path(r, made_by.file("policy")))

    def trained(self, r: int, stage: Any = None) -> None:
        """The policy in memory, trained in place by stage (default: the round's last train stage), is now the
        policy after it in round r."""
        final = stage is None or stage is self.plan.policy_stage()
        self._policy_tag = (r, None if final else stage.label)

    def set_policy(self, model: Any, r: int, stage: Any = None) -> None:
        """model is the policy after stage in round r (trained elsewhere, e.g. by several processes)."""
        self._policy = model
        self.trained(r, stage)

    def release_policy(self) -> None:
        """Drop the policy in memory (it is loaded again when needed)."""
        self._policy, self._policy_tag = None, None

    def policy_dir(self, r: int) -> str:
        """A directory with the full policy after round r, for an engine that loads weights from disk."""
        lora = self.config.model.lora
        if r == 0 and not lora:
            return self.plan.base_path
        if self.checkpoint(r).exists() and not lora:
            return str(self.checkpoint(r))
        target = self.store.path(r, "policy-full")
        if self.store.check(target) != "ok":
            model = self.policy_after(r)
            full = copy.deepcopy(model).merge_and_unload() if is_lora(model) else model
            save_policy(full, self.tokenizer, target, write_dir=self.store.write_dir)
        return str(target)

    def forget_handoffs(self, r: int) -> None:
        """Drop the copies of the policy after round r made for other processes (before that round trains again)."""
        for name in (".policy-handoff", "policy-full"):
            path = self.store.round_dir(r) / name
            if path.exists():
                self.store.remove(path)

    def policy_source(self, r: int) -> str | None:
        """Where another process loads the policy after round r: its checkpoint, or None for the starting policy
        (round 0); a policy not kept (save_every > 1) is saved for the hand-over in the round's directory."""
        if r == 0:
            return None
        checkpoint = self.checkpoint(r)
        if self.store.check(checkpoint) == "ok":
            return str(checkpoint)
        handoff = self.store.round_dir(r) / ".policy-handoff"
        if not handoff.exists():
            save_policy(self.policy_after(r), self.tokenizer, handoff)
        return str(handoff)

    # ------------------------------------------------------------------ the cluster

    def pool(self) -> Any:
        """The cluster's workers (run.cluster), or None when everything runs in this process."""
        cluster = self.config.run.cluster
        if cluster is None:
            return None
        if self._pool is None:
            from iterpo.registry import plugin_names
            from iterpo.stages.workers import Pool, WorkerSpec

            cfg, judge = self.config, self.plan.judge
            pointwise = judge.pointwise and not (judge.uses_policy or judge.local)
            self._pool = Pool(
                cluster,
                WorkerSpec(
                    base_path=self.plan.base_path,
                    dtype=cfg.model.dtype,
                    sampling_dtype=self.plan.sampling_dtype,
                    lora=cfg.model.lora.model_dump() if cfg.model.lora else None,
                    lora_seed=derive_seed(cfg.run.seed, "lora-init"),
                    backend=self.plan.backend,
                    gpu_memory_utilization=cfg.sampling.gpu_memory_utilization,
                    seed=cfg.run.seed,
                    threads=cluster.threads or cfg.run.threads,
                    plugins=plugin_names(),
                    judge=(judge.name, cfg.judge.options()) if pointwise else None,
                ),
            )
        return self._pool

    def cluster_info(self) -> dict:
        """For a stage's manifest entry: the workers, and the shards retried since the last call (nothing without a
        cluster)."""
        if self._pool is None:
            return {}
        return {"workers": len(self._pool.actors), "retries": self._pool.take_retries()}

    def reference_source(self, r: int, stage: Any = None) -> tuple[str | None, bool]:
        """Where workers load round r's reference policy for stage, and whether with LoRA adapters off (see
        reference())."""
        if self.config.reference.policy == "previous":
            return (self.policy_source(r - 1) if stage is None else self.source_before(r, stage)), False
        if self.config.reference.policy == "ema":
            return self.ema_source(r - 1), False
        if self.config.model.lora is not None:
            return self.policy_source(r - 1), True
        return None, False  # the starting model

    def close(self) -> None:
        """Stop the cluster's workers, if any were started."""
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    def sampler(self, r: int) -> Sampler:
        """A sampler for the policy after round r, on the run's backend; nothing loads until it generates."""
        return open_sampler(
            self.plan.backend,
            lambda: self.policy_after(r),
            lambda: self.policy_dir(r),
            self.tokenizer,
            self.plan.sampling_dtype,
            self.config.sampling.gpu_memory_utilization,
            self.config.run.seed,
        )

    def sampler_at(self, r: int, stage: Any) -> Sampler:
        """A sampler for the policy at stage's place in round r (see policy_before): the one the round starts
        from, or what a train stage before it made."""
        made_by = self.plan.updating_before(stage)
        if made_by is None:
            return self.sampler(r - 1)
        if made_by is self.plan.policy_stage():
            return self.sampler(r)
        return self.sampler_from(self.store.path(r, made_by.file("policy")))

    def sampler_from(self, checkpoint: Path) -> Sampler:
        """A sampler for a policy saved in the run (e.g. a side training's), loaded when it first generates."""
        return open_sampler(
            self.plan.backend,
            lambda: self.load_saved(checkpoint),
            lambda: self.full_policy_dir(checkpoint),
            self.tokenizer,
            self.plan.sampling_dtype,
            self.config.sampling.gpu_memory_utilization,
            self.config.run.seed,
        )

    def mixture_sampler(self, r: int, stage: Any, after: int, checkpoint: Path | None, weight: float) -> Sampler:
        """A sampler for the geometric mixture of a policy (the one after round ``after``, or saved at checkpoint)
        and round r's reference at stage's place (iterpo.sampling.mixture); transformers, in this process."""
        from iterpo.sampling.base import TransformersSampler
        from iterpo.sampling.mixture import GeometricMixture

        def model():
            policy = self.policy_after(after) if checkpoint is None else self.load_saved(checkpoint)
            reference = self.reference(r, frozen_copy=True, stage=stage)  # its own copy where it is the policy
            return GeometricMixture(policy, reference, weight)

        return TransformersSampler(model, self.tokenizer)

    def full_policy_dir(self, checkpoint: Path) -> str:
        """A directory with the whole policy saved at checkpoint (with LoRA: merged into a copy beside it)."""
        if self.config.model.lora is None:
            return str(checkpoint)
        target = checkpoint.with_name(checkpoint.name + "-full")
        if self.store.check(target) != "ok":
            model = self.load_saved(checkpoint, "cpu").merge_and_unload()
            save_policy(model, self.tokenizer, target, write_dir=self.store.write_dir)
        return str(target)

    def reference(self, r: int, frozen_copy: bool = False, stage: Any = None) -> LiveReference:
        """The reference policy of round r as a model run without gradients.

        'previous' is the policy the round starts from (a frozen copy when it must
        outlive training's updates); 'initial' is the same weights with LoRA
        adapters off, or the base model loaded again.
        """
        return reference_model(
            self.config.reference.policy,
            self.policy_after(r - 1) if stage is None else self.policy_before(r, stage),
            self.plan.base_path,
            self.config.model.dtype,
            self.plan.device,
            frozen_copy,
            self.ema_source(r - 1) if self.config.reference.policy == "ema" else None,
        )

    def ema_source(self, r: int) -> str | None:
        """The directory of the weight average after round r (reference.policy ema), or None for round 0's, the
        starting model."""
        if r == 0:
            return None
        return str(self.store.path(r, self.plan.stage_of_kind("ema").file("reference_ema")))

    def ema_after(self, r: int):
        """The weight average after round r, loaded as a model of its own."""
        path = self.ema_source(r)
        return load_model(path or self.plan.base_path, self.config.model.dtype, device=self.plan.device)

    def score(self, reference: LiveReference, prompt_ids: list, responses: list, advance, masks=None) -> list[float]:
        with reference.active() as model:
            return score_responses(
                model, prompt_ids, responses, self.config.eval.batch_size, self.pad_id, advance, masks
            )

    # ------------------------------------------------------------------ judging

    def judge_cache(self) -> JudgeCache:
        return JudgeCache(self.store.root / "judge-cache", self.store)

    def judge_context(self, r: int, cache: JudgeCache) -> JudgeContext:
        return JudgeContext(
            r,
            self.config.run.seed,
            cache,
            lambda: self.policy_after(r - 1),
            self.tokenizer,
            self.config.model.system_prompt,
            self.trained_model,
        )

    def trained_model(self, k: int, kind: str = "reward_model") -> str | None:
        """The directory of the model a stage of that kind (reward_model, adversary) trained in round k, or None
        (none trained, or not intact)."""
        for stage in self.plan.stages:
            if stage.kind == kind:
                path = self.store.path(k, stage.file(stage.model_role))
                made = (path / "config.json").exists() or (path / "member-0" / "config.json").exists()
                if made and self.store.check(path) == "ok":
                    return str(path)
        return None

    # ------------------------------------------------------------------ records in the store

    def read(self, r: int, name: str, cls: type) -> list:
        return from_table(self.store.read_parquet(self.store.path(r, name)), cls)

    def records(self, r: int, name: str, data_shape: str | None = None) -> list:
        """The training examples in a round's file, of that data shape (default: the run's loss's)."""
        return self.read(r, name, RECORD_TYPE[data_shape or self.plan.loss.data_shape])

    def initial_responses(self) -> tuple[list[Rollout], list[Judgement]]:
        """The initial model's judged responses (round 1's samples), as source 'initial'."""
        sample = self.plan.stage_of_kind("sample")
        judge = self.plan.stage_of_kind("judge")
        rollouts = [dataclasses.replace(x, source="initial") for x in self.read(1, sample.file("rollouts"), Rollout)]
        judgements = self.read(1, judge.file("judgements"), Judgement)
        return rollouts, judgements

    def responses(self, r: int) -> dict[ResponseKey, Rollout]:
        """Every response round r's examples may name, by (prompt_id, source, sample_idx)."""
        out: dict[ResponseKey, Rollout] = {}
        for stage in self.plan.stages:
            for role in ROLLOUT_ROLES:
                if role in stage.writes and self.store.path(r, stage.file(role)).exists():
                    out.update(
                        {(x.prompt_id, x.source, x.sample_idx): x for x in self.read(r, stage.file(role), Rollout)}
                    )
        if self.plan.uses_initial():
            out.update({(x.prompt_id, x.source, x.sample_idx): x for x in self.initial_responses()[0]})
        return out
