"""Data-parallel training: two processes (torchrun, gloo) take the steps one process takes with twice the
gradient accumulation: the same losses per step and the same weights."""

import json

import pytest
import torch
import yaml
from safetensors.torch import load_file

from helpers import cli, tiny_config


def _run(tiny_model_dir, tmp_path, name, **overrides):
    # float32 sampling: round 2 samples from weights a float32 rounding apart, which a bfloat16 copy could round
    # to values a whole bfloat16 step apart (seen flipping 1 of 32 samples on a CPU with AVX512-BF16)
    settings = {"run.rounds": 2, "task.train_size": 8, "train.batch_size": 2, "sampling.dtype": "float32"}
    cfg = tiny_config(tiny_model_dir, tmp_path / name, **{**settings, **overrides})
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    code, out, err = cli("run", str(path))
    assert code == 0, err
    return tmp_path / name


# sparsepo: per-token statistics from a live reference model (sharded too) and a mask head the loss owns
@pytest.mark.parametrize(
    "lora,fsdp,loss",
    [(False, False, "dpo"), (True, False, "dpo"), (False, True, "dpo"), (True, True, "dpo"), (False, True, "sparsepo")],
    ids=["full", "lora", "fsdp", "fsdp-lora", "fsdp-sparsepo"],
)
def test_two_processes_equal_one_with_twice_the_accumulation(tiny_model_dir, tmp_path, lora, fsdp, loss):
    extra: dict = {"model.lora": {"r": 4, "alpha": 8}} if lora else {}
    # exact AdamW here: the gradients of one and two processes are a rounding apart, which can flip a bfloat16
    # moment's rounding (the one sharded case below keeps it in bfloat16 and allows for that)
    extra["train.first_moment"] = "float32"
    if not lora and not fsdp:  # round 2 at half round 1's learning rate, applied once on either path
        extra["train.round_lr_decay"] = 0.5
    if loss == "sparsepo":
        extra.update({"loss.name": "sparsepo", "loss.mask": "learned", "reference.policy": "initial"})
    if fsdp:  # an odd number of pairs per step, several passes per micro-batch: processes run unequal shares
        extra.update({"train.fsdp": True, "train.max_tokens_per_pass": 40, "task.train_size": 7})
        if not lora and loss == "dpo":  # AdamW's first moment in bfloat16 on the sharded weights
            extra["train.first_moment"] = "bfloat16"
    one = _run(tiny_model_dir, tmp_path, "one", **{"train.grad_accum": 2, **extra, "train.fsdp": False})
    two = _run(tiny_model_dir, tmp_path, "two", **{"train.processes": 2, "train.grad_accum": 1, **extra})
    base_lr = yaml.safe_load((one / "config.yaml").read_text())["train"]["lr"]
    steps = 0  # optimizer steps over both rounds: the bounds on the weights below grow with them
    for r in (1, 2):
        a = [json.loads(x) for x in (one / f"round-{r:03d}" / "train.jsonl").read_text().splitlines()]
        b = [json.loads(x) for x in (two / f"round-{r:03d}" / "train.jsonl").read_text().splitlines()]
        assert len(a) == len(b) > 0 and [x["examples"] for x in a] == [x["examples"] for x in b]
        lr = base_lr * extra.get("train.round_lr_decay", 1.0) ** (r - 1)
        steps += len(a)
        assert all(x["lr"] == pytest.approx(lr) and y["lr"] == pytest.approx(lr) for x, y in zip(a, b)), r
        for x, y in zip(a, b):
            assert y["loss"] == pytest.approx(x["loss"], rel=1e-5), (r, x["step"])
            # the margin is beta x a difference of summed log-probs of tens of nats, whose float32 rounding (one
            # process sums passes in another order than two, and a CPU's matmul kernels may round by the batch's
            # shape) is up to a few 1e-5: 5e-6 absolute after beta 0.1 (seen 2.5e-7 on a CPU with AMX, 1.5e-6 on
            # one with AVX512 and no AMX); sharded, the log-probs take the whole-logits route, rounding differs more
            assert y.get("reward_margin") == pytest.approx(x["reward_margin"], rel=1e-4, abs=5e-6)
        # round 2 sampled from round 1's trained policy: the same samples, so the processes trained the same model
        assert (one / f"round-{r:03d}" / "rollouts.parquet").read_bytes() == (
            two / f"round-{r:03d}" / "rollouts.parquet"
        ).read_bytes()
    weights = "adapter_model.safetensors" if lora else "model.safetensors"
    wa, wb = (
        load_file(one / "round-002" / "checkpoint" / weights),
        load_file(two / "round-002" / "checkpoint" / weights),
    )
    assert wa.keys() == wb.keys()
    # a step moves a weight by up to lr; one process adds each pass's output-layer gradient into the
    # last's, two sum theirs after, a rounding apart (under 0.1% of one step); sharded, the other rounding of
    # the log-probs moves them by under 1% of one step
    atol = 1e-5 if fsdp else 1e-6
    if extra["train.first_moment"] == "bfloat16":
        # where the sums differ by a rounding, the first moment's bfloat16 rounding can fall the other way: up to
        # 2^-8 of a step, in each step (seen 1.2e-5 after 8 steps at lr 1e-3)
        atol = steps * base_lr / 256
    # AdamW divides the moment by the root of the second moment, so a weight whose gradients are a near-zero sum
    # of cancelling terms (an output-layer row of a token no response holds) moves by up to a whole step on the
    # sign of that sum, which a rounding can flip: a handful of entries may differ by up to 2 lr a step (seen 2 of
    # 1.6M, 2.3e-4, sharded on a CPU with AVX512 and no AMX). Every other entry is within atol, and a real
    # difference in training (a gradient left out, a step applied twice) moves most of them.
    far = {k: int((~torch.isclose(wa[k], wb[k], rtol=1e-5, atol=atol)).sum()) for k in wa}
    total = sum(w.numel() for w in wa.values())
    assert sum(far.values()) <= total * 1e-5, {k: n for k, n in far.items() if n}
    for k in wa:
        assert (wa[k] - wb[k]).abs().max() <= 2 * base_lr * steps, k
    assert not (two / "round-001" / ".train-processes").exists()  # the scratch directory is cleaned up
