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

from collections.abc import Callable, Sequence
from typing import Any, Protocol

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
    """Batched generation with a transformers model in this process (iterpo.sampling.generate); runs everywhere."""

    def __init__(self, model: Callable[[], Any], tokenizer: Any):
        self._model, self.tokenizer = model, tokenizer  # model: () -> the policy, called on first use

    def generate(
        self, prompts, seeds, temperature, top_p, max_new_tokens, batch_size, progress=None, stop=()
    ) -> Samples:
        from iterpo.sampling.generate import generate

        model, tok = self._model(), self.tokenizer
        return generate(model, tok, prompts, seeds, temperature, top_p, max_new_tokens, batch_size, progress, stop)

    def enumerate(self, prompts, temperature, top_p, max_new_tokens, progress=None):
        """Every response of nonzero probability, with its probability (iterpo.sampling.enumerate)."""
        from iterpo.sampling.enumerate import enumerate_responses

        eos = self.tokenizer.eos_token_id
        return enumerate_responses(self._model(), eos, prompts, temperature, top_p, max_new_tokens, progress=progress)
