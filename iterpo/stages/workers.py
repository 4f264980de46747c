"""The sample, judge and reference stages on a Ray cluster (``run.cluster``), with the same results as one process.

Each worker is a Ray actor holding replicas: the policy of a round, loaded
from the run directory (shared storage) as training processes load it
(iterpo.models.loading.load_policy_from), the tokenizer, and the run's judge
when it judges responses one by one. The stages split their work into shards
that do not depend on the number of workers: sampling's shards of prompts
(whose batches are formed inside the shard), the reference stage's batches
(iterpo.models.logprobs.score_batches), and shards of prompts to judge. A
shard's result depends on its inputs alone, so one process and any number of
workers (with the same hardware and thread count) write byte-identical files.

Only the run's process writes to the run store, one shard at a time as it
arrives. A worker that dies in the middle of a shard loses nothing and writes
nothing: its shard goes to a fresh worker, and the stage records the retry.

Ray is imported only when a run has a cluster: ``pip install 'iterpo[ray]'``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from iterpo.errors import ConfigError, RunFailure

MAX_RETRIES = 3  # a shard that kills this many workers in a row stops the run


@dataclass
class WorkerSpec:
    """What every worker needs to rebuild the run's replicas."""

    base_path: str
    dtype: str
    sampling_dtype: str  # the weights' dtype while generating (the driver's resolved sampling.dtype)
    lora: dict | None
    lora_seed: int
    backend: str  # 'transformers' or 'vllm'
    gpu_memory_utilization: float
    seed: int
    threads: int | None
    plugins: str  # ITERPO_PLUGINS of the run, so a worker knows the same judges and stages
    judge: tuple[str, dict] | None  # (name, options) of a pointwise judge to run in the workers


class Worker:
    """One actor's replicas and the three kinds of shard it works on."""

    def __init__(self, spec: WorkerSpec):
        import torch

        from iterpo.registry import load_plugins

        if spec.threads:
            torch.set_num_threads(spec.threads)
        if spec.plugins:
            os.environ["ITERPO_PLUGINS"] = spec.plugins
            load_plugins()
        self.spec = spec
        self._policies: dict[Any, Any] = {}
        self._tokenizer: Any = None
        self._judge: Any = None

    def _policy(self, start: str | None) -> Any:
        if start not in self._policies:
            from iterpo.config import LoraSection
            from iterpo.models.device import resolve_device
            from iterpo.models.loading import load_policy_from

            s = self.spec
            lora = LoraSection(**s.lora) if s.lora else None
            # one policy at a time; a worker with a GPU (gpus_per_worker) sees it as its only CUDA device
            policy = load_policy_from(start, s.base_path, s.dtype, lora, s.lora_seed, resolve_device("auto"))
            self._policies = {start: policy}
        return self._policies[start]

    def _tokenizer_of(self) -> Any:
        if self._tokenizer is None:
            from iterpo.models.loading import load_tokenizer

            self._tokenizer = load_tokenizer(self.spec.base_path)
        return self._tokenizer

    def sample(
        self,
        start: str | None,
        model_dir: str,
        prompt_ids: list,
        seeds: list,
        temperature: float,
        top_p: float,
        max_new_tokens: int,
        batch_size: int,
    ) -> list:
        """One sampling shard (sampling.base.Sampler.generate's contract)."""
        from iterpo.io import failpoint
        from iterpo.sampling.backends import open_sampler

        s, done = self.spec, [0]

        def progress(n: int) -> None:
            done[0] += n
            failpoint(f"progress:worker sampling@{done[0]}")

        with open_sampler(
            s.backend,
            lambda: self._policy(start),
            lambda: model_dir,
            self._tokenizer_of(),
            s.sampling_dtype,
            s.gpu_memory_utilization,
            s.seed,
        ) as sampler:
            return sampler.generate(prompt_ids, seeds, temperature, top_p, max_new_tokens, batch_size, progress)

    def score(self, start: str | None, adapters_off: bool, batches: list, pad_id: int) -> list[list[float]]:
        """Log-probs of reference batches under a policy (with LoRA adapters off: the initial model)."""
        from iterpo.io import failpoint
        from iterpo.models.logprobs import score_batch
        from iterpo.training.trainer import LiveReference

        out = []
        with LiveReference(self._policy(start), adapters_off=adapters_off).active() as model:
            for n, batch in enumerate(batches, start=1):
                out.append(score_batch(model, batch, pad_id))
                failpoint(f"progress:worker scoring@{n}")
        return out

    def judge(self, items: list) -> list:
        """Verdicts of the run's pointwise judge: per (prompt, rollouts), one Judgement per rollout."""
        from iterpo.io import failpoint

        if self._judge is None:
            from iterpo.judges import JudgeCache, JudgeContext, make_judge

            assert self.spec.judge is not None  # the pool sends judging only when the spec names a judge
            self._judge = make_judge(*self.spec.judge)
            # an ensemble judges its members through a cache: one of its own here (the run caches the verdicts)
            self._judge.setup(JudgeContext(0, self.spec.seed, JudgeCache()))
        out = []
        for n, (prompt, rollouts) in enumerate(items, start=1):
            out.append(self._judge.judge(prompt, rollouts))
            failpoint(f"progress:worker judging@{n}")
        return out


