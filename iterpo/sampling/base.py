"""The sampler contract: every generation backend implements it, and one function chooses the backend.

A sampler draws responses from one policy. ``generate`` takes prompts as
token ids and, per prompt, one seed per sample (None: one greedy response);
a sample depends on its seed alone, so a resumed run regenerates it. It
returns, per prompt, ``(token_ids, finish_reason)`` for each sample, the ids
ending with the EOS token when the response stopped ("stop") rather than
hit max_new_tokens ("length"); a response that reaches one of the ``stop``
strings ends there too ("stop", without EOS). Nothing loads until the first call, and
``close`` frees what was loaded (a GPU engine's memory); a sampler is a
context manager that closes itself.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from iterpo.models.device import model_dtype
from iterpo.sampling.invariant import GROUPED, register_grouped_attention

Samples = list[list[tuple[list[int], str]]]  # per prompt, per sample: (token ids, "stop" | "length")


class Sampler(Protocol):
    def generate(
        self,
        prompts: list[list[int]],
        seeds: list[list[int]] | None,
        temperature: float,
        top_p: float,
        max_new_tokens: int,
        batch_size: int,
        progress: Callable[[int], None] | None = None,
        stop: Sequence[str] = (),
    ) -> Samples: ...

    def close(self) -> None: ...

    def __enter__(self) -> Sampler: ...

    def __exit__(self, *exc: object) -> None: ...


class Closing:
    """close() on leaving a with-block."""

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class TransformersSampler(Closing):
    """Batched generation with a transformers model in this process (iterpo.sampling.generate); runs everywhere.

    With a dtype other than the policy's, it generates with a copy of the policy cast to it (made on first use,
    freed by close), so training's weights are never touched."""

    def __init__(self, model: Callable[[], Any], tokenizer: Any, dtype: str | None = None):
        self._model, self.tokenizer = model, tokenizer  # model: () -> the policy, called on first use
        self.dtype = dtype
        self._cast: tuple[Any, Any] | None = None  # (the policy, its copy in dtype)

    def generating_model(self) -> Any:
        """The policy, or its copy in this sampler's dtype."""
        import torch

        model = self._model()
        if self.dtype is None or model_dtype(model) == getattr(torch, self.dtype):
            return model
        if self._cast is None or self._cast[0] is not model:
            cast = copy.deepcopy(model).to(getattr(torch, self.dtype))
            # plain attention (matmul, softmax, matmul): PyTorch's fused CPU attention gives a row different
            # bfloat16 results depending on how many rows share its batch, and so different samples
            if hasattr(cast, "set_attn_implementation"):
                register_grouped_attention()
                cast.set_attn_implementation(GROUPED)
            self._cast = (model, cast)
        return self._cast[1]

    def generate(
        self, prompts, seeds, temperature, top_p, max_new_tokens, batch_size, progress=None, stop=()
    ) -> Samples:
        from iterpo.sampling.generate import generate

        model, tok = self.generating_model(), self.tokenizer
        return generate(model, tok, prompts, seeds, temperature, top_p, max_new_tokens, batch_size, progress, stop)

    def close(self) -> None:
        self._cast = None

    def enumerate(self, prompts, temperature, top_p, max_new_tokens, progress=None):
        """Every response of nonzero probability, with its probability (iterpo.sampling.enumerate)."""
        from iterpo.sampling.enumerate import enumerate_responses

        eos = self.tokenizer.eos_token_id
        return enumerate_responses(self._model(), eos, prompts, temperature, top_p, max_new_tokens, progress=progress)
