"""DPO training speed: TRL's DPOTrainer and iterpo's trainer on the same model, pairs and settings, side by side.

Every configuration runs in its own fresh process (so peak memory is its own),
one after another, TRL and iterpo alternating, ``--repeats`` times; the table
gives the median of each. Both train SmolLM2-135M-Instruct in float32 on the
same 64 arithmetic preference pairs, in the same order, batch 8, one epoch,
the same learning rate, AdamW and clipping, and both log each step's loss.

    python benchmarks/train_speed.py                # the full table (about 20 minutes on 2 cores)
    python benchmarks/train_speed.py --repeats 1 --only trl,iterpo
    python benchmarks/train_speed.py --device cuda --bf16 --only trl,iterpo   # on a GPU (benchmarks/gpu.sh)

Columns:
- pairs/s: pairs / wall time of everything after the model is loaded and the
  data tokenized: for iterpo the reference pass (once) and training; for TRL
  ``trainer.train()``, which runs the reference model on every batch.
- tokens/s: the tokens that must be processed (each prompt once per pair, each
  response once, no padding) / wall time. The same count for every row.
- MFU: model FLOPs / wall time / the float32 matmul peak measured in this run.
  Model FLOPs count the work the math needs on those tokens: forward and
  backward (3x a forward) for training plus one reference forward, a forward
  being 2 x (the layers' weights) per token, 2 x vocab x hidden per response
  token for the output layer, and 4 x hidden x (keys seen) per token and layer
  for attention.
- peak MB: the process's peak resident memory (model loading included); with
  --device cuda, the peak GPU memory PyTorch allocated instead.
- step-1 loss, logps: the first step's loss and mean chosen log-prob; the
  last column is the largest relative gap of any step's loss to TRL's.

The iterpo rows switch its token-saving steps (models/packing.py) on one at a
time, from a plain loop (every sequence prompt + response padded, full logits,
reference model run every step, torch's AdamW), so each is measured on its own.
iterpo's default keeps AdamW's first moment in bfloat16 (``train.first_moment``,
training/optim.py; the row "with float32 AdamW" is torch's AdamW), splits a
batch into forward passes of at most 192 tokens (``train.max_tokens_per_pass``),
which bounds activation memory at a small cost in speed, adds the output
layer's gradient into ``.grad`` in place (a tied embedding's as sparse rows),
and runs the RMSNorms and gated MLPs with lean backward passes that keep fewer
activations (models/lean.py; the row "without lean layers" runs the defaults
without them); the rows marked "one pass" run each batch of 8 pairs in one
pass; the checkpointing rows recompute activations in the backward.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LR, BATCH, PAIRS, BETA, SEED = 1e-6, 8, 64, 0.1, 0

# name: (trainer, description, layout flags (shared_prompt, padding_free, response_logits, grads_in_place,
# lean_layers), stored reference, extra)
ONE = {"max_tokens_per_pass": None}  # a whole batch of 8 pairs in one forward pass
EXACT = {"first_moment": "float32"}  # torch's AdamW: both moments in float32, as TRL's
CONFIGS = {
    "trl": ("trl", "TRL 1.16 DPOTrainer (baseline)", None, False, {}),
    "iterpo": (
        "iterpo",
        "iterpo, defaults (AdamW's first moment in bfloat16, passes of <= 192 tokens)",
        (1, 1, 1, 1, 1),
        True,
        {},
    ),
    "exact_adamw": ("iterpo", "  defaults with float32 AdamW (torch's)", (1, 1, 1, 1, 1), True, EXACT),
    "passes_256": (
        "iterpo",
        "  defaults, passes of <= 256 tokens",
        (1, 1, 1, 1, 1),
        True,
        {"max_tokens_per_pass": 256},
    ),
    "passes_128": (
        "iterpo",
        "  defaults, passes of <= 128 tokens",
        (1, 1, 1, 1, 1),
        True,
        {"max_tokens_per_pass": 128},
    ),
    "no_lean": ("iterpo", "  defaults without lean layers", (1, 1, 1, 1, 0), True, {}),
    "passes_checkpointing": (
        "iterpo",
        "  defaults + gradient checkpointing",
        (1, 1, 1, 1, 1),
        True,
        {"gradient_checkpointing": True},
    ),
    "autograd_grads": (
        "iterpo",
        "  the same, gradients summed by autograd",
        (1, 1, 1, 0, 1),
        True,
        {"gradient_checkpointing": True},
    ),
    "one_pass": ("iterpo", "iterpo, one pass per batch", (1, 1, 1, 1, 1), True, ONE),
    # the token-saving steps one at a time, over a plain loop with torch's AdamW
    "plain": ("iterpo", "iterpo, plain loop (none of the below, float32 AdamW)", (0, 0, 0, 0, 0), False, ONE | EXACT),
    "reference_once": ("iterpo", "  only: reference log-probs once", (0, 0, 0, 0, 0), True, ONE | EXACT),
    "shared_prompt": ("iterpo", "  only: prompt once per pair", (1, 0, 0, 0, 0), False, ONE | EXACT),
    "response_logits": ("iterpo", "  only: response-only chunked logits", (0, 0, 1, 0, 0), False, ONE | EXACT),
    "padding_free": ("iterpo", "  only: padding-free packing", (0, 1, 0, 0, 0), False, ONE | EXACT),
    "lean_layers": ("iterpo", "  only: lean layers", (0, 0, 0, 0, 1), False, ONE | EXACT),
    "checkpointing": (
        "iterpo",
        "iterpo, one pass + gradient checkpointing",
        (1, 1, 1, 1, 1),
        True,
        {**ONE, "gradient_checkpointing": True},
    ),
    "bf16": ("iterpo", "iterpo, one pass + bf16 autocast", (1, 1, 1, 1, 1), True, {**ONE, "bf16": True}),
}

ANSWERS = [
    "{x}",
    "The answer is {x}.",
    "{a} {op} {b} = {x}",
    "It is {x}.",
    "Let me compute: {a} {op} {b} = {x}. So the answer is {x}.",
]


def make_pairs(path: Path) -> None:
    """64 arithmetic questions, the right answer chosen and a wrong one rejected, in assorted phrasings."""
    from iterpo.tasks.arithmetic import TEMPLATES

    rng = random.Random(SEED)
    rows = []
    for _ in range(PAIRS):
        a, b, op = rng.randint(10, 99), rng.randint(10, 99), rng.choice("+-*")
        x = {"+": a + b, "-": a - b, "*": a * b}[op]
        wrong = x + rng.choice([-1, 1]) * rng.randint(1, 20)
        rows.append(
            {
                "prompt": [{"role": "user", "content": rng.choice(TEMPLATES).format(a=a, op=op, b=b)}],
                "chosen": [{"role": "assistant", "content": rng.choice(ANSWERS).format(a=a, op=op, b=b, x=x)}],
                "rejected": [{"role": "assistant", "content": rng.choice(ANSWERS).format(a=a, op=op, b=b, x=wrong)}],
            }
        )
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def matmul_peak(device: str = "cpu", dtype: str = "float32") -> float:
    """Best matmul GFLOP/s over the model's shapes and large squares, on this process's threads or the GPU."""
    import torch

    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    best = 0.0
    for m, k, n in [(512, 576, 1536), (1024, 576, 1536), (1024, 1536, 576), (2048, 2048, 2048), (3072, 3072, 3072)]:
        a = torch.randn(m, k, device=device, dtype=getattr(torch, dtype))
        b = torch.randn(k, n, device=device, dtype=getattr(torch, dtype))
        a @ b
        for _ in range(3):
            reps = max(1, int(2e10 / (2 * m * k * n)) * (100 if device != "cpu" else 1))
            sync()
            t = time.perf_counter()
            for _ in range(reps):
                a @ b
            sync()
            best = max(best, 2 * m * k * n * reps / (time.perf_counter() - t) / 1e9)
    return best


def layer_flops(config) -> float:
    """A forward's FLOPs per token in the layers' weights (q, o, k, v, MLP): 2 x their weights."""
    h = config.hidden_size
    kv = config.num_key_value_heads * (h // config.num_attention_heads)
    return config.num_hidden_layers * 2 * (2 * h * h + 2 * h * kv + 3 * h * config.intermediate_size)


def model_flops(config, examples) -> tuple[float, int]:
    """(FLOPs the math needs: training + one reference forward, tokens that must be processed)."""
    h, layers, vocab = config.hidden_size, config.num_hidden_layers, config.vocab_size
    per_token = layer_flops(config)
    forward, tokens = 0.0, 0
    for e in examples:
        P = len(e.prompt_ids)
        for r in (e.chosen_ids, e.rejected_ids):
            forward += 2 * vocab * h * len(r)  # output layer at the positions predicting response tokens
            keys = sum(P + k + 1 for k in range(len(r)))  # each response token sees the prompt and itself so far
            forward += layers * 4 * h * keys + per_token * len(r)
        forward += layers * 4 * h * P * (P + 1) / 2 + per_token * P
        tokens += P + len(e.chosen_ids) + len(e.rejected_ids)
    return 4 * forward, tokens  # forward + backward (3 forwards) + a reference forward


def child_trl(model_path: str, data: Path, device: str = "cpu", bf16: bool = False) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    rows = [json.loads(x) for x in data.read_text().splitlines()]
    order = _iterpo_order(len(rows))
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    with tempfile.TemporaryDirectory() as out:
        args = DPOConfig(
            output_dir=out,
            per_device_train_batch_size=BATCH,
            num_train_epochs=1,
            learning_rate=LR,
            lr_scheduler_type="constant",
            warmup_steps=0,
            weight_decay=0.0,
            max_grad_norm=1.0,
            beta=BETA,
            loss_type=["sigmoid"],
            max_length=None,
            logging_steps=1,
            save_strategy="no",
            report_to=[],
            seed=SEED,
            use_cpu=device == "cpu",
            bf16=bf16,
            train_sampling_strategy="sequential",
            disable_tqdm=True,
            dataset_num_proc=None,
        )
        trainer = DPOTrainer(
            model=model,
            args=args,
            train_dataset=Dataset.from_list([rows[i] for i in order]),
            processing_class=tokenizer,
        )
        t = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - t
    logs = [x for x in trainer.state.log_history if "loss" in x and "train_runtime" not in x]
    return {
        "seconds": seconds,
        "losses": [x["loss"] for x in logs],
        "logps_chosen": logs[0]["logps/chosen"],
        "optimizer": type(
            trainer.optimizer.optimizer if hasattr(trainer.optimizer, "optimizer") else trainer.optimizer
        ).__name__,
    }


def train_section(**extra):
    """iterpo's training settings in this benchmark (TRL gets the same in child_trl), extra fields over them."""
    from iterpo.config import TrainSection

    return TrainSection(lr=LR, epochs=1, batch_size=BATCH, max_grad_norm=1.0, weight_decay=0.0, warmup_steps=0, **extra)