class Pool:
    """Worker actors on a Ray cluster, and shards handed to them with retries."""

    def __init__(self, cluster: Any, spec: WorkerSpec):
        try:
            import ray
        except ImportError:
            raise ConfigError("run.cluster needs Ray: pip install 'iterpo[ray]' (or remove run.cluster)") from None
        self.ray, self.cluster, self.spec = ray, cluster, spec
        if not ray.is_initialized():
            address = None if cluster.address == "local" else cluster.address
            try:
                ray.init(
                    address=address,
                    include_dashboard=False,
                    log_to_driver=False,
                    configure_logging=False,
                    runtime_env={"env_vars": _forwarded_env()},
                )
            except Exception as exc:  # a cluster that cannot be reached: Ray raises several types
                raise RunFailure(f"run.cluster: cannot connect to Ray at {cluster.address!r}: {exc}") from None
        self._actor_class = ray.remote(num_cpus=cluster.cpus_per_worker, num_gpus=cluster.gpus_per_worker)(Worker)
        self.actors = [self._new() for _ in range(cluster.workers)]
        self.retries = 0  # shards given again to a fresh worker, since take_retries()

    def _new(self) -> Any:
        return self._actor_class.remote(self.spec)

    def take_retries(self) -> int:
        """How many shards went to a fresh worker after theirs died, since the last call."""
        n, self.retries = self.retries, 0
        return n

    def map(self, method: str, shards: list[tuple], done: Callable[[int, Any], None]) -> None:
        """Call method(*shard) for every shard on the workers; done(i, result) as each finishes, in the run's process.

        A shard whose worker dies goes to a fresh worker (counted in retries).
        """
        ray = self.ray
        todo = list(range(len(shards)))
        tries = [0] * len(shards)
        running: dict[Any, tuple[int, int]] = {}  # object ref -> (shard, actor slot)
        free = list(range(len(self.actors)))
        while todo or running:
            while todo and free:
                slot, i = free.pop(0), todo.pop(0)
                running[getattr(self.actors[slot], method).remote(*shards[i])] = (i, slot)
            ready, _ = ray.wait(list(running), num_returns=1)
            i, slot = running.pop(ready[0])
            try:
                result = ray.get(ready[0])
            except (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError) as exc:
                tries[i] += 1
                if tries[i] >= MAX_RETRIES:
                    raise RunFailure(
                        f"shard {i} of the {method} work killed {tries[i]} workers in a row; last: "
                        f"{' '.join(str(exc).split())[:300]}"
                    ) from None
                self.ray.kill(self.actors[slot])  # an unreachable actor may still hold its GPU
                self.actors[slot] = self._new()
                todo.insert(0, i)
                self.retries += 1
            else:
                done(i, result)
            free.append(slot)

    def close(self) -> None:
        for actor in self.actors:
            self.ray.kill(actor)
        self.actors = []
        if self.cluster.address == "local":
            self.ray.shutdown()


def _forwarded_env() -> dict[str, str]:
    """The run's own settings workers must see (plugins on the path, injected faults in tests)."""
    names = ("ITERPO_PLUGINS", "ITERPO_FAILPOINTS", "ITERPO_FAILPOINT_ONCE_DIR", "ITERPO_CACHE", "PYTHONPATH")
    return {k: os.environ[k] for k in names if k in os.environ}
