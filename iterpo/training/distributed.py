"""Training on several processes: torchrun launches them, torch.distributed sums their gradients.

Why torchrun: it ships with PyTorch (no extra dependency), is what accelerate
and TRL's multi-GPU runs use underneath, starts one process per GPU on a node
(``--nproc_per_node``) or across nodes, and kills the others when one dies.

The run's process prepares everything a training round needs (the examples,
with their reference log-probs, and where the starting policy is) as a job in
a scratch directory, then ``launch`` runs ``torchrun -m
iterpo.training.distributed JOB``. Each process loads the starting policy,
trains on its share of every step's micro-batches (a whole replica of the
model, or with ``train.fsdp`` a shard of it: iterpo.training.parallel), and
the first writes the trained policy and the training log back into the
scratch directory. Only the run's
process writes to the run store: a crash of any training process ends the
launch with an error and leaves the round's train stage unfinished, so a
resume runs it again.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch

from iterpo.errors import RunFailure

JOB = "job.pt"  # what the processes read: TrainJob
LOG = "train_log.json"  # what the first process writes: the log, one row per optimizer step
TRAINED = "trained"  # ... and the trained policy (a directory save_pretrained wrote)


@dataclass
class TrainJob:
    examples: list  # PairExample / UnpairedExample / GroupExample, reference log-probs filled in
    loss: dict  # {"name": ..., hyperparameters...}
    train: dict  # the TrainSection's fields
    seed: int  # the training seed (batch order)
    pad_id: int
    base_path: str  # the starting model as from_pretrained loads it
    dtype: str
    lora: dict | None  # the LoraSection's fields when training adapters
    lora_seed: int  # seeds fresh adapters (round 1)
    start: str | None  # the policy to start from: a saved checkpoint directory, or None for the base model
    reference: str | None  # a live reference for per-token losses: "previous" (the starting policy) or "initial"
    device: str = "cpu"  # the run's device: with "cuda", each process takes the GPU of its local rank
    ema_path: str | None = None  # reference "ema": the weight average's directory (None: the base model)


def launch(job: TrainJob, scratch: Path, processes: int, threads: int | None = None) -> tuple[list[dict], Path]:
    """Run the job on ``processes`` processes; (the training log, the directory of the trained policy)."""
    scratch.mkdir(parents=True, exist_ok=True)
    torch.save(job, scratch / JOB)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={processes}",
        "-m",
        "iterpo.training.distributed",
        str(scratch),
    ]
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    proc = subprocess.Popen(cmd, env=env)
    try:
        returncode = proc.wait()
    except BaseException:  # Ctrl-C, SIGTERM: torchrun passes the signal on to its processes and waits for them
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
        raise
    log_path = scratch / LOG
    if returncode != 0 or not log_path.is_file():
        raise RunFailure(
            f"the {processes} training processes did not finish (torchrun exited with {returncode}); "
            "their output above says why"
        )
    return json.loads(log_path.read_text()), scratch / TRAINED


def _load(job: TrainJob, path: str | None, device: str):
    from iterpo.config import LoraSection
    from iterpo.models.loading import load_policy_from

    return load_policy_from(
        path, job.base_path, job.dtype, LoraSection(**job.lora) if job.lora else None, job.lora_seed, device
    )


def main(scratch: str) -> None:
    """One training process (started by torchrun, which sets RANK, WORLD_SIZE and the rendezvous)."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    from iterpo.config import TrainSection
    from iterpo.losses import get_loss
    from iterpo.training.parallel import DataParallel, full_state_dict, shard
    from iterpo.training.trainer import reference_model, train

    job: TrainJob = torch.load(Path(scratch) / JOB, weights_only=False)  # written by this run's own process
    cuda = job.device.startswith("cuda")
    # NCCL for the GPUs' tensors, gloo for the few on the CPU (which parameters got gradients, metrics)
    dist.init_process_group("cpu:gloo,cuda:nccl" if cuda else "gloo", timeout=timedelta(hours=2))
    rank, world = dist.get_rank(), dist.get_world_size()
    device = f"cuda:{os.environ.get('LOCAL_RANK', '0')}" if cuda else job.device  # one GPU per process on its node
    if cuda:
        torch.cuda.set_device(device)
    try:
        loss = get_loss(job.loss["name"], **{k: v for k, v in job.loss.items() if k != "name"})
        config = TrainSection(**job.train)
        # sharded, the whole model is loaded on the CPU only; each process moves its shard to its device
        model = _load(job, job.start, "cpu" if config.fsdp else device)
        reference = None
        if job.reference is not None:  # per-token losses compare against a live reference
            reference = reference_model(
                job.reference,
                model,
                job.base_path,
                job.dtype,
                "cpu" if config.fsdp else device,
                frozen_copy=True,
                ema_path=job.ema_path,
            )
        if config.fsdp:
            mesh = init_device_mesh("cuda" if cuda else "cpu", (world,))
            if reference is not None and reference.model is not model:
                shard(reference.model, mesh)  # a model of its own (not the policy with adapters off): sharded too
            shard(model, mesh)
        torch.manual_seed(job.seed)
        log = train(
            model,
            job.examples,
            loss,
            config,
            job.seed,
            job.pad_id,
            reference=reference,
            parallel=DataParallel(rank, world, sharded=config.fsdp),
        )
        weights = full_state_dict(model) if config.fsdp else None  # every process sends its shards to the first
        if rank == 0:
            target = Path(scratch) / TRAINED
            shutil.rmtree(target, ignore_errors=True)
            if weights is not None:  # a whole model on the CPU to save them from
                model = _load(job, job.start, "cpu")
                model.load_state_dict(weights)
            model.save_pretrained(target, safe_serialization=True)
            (Path(scratch) / LOG).write_text(json.dumps(log))
        dist.barrier()
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
    # Done: the process group is destroyed and the first process has written its files. Leave without the
    # interpreter's teardown, where gloo's worker threads can still abort the process (SIGABRT, "terminate called
    # without an active exception"), which torchrun would report as a failed training.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