def _iterpo_order(n: int) -> list[int]:
    """The order iterpo's trainer visits the pairs in (its seeded shuffle), so TRL can be fed the same order."""
    import torch

    return torch.randperm(n, generator=torch.Generator().manual_seed(SEED)).tolist()


def child_iterpo(model_path: str, data: Path, name: str, device: str = "cpu", bf16: bool = False) -> dict:
    import copy

    import torch

    from iterpo.losses import get_loss
    from iterpo.models.loading import load_model, load_tokenizer
    from iterpo.models.packing import Layout
    from iterpo.training import LiveReference, train
    from iterpo.training.offline import read_preferences, reference_logps, tokenize_pair

    _, _, flags, stored, extra = CONFIGS[name]
    shared, free, logits, in_place, lean = map(bool, flags)
    layout = Layout(
        shared_prompt=shared, padding_free=free, response_logits=logits, grads_in_place=in_place, lean_layers=lean
    )
    tokenizer = load_tokenizer(model_path)
    examples = [tokenize_pair(tokenizer, r) for r in read_preferences(data)]
    model = load_model(model_path, device=device)
    config = train_section(**{"bf16": bf16, **extra})
    reference = None if stored else LiveReference(copy.deepcopy(model))
    torch.manual_seed(SEED)
    t = time.perf_counter()
    if stored:
        for e, r in zip(examples, reference_logps(model, examples, 16, tokenizer.pad_token_id)):
            e.ref_logps = r
    ref_seconds = time.perf_counter() - t
    log = train(
        model,
        examples,
        get_loss("dpo", beta=BETA),
        config,
        SEED,
        tokenizer.pad_token_id,
        reference=reference,
        layout=layout,
    )
    return {
        "seconds": time.perf_counter() - t,
        "reference_seconds": ref_seconds,
        "losses": [x["loss"] for x in log],
        "logps_chosen": log[0]["logps_chosen"],
    }


