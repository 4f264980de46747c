"""Sampling with vLLM on a GPU, under the same seeds-to-samples contract as the transformers backend.

Each sample is one vLLM request carrying its own seed (vLLM gives a seeded
request its own random generator), so a sample depends on its seed alone, not
on which other requests share its batch: a resumed run regenerates the same
samples. The samples are not the transformers backend's samples for the same
seeds (different kernels draw differently); a run uses one backend throughout,
and the manifest records which.

The engine loads the policy from a directory; the run hands it the starting
model or the round's saved checkpoint. It is started for one stage's sampling
and closed afterwards, so training gets the GPU memory back.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Sequence

from iterpo.sampling.base import Closing, Samples


class VLLMSampler(Closing):
    """A vLLM engine over one policy directory, started on the first generate() (the Sampler contract)."""

    def __init__(
        self,
        model_dir: str | Callable[[], str],
        eos: int,
        dtype: str = "float32",
        gpu_memory_utilization: float = 0.5,
        seed: int = 0,
    ):
        self._model_dir = model_dir if callable(model_dir) else (lambda: model_dir)
        self.eos, self.dtype, self.gpu_memory_utilization, self.seed = eos, dtype, gpu_memory_utilization, seed
        self.llm = None

    def _engine(self):
        if self.llm is None:
            from vllm import LLM

            self.llm = LLM(
                model=self._model_dir(),
                dtype=self.dtype,
                gpu_memory_utilization=self.gpu_memory_utilization,
                seed=self.seed,
                enable_prefix_caching=True,
            )  # the K samples of a prompt share its prefill
        return self.llm

    def generate(
        self,
        prompts: list[list[int]],
        seeds: list[list[int]] | None,
        temperature: float,
        top_p: float,
        max_new_tokens: int,
        batch_size: int = 0,
        progress: Callable[[int], None] | None = None,
        stop: Sequence[str] = (),
    ) -> Samples:
        """One request per sample, each with its own seed; vLLM batches them itself (batch_size is not used)."""
        from vllm import SamplingParams

        requests, params = [], []
        for i, ids in enumerate(prompts):
            for seed in seeds[i] if seeds is not None else [None]:
                requests.append({"prompt_token_ids": list(ids)})
                params.append(
                    SamplingParams(
                        n=1,
                        seed=seed,
                        temperature=temperature if seed is not None else 0.0,
                        top_p=top_p if seed is not None else 1.0,
                        max_tokens=max_new_tokens,
                        stop_token_ids=[self.eos],
                        stop=list(stop) or None,
                        include_stop_str_in_output=True,
                        skip_special_tokens=False,
                    )
                )
        outputs = self._engine().generate(requests, params, use_tqdm=False)
        per_prompt = len(seeds[0]) if seeds is not None else 1
        results: Samples = []
        for i in range(len(prompts)):
            row = []
            for out in outputs[i * per_prompt : (i + 1) * per_prompt]:
                completion = out.outputs[0]
                ids = list(completion.token_ids)
                stopped = completion.finish_reason == "stop"
                at_string = isinstance(getattr(completion, "stop_reason", None), str)  # one of the stop strings
                if stopped and not at_string and (not ids or ids[-1] != self.eos):
                    ids.append(self.eos)  # the stored response always ends with the EOS it stopped at
                row.append((ids, "stop" if stopped else "length"))
            results.append(row)
            if progress is not None:
                progress(len(row))
        return results

    def close(self) -> None:
        """Free the engine and its GPU memory before training."""
        if self.llm is None:
            return
        self.llm = None
        gc.collect()
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
