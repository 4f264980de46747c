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
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    path = tmp_path_factory.mktemp("tiny-model")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


import toy_judges  # noqa: F401,E402  (registers the test judge)
