"""Shared fixtures: the real tokenizer on a tiny randomly initialised model, and a toy judge.

The tiny model has SmolLM2's architecture family (Llama) and vocabulary but
two small layers, so a whole loop runs in seconds on a CPU.
"""

from __future__ import annotations

from pathlib import Path

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
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024, tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    path = tmp_path_factory.mktemp("tiny-model")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


import toy_judges  # noqa: F401,E402  (registers the test judge)


def tiny_config(model_dir: str, run_dir: Path, **overrides) -> dict:
    """A run config for the tiny model: small everything."""
    cfg = {
        "run": {"dir": str(run_dir), "rounds": 2, "seed": 0, "threads": 1},
        "model": {"path": model_dir},
        "task": {"name": "arithmetic", "train_size": 8, "eval_size": 4},
        "sampling": {"samples_per_prompt": 4, "max_new_tokens": 6, "batch_size": 16, "shard_size": 4, "temperature": 1.0},
        "judge": {"name": "first_token_parity"},
        "train": {"lr": 1e-3, "epochs": 2, "batch_size": 2},
        "eval": {"max_new_tokens": 6},
    }
    for key, value in overrides.items():
        section, field = key.split(".")
        cfg.setdefault(section, {})[field] = value
    return cfg