def run_child(name: str, model_path: str, data: Path, device: str = "cpu", bf16: bool = False) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--child", name, "--model", model_path, "--data", str(data), "--device", device]
        + (["--bf16"] if bf16 else []),
        capture_output=True,
        text=True,
    )
    if out.returncode != 0:
        raise SystemExit(f"{name} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--only", help="comma-separated configurations (default: all): " + ", ".join(CONFIGS))
    parser.add_argument("--model", help="model directory (default: the built-in SmolLM2-135M-Instruct)")
    parser.add_argument("--data")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda: both trainers on that device")
    parser.add_argument("--bf16", action="store_true", help="both trainers under bfloat16 mixed precision")
    args = parser.parse_args()
    if args.child:  # one configuration, in this fresh process
        run = (
            child_trl(args.model, Path(args.data), args.device, args.bf16)
            if args.child == "trl"
            else child_iterpo(args.model, Path(args.data), args.child, args.device, args.bf16)
        )
        if args.device.startswith("cuda"):
            import torch

            run["peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
        else:
            run["peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps(run))
        return

    import torch
    from transformers import AutoConfig

    from iterpo.models.loading import load_tokenizer, resolve_model_path
    from iterpo.training.offline import read_preferences, tokenize_pair

    model_path = args.model or resolve_model_path("smollm2-135m-instruct")
    names = [n.strip() for n in args.only.split(",")] if args.only else list(CONFIGS)
    unknown = set(names) - set(CONFIGS)
    if unknown:
        raise SystemExit(f"--only: unknown configuration(s) {', '.join(sorted(unknown))}; known: {', '.join(CONFIGS)}")
    work = Path(tempfile.mkdtemp(prefix="iterpo-train-speed-"))
    data = work / "pairs.jsonl"
    make_pairs(data)
    examples = [tokenize_pair(load_tokenizer(model_path), r) for r in read_preferences(data)]
    flops, tokens = model_flops(AutoConfig.from_pretrained(model_path), examples)
    lengths = [len(e.chosen_ids) for e in examples] + [len(e.rejected_ids) for e in examples]
    print(
        f"{PAIRS} pairs, prompt {min(len(e.prompt_ids) for e in examples)}-{max(len(e.prompt_ids) for e in examples)} "
        f"tokens, responses {min(lengths)}-{max(lengths)} tokens; {tokens} tokens to process; "
        f"{flops / 1e12:.2f} TFLOP of model work; torch {torch.__version__}, {torch.get_num_threads()} threads",
        flush=True,
    )
    dtype = "bfloat16" if args.bf16 else "float32"
    peaks = [matmul_peak(args.device, dtype)]
    runs: dict[str, list[dict]] = {n: [] for n in names}
    for rep in range(args.repeats):
        for name in names:
            run = run_child(name, model_path, data, args.device, args.bf16)
            runs[name].append(run)
            print(
                f"  run {rep + 1}/{args.repeats} {name:<16} {run['seconds']:6.1f} s  peak {run['peak_mb']:6.0f} MB  "
                f"step-1 loss {run['losses'][0]:.6f}",
                flush=True,
            )
    peaks.append(matmul_peak(args.device, dtype))
    peak = max(peaks)
    print(
        f"{dtype} matmul peak on {args.device} measured in this run: {peak:.0f} GFLOP/s (start {peaks[0]:.0f}, "
        f"end {peaks[1]:.0f})\n"
    )

    base = runs.get("trl")
    rows = []
    header = (
        f"| {'configuration':<40} | pairs/s | vs TRL | tokens/s | MFU | peak MB | vs TRL | step-1 loss | "
        "step-1 logps | max loss gap |"
    )
    print(header)
    print("|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|")
    for name in names:
        rs = runs[name]
        seconds = statistics.median(r["seconds"] for r in rs)
        mem = statistics.median(r["peak_mb"] for r in rs)
        row = {
            "name": name,
            "seconds": seconds,
            "pairs_per_s": PAIRS / seconds,
            "tokens_per_s": tokens / seconds,
            "mfu": flops / seconds / (peak * 1e9),
            "peak_mb": mem,
            "losses": rs[0]["losses"],
            "logps_chosen": rs[0]["logps_chosen"],
        }
        if base:
            b_sec = statistics.median(r["seconds"] for r in base)
            b_mem = statistics.median(r["peak_mb"] for r in base)
            row["speedup"], row["memory_ratio"] = b_sec / seconds, mem / b_mem
            theirs = base[0]["losses"]
            row["loss_gap"] = max(abs(a - b) / abs(b) for a, b in zip(row["losses"], theirs))
        rows.append(row)
        fmt = lambda key, spec, row=row: format(row[key], spec) if key in row else "-"
        print(
            f"| {CONFIGS[name][1]:<40} | {row['pairs_per_s']:7.2f} | {fmt('speedup', '5.2f')}x | "
            f"{row['tokens_per_s']:8.0f} | {row['mfu']:3.0%} | {mem:7.0f} | {fmt('memory_ratio', '5.2f')}x | "
            f"{row['losses'][0]:11.6f} | {row['logps_chosen']:12.4f} | {fmt('loss_gap', '12.1e')} |"
        )
    print(f"\nper-step losses ({len(rows[0]['losses'])} steps):")
    for row in rows:
        print(f"  {row['name']:<16} " + " ".join(f"{x:.5f}" for x in row["losses"]))
    if args.json:
        Path(args.json).write_text(
            json.dumps({"peak_gflops": peak, "tokens": tokens, "flops": flops, "rows": rows, "runs": runs}, indent=1)
        )


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
