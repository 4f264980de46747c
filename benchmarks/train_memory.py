"""Where the training benchmark's memory goes: the process's resident memory through one run of iterpo's
trainer on benchmarks/train_speed.py's 64 pairs (same model, batch 8, AdamW, clipping), phase by phase.

    python benchmarks/train_memory.py                                   # the default configuration
    python benchmarks/train_memory.py --set max_tokens_per_pass=128      # a TrainSection field changed
    MALLOC_ARENA_MAX=1 python benchmarks/train_memory.py                 # glibc's allocator tuned
    LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libjemalloc.so.2 python benchmarks/train_memory.py   # another allocator

Linux with glibc: a thread reads /proc/self/statm every 2 ms; the table gives, per phase, the resident memory at
its start, its peak and its end. A step is its forward and backward passes and the optimizer step. "held between
steps" is the resident memory after each step (its gradients freed) once glibc has returned its free pages to the
system (malloc_trim, called only for this reading), so it is what the process holds rather than what the
allocator keeps (the trims cost time: for speed, see train_speed.py; under another allocator malloc_trim does
nothing and the figure is what that allocator keeps). Peak MB is ru_maxrss, the figure train_speed.py reports.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import resource
import sys
import threading
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))


def resident_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class Phases:
    """Resident memory sampled in a thread; mark(name) starts a phase."""

    def __init__(self) -> None:
        self.marks: list[tuple[float, str]] = []
        self.samples: list[tuple[float, float]] = []
        self.done = False
        threading.Thread(target=self._sample, daemon=True).start()

    def _sample(self) -> None:
        while not self.done:
            self.samples.append((time.perf_counter(), resident_mb()))
            time.sleep(0.002)

    def mark(self, name: str) -> None:
        self.marks.append((time.perf_counter(), name))

    def table(self) -> list[tuple[str, float, float, float]]:
        self.done = True
        time.sleep(0.01)
        rows = []
        for i, (start, name) in enumerate(self.marks[:-1]):
            end = self.marks[i + 1][0]
            seen = [mb for t, mb in self.samples if start <= t < end]
            if seen:
                rows.append((name, seen[0], max(seen), seen[-1]))
        return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="a TrainSection field")
    args = ap.parse_args()
    phases = Phases()
    phases.mark("imports")
    import torch  # noqa: F401 (its import is what the first phase measures)
    import train_speed

    from iterpo.losses import get_loss
    from iterpo.models.loading import load_model, load_tokenizer, resolve_model_path
    from iterpo.training import train
    from iterpo.training.offline import read_preferences, reference_logps, tokenize_pair

    # values read as iterpo's own --set reads them (YAML: 128, true, null, bfloat16)
    extra = {k: yaml.safe_load(v) for k, v in (item.split("=", 1) for item in args.set)}
    phases.mark("tokenizer, pairs and model")
    model_path = resolve_model_path("smollm2-135m-instruct")
    data = Path(os.environ.get("TMPDIR", "/tmp")) / "iterpo-train-memory-pairs.jsonl"
    train_speed.make_pairs(data)
    tokenizer = load_tokenizer(model_path)
    examples = [tokenize_pair(tokenizer, r) for r in read_preferences(data)]
    model = load_model(model_path)
    phases.mark("reference pass")
    for e, r in zip(examples, reference_logps(model, examples, 16, tokenizer.pad_token_id)):
        e.ref_logps = r
    held: list[float] = []
    libc = ctypes.CDLL("libc.so.6")

    def after_step(_examples: int) -> None:  # the trainer's progress callback: an optimizer step is done
        libc.malloc_trim(0)
        held.append(resident_mb())
        phases.mark(f"step {len(held) + 1}")

    config = train_speed.train_section(**extra)
    phases.mark("step 1")
    start = time.perf_counter()
    train(
        model,
        examples,
        get_loss("dpo", beta=train_speed.BETA),
        config,
        train_speed.SEED,
        tokenizer.pad_token_id,
        after_step,
    )
    seconds = time.perf_counter() - start
    phases.marks[-1] = (phases.marks[-1][0], "after the last step")  # the training loop's own wind-down
    phases.mark("end")
    print("| phase | MB at start | peak MB | MB at end |\n| --- | ---: | ---: | ---: |")
    for name, first, peak, last in phases.table():
        print(f"| {name} | {first:.0f} | {peak:.0f} | {last:.0f} |")
    params = sum(p.numel() for p in model.parameters()) * 4 / 2**20
    print(
        f"\nweights {params:.0f} MB (gradients the same, AdamW's moments twice that); held between steps: "
        + ", ".join(f"{x:.0f}" for x in held)
        + " MB"
        + f"; training {seconds:.1f} s; peak {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB"
    )


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
