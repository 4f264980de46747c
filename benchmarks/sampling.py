"""Sampling speed of the default round: the built-in model, its 64 training prompts x 8 samples, temperature 0.8,
at most 32 new tokens, drawn as the sample stage draws them (shard after shard of ``sampling.shard_size``
prompts, ``sampling.batch_size`` sequences decoding together), one option changed at a time.

    python benchmarks/sampling.py                 # the table (about 6 minutes on 2 cores)
    python benchmarks/sampling.py --prompts 16    # a quicker look

Rows:
- "before": iterpo's decoding loop as it was before this benchmark (commit 94ee8cf, read from git), float32,
  decode batches of 64 inside shards of 16 prompts (the defaults then), Gumbel-max noise over the whole
  vocabulary for every token.
- the rows after it: today's loop, with the weights, decode batch and shard size named. It pads each prompt to
  its own length rounded up to 32 tokens and batches it with prompts of that padded length only; it runs every
  linear layer on fixed blocks of 128 rows (iterpo.sampling.invariant; "row blocks of N" changes the size, "no
  row blocks" multiplies the whole batch at once), keeping finished rows in the batch until dropping them frees
  a block; and it draws each token from one uniform per row (inverse CDF). "bfloat16" is the copy of the policy
  the sampler makes when sampling.dtype resolves to bfloat16 (auto, on a CPU with native bfloat16 such as this
  one): cast, with plain attention computed per group of query heads that share a key/value head. "bfloat16
  fused attention" is the same copy with PyTorch's fused attention kernel (SDPA), whose results for a row have
  been seen to change with the number of rows in the batch (it picks how to pack its inputs from the batch
  size). The default is the bfloat16 row with batch 256 and shards of 32 (float32 at batch 256 where bfloat16 is
  not native).

Tried and left out (no difference beyond this machine's run-to-run noise of about 10%, bfloat16, batch 256): a
KV cache written in place into buffers allocated once per batch instead of grown by concatenation.

Columns: wall seconds of the whole sampling (prefill included), new tokens/s (the round table's figure: tokens
generated / seconds), the speed-up over "before", and MFU: the FLOPs the math needs (prefill of every prompt
once, every new token's forward with its attention over the keys it sees) / wall time / the matmul peak of that
dtype measured in this run. "same samples" compares each row's samples with the first row of today's loop at
the same dtype and row block ("-": no other row to compare with): the contract is that a sample depends on its
seed alone, never on the batch it decodes in.
(float32 and bfloat16 samples differ from each other: different weights give different samples.)
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_speed import layer_flops, matmul_peak  # noqa: E402

from iterpo.config import load_config  # noqa: E402
from iterpo.models.chat import encode_prompt  # noqa: E402
from iterpo.models.loading import load_model, load_tokenizer, resolve_model_path  # noqa: E402
from iterpo.sampling import derive_seed  # noqa: E402
from iterpo.sampling.base import TransformersSampler  # noqa: E402
from iterpo.sampling.invariant import ROW_BLOCK  # noqa: E402
from iterpo.tasks import build_task  # noqa: E402

BEFORE = "94ee8cf"  # the last commit with the old decoding loop
ROOT = Path(__file__).resolve().parent.parent

# (label, loop, weights, decode batch, shard size, row block); weights: float32 (the policy), bfloat16 (the copy
# the sampler makes, with its grouped plain attention, as a run samples) or "bfloat16 fused" (that copy with
# PyTorch's fused attention); row block: the linear layers' fixed block of rows (None: the whole batch at once)
ROWS = [
    ("before: float32, batch 64, shards of 16", "before", "float32", 64, 16, None),
    ("float32, batch 64, shards of 16", "now", "float32", 64, 16, ROW_BLOCK),
    ("float32, batch 256, shards of 32", "now", "float32", 256, 32, ROW_BLOCK),
    ("bfloat16, batch 64, shards of 16", "now", "bfloat16", 64, 16, ROW_BLOCK),
    ("bfloat16, batch 256, shards of 32 (default)", "now", "bfloat16", 256, 32, ROW_BLOCK),
    ("bfloat16, batch 512, shards of 64", "now", "bfloat16", 512, 64, ROW_BLOCK),
    ("bfloat16, batch 256, row blocks of 64", "now", "bfloat16", 256, 32, 64),
    ("bfloat16, batch 256, row blocks of 256", "now", "bfloat16", 256, 32, 256),
    ("bfloat16, batch 64, no row blocks", "now", "bfloat16", 64, 16, None),
    ("bfloat16, batch 256, no row blocks", "now", "bfloat16", 256, 32, None),
    ("bfloat16 fused attention, batch 64, shards of 16", "now", "bfloat16 fused", 64, 16, ROW_BLOCK),
    ("bfloat16 fused attention, batch 256, shards of 32", "now", "bfloat16 fused", 256, 32, ROW_BLOCK),
]


def old_loop():
    """The generate() of commit BEFORE, loaded from git as a module of its own."""
    source = subprocess.run(
        ["git", "show", f"{BEFORE}:iterpo/sampling/generate.py"], cwd=ROOT, capture_output=True, text=True
    )
    if source.returncode != 0:
        sys.exit(f"the 'before' row needs the repository's history (git show {BEFORE}): {source.stderr.strip()}")
    path = Path(tempfile.mkdtemp()) / "generate_before.py"
    path.write_text(source.stdout)
    spec = importlib.util.spec_from_file_location("generate_before", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.generate


def flops(config, prompts: list[list[int]], samples) -> float:
    """The FLOPs of prefilling each prompt once and decoding its samples' tokens."""
    h, layers, vocab = config.hidden_size, config.num_hidden_layers, config.vocab_size
    per_token = layer_flops(config) + 2 * vocab * h  # the output layer at every new token
    total = 0.0
    for prompt, outs in zip(prompts, samples):
        P = len(prompt)
        total += per_token * P + layers * 4 * h * P * (P + 1) / 2  # prefill (the output layer at the last only)
        for ids, _ in outs:
            total += len(ids) * per_token + layers * 4 * h * sum(P + k + 1 for k in range(len(ids)))
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from iterpo.sampling.generate import generate

    loops = {"before": old_loop(), "now": generate}
    config = load_config()  # the built-in default
    path = resolve_model_path(config.model.path)
    tok = load_tokenizer(path)
    policy = load_model(path)
    models = {"float32": policy, "bfloat16": TransformersSampler(lambda: policy, tok, "bfloat16").generating_model()}
    models["bfloat16 fused"] = copy.deepcopy(models["bfloat16"])
    models["bfloat16 fused"].set_attn_implementation("sdpa")
    s = config.sampling
    task_prompts = build_task(config.task, config.run.seed).train_prompts()[: args.prompts]
    prompts = [encode_prompt(tok, p.messages, config.model.system_prompt) for p in task_prompts]
    K = s.samples_per_prompt
    seeds = [[derive_seed(config.run.seed, 1, p.prompt_id, k) for k in range(K)] for p in task_prompts]
    peak = {dtype: matmul_peak(dtype=dtype) for dtype in ("float32", "bfloat16")}
    for model in models.values():  # warm-up
        generate(model, tok, prompts[:2], seeds[:2], s.temperature, s.top_p, 4, 16)
    results = {}
    for label, loop, dtype, batch, shard, row_block in ROWS:
        blocks = {} if loop == "before" else {"row_block": row_block}
        start = time.perf_counter()
        out = []
        for i in range(0, len(prompts), shard):
            out += loops[loop](
                models[dtype],
                tok,
                prompts[i : i + shard],
                seeds[i : i + shard],
                s.temperature,
                s.top_p,
                s.max_new_tokens,
                batch,
                **blocks,
            )
        seconds = time.perf_counter() - start
        new = sum(len(ids) for outs in out for ids, _ in outs)
        results[label] = (seconds, new, flops(models[dtype].config, prompts, out), out)
        print(f"  {label:<42} {seconds:6.1f} s  {new / seconds:6.0f} tokens/s", flush=True)
    peak = {dtype: max(value, matmul_peak(dtype=dtype)) for dtype, value in peak.items()}
    peak["bfloat16 fused"] = peak["bfloat16"]
    base = results[ROWS[0][0]][0]
    first = {}  # (dtype, row block) -> the samples of today's loop's first row with those
    groups = Counter((dtype, row_block) for _, loop, dtype, _, _, row_block in ROWS if loop == "now")
    print(
        f"\nmatmul peak measured in this run: float32 {peak['float32']:.0f}, bfloat16 {peak['bfloat16']:.0f} "
        f"GFLOP/s; {len(prompts)} prompts x {s.samples_per_prompt} samples, at most {s.max_new_tokens} new tokens, "
        f"temperature {s.temperature}, torch threads {torch.get_num_threads()}\n"
    )
    print("| loop, weights, decode batch, shards | seconds | new tokens/s | vs before | MFU | same samples |")
    print("| --- | ---: | ---: | ---: | ---: | --- |")
    for label, loop, dtype, _, _, row_block in ROWS:
        seconds, new, work, out = results[label]
        same = "-"
        if loop == "now":
            group = (dtype, row_block)
            if groups[group] > 1:  # a row alone in its group has nothing to be compared with
                first.setdefault(group, out)
                differ = sum(a != b for a, b in zip(out, first[group]))
                same = "yes" if not differ else f"NO: {differ} prompts differ"
        print(
            f"| {label} | {seconds:.1f} | {new / seconds:.0f} | {base / seconds:.2f}x | "
            f"{work / seconds / (peak[dtype] * 1e9):.1%} | {same} |"
        )


if __name__ == "__main__":
    main()
