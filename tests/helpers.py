"""What the tests share besides fixtures: a tiny run config, running a config in-process or through the CLI."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import yaml

REPO = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent


def tiny_llama_config(tokenizer, **overrides):
    """A Llama config of the tests' tiny size over the real tokenizer's vocabulary; overrides change or add
    fields (a larger size, a classification head's num_labels)."""
    from transformers import LlamaConfig

    sizes = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
    fields = {**sizes, "num_key_value_heads": 2, **overrides}
    return LlamaConfig(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, **fields)


def tiny_config(model_dir: str, run_dir: Path, **overrides) -> dict:
    """A run config for the tiny model: small everything."""
    cfg = {
        "run": {"dir": str(run_dir), "rounds": 2, "seed": 0, "threads": 1},
        "model": {"path": model_dir},
        "task": {"name": "arithmetic", "train_size": 8, "eval_size": 4},
        "sampling": {
            "samples_per_prompt": 4,
            "max_new_tokens": 6,
            "batch_size": 16,
            "shard_size": 4,
            "temperature": 1.0,
        },
        "judge": {"name": "first_token_parity"},
        "train": {"lr": 1e-3, "epochs": 2, "batch_size": 2},
        "eval": {"max_new_tokens": 6, "analyses": False},  # on in the recipes' tests and test_analyses
    }
    for key, value in overrides.items():
        section, field = key.split(".")
        cfg.setdefault(section, {})[field] = value
    return cfg


def run_config(config, force: bool = False):
    """Run a loaded config in this process, as `iterpo run` would; returns (round rows, store), the store closed."""
    from iterpo import driver

    plan, store = driver.open_run(config, force)
    try:
        return driver.run(plan, store), store
    finally:
        store.close()


def cli_env(plugins: str = "toy_judges", **extra: str) -> dict:
    """The environment for running `python -m iterpo` in a subprocess with the tests' plugins."""
    return dict(os.environ, PYTHONPATH=str(TESTS), ITERPO_PLUGINS=plugins, **extra)


def cli(
    *args: str,
    failpoints: str = "",
    wait: bool = True,
    timeout: float = 300,
    plugins: str = "toy_judges",
    once_dir: str = "",
):
    """`python -m iterpo ARGS` from the repository root; (exit code, stdout, stderr with whitespace joined) or,
    with wait=False, the running process."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "iterpo", *args],
        cwd=REPO,
        env=cli_env(plugins, ITERPO_FAILPOINTS=failpoints, ITERPO_FAILPOINT_ONCE_DIR=once_dir),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # as from a terminal: a test suite started in the background (nohup, `cmd &`) inherits an ignored SIGINT,
        # and a run that ignores Ctrl-C cannot show that it stops on it
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    if not wait:
        return proc
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, " ".join(err.split())  # messages are wrapped at 100 columns


def recipe_config(name, tiny_model_dir, run_dir):
    """A shipped recipe (configs/NAME.yaml) for the tiny model: two rounds, small sizes, tiny models as judges."""
    cfg = yaml.safe_load((REPO / "configs" / f"{name}.yaml").read_text())
    cfg["run"] = {**cfg.get("run", {}), "dir": str(run_dir), "rounds": 2, "threads": 1}
    cfg["model"] = {"path": tiny_model_dir}
    cfg["task"] = {**cfg.get("task", {}), "train_size": 6, "eval_size": 3}
    cfg["sampling"] = {
        **cfg.get("sampling", {}),
        "samples_per_prompt": min(cfg.get("sampling", {}).get("samples_per_prompt", 8), 4),
        "max_new_tokens": 6,
        "temperature": 1.0,
        "top_p": 1.0,
    }
    cfg.setdefault("judge", {})
    if cfg["judge"].get("name") == "pairwise_lm":
        cfg["judge"]["path"] = tiny_model_dir
    if cfg["judge"].get("name") == "self_judge":
        cfg["judge"]["max_new_tokens"] = 6
    cfg["train"] = {"lr": 1e-3, "epochs": 1, "batch_size": 2}
    cfg["eval"] = {"max_new_tokens": 6}
    return cfg


def table(store, r, name):
    """A round's parquet file as a list of rows."""
    return pq.read_table(store.path(r, name)).to_pylist()


def sum_pairs(tokenizer, model_dir: str) -> list:
    """Six arithmetic preference pairs (right sum over one more), tokenized, with the model's reference
    log-probs: a small offline training set for trainer tests."""
    from iterpo.models.loading import load_model
    from iterpo.training.offline import reference_logps, tokenize_pair

    rows = [
        {"prompt": f"Q: what is {a} + {b}?\nA:", "chosen": f" {a + b}", "rejected": f" {a + b + 1}"}
        for a, b in [(12, 30), (7, 8), (41, 19), (3, 99), (50, 50), (21, 4)]
    ]
    examples = [tokenize_pair(tokenizer, r) for r in rows]
    for e, r in zip(examples, reference_logps(load_model(model_dir), examples, 4, tokenizer.pad_token_id)):
        e.ref_logps = r
    return examples
