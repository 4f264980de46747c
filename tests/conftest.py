"""Shared fixtures: the real tokenizer on a tiny randomly initialised model, and the toy judges.

The tiny model has SmolLM2's architecture family (Llama) and vocabulary but
two small layers, so a whole loop runs in seconds on a CPU. Helpers the tests
share (configs, running a config, the command line) are in helpers.py.
"""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="session")
def real_model_dir() -> str:
    from iterpo.models.loading import resolve_model_path

    return resolve_model_path("smollm2-135m-instruct")


@pytest.fixture(scope="session")
def tokenizer(real_model_dir):
    from iterpo.models.loading import load_tokenizer

    return load_tokenizer(real_model_dir)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tokenizer) -> str:
    from transformers import LlamaForCausalLM

    from helpers import tiny_llama_config

    torch.manual_seed(0)
    config = tiny_llama_config(
        tokenizer,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    model = LlamaForCausalLM(config)
    path = tmp_path_factory.mktemp("tiny-model")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


import toy_judges  # noqa: F401,E402  (registers the test judge)
