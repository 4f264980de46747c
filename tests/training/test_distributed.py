"""Data-parallel training: two processes (torchrun, gloo) take the steps one process takes with twice the
gradient accumulation: the same losses per step and the same weights."""

import json

import pytest
import torch
import yaml
from safetensors.torch import load_file

from helpers import cli, tiny_config


def _run(tiny_model_dir, tmp_path, name, **overrides):
    cfg = tiny_config(
        tiny_model_dir, tmp_path / name, **{"run.rounds": 2, "task.train_size": 8, "train.batch_size": 2, **overrides}
    )
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
    for r in (1, 2):
        a = [json.loads(x) for x in (one / f"round-{r:03d}" / "train.jsonl").read_text().splitlines()]
        b = [json.loads(x) for x in (two / f"round-{r:03d}" / "train.jsonl").read_text().splitlines()]
        assert len(a) == len(b) > 0 and [x["examples"] for x in a] == [x["examples"] for x in b]
        lr = 1e-3 * extra.get("train.round_lr_decay", 1.0) ** (r - 1)
        assert all(x["lr"] == pytest.approx(lr) and y["lr"] == pytest.approx(lr) for x, y in zip(a, b)), r
        for x, y in zip(a, b):
            assert y["loss"] == pytest.approx(x["loss"], rel=1e-5), (r, x["step"])
            # the margin is beta x a difference of summed log-probs of tens of nats, whose float32 rounding (one
            # process sums passes in another order than two) is a few 1e-6: 1e-6 absolute after beta 0.1 (seen
            # 2.5e-7 on a CPU with AMX); sharded, the log-probs take the whole-logits route, rounding differs more
            assert y.get("reward_margin") == pytest.approx(x["reward_margin"], rel=1e-4, abs=1e-6)
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
    # a step moves a weight by up to lr (1e-3); one process adds each pass's output-layer gradient into the
    # last's, two sum theirs after, a rounding apart (under 0.1% of one step); sharded, the other rounding of
    # the log-probs moves them by under 1% of one step
    atol = 1e-5 if fsdp else 1e-6
    if "train.first_moment" in extra:  # and where the sums differ by a rounding, the first moment's bfloat16 rounding
        atol = 8 * 1e-3 / 256  # can fall the other way: up to 2^-8 of a step, in each of the 8 steps (seen 1.2e-5)
    for k in wa:
        assert torch.allclose(wa[k], wb[k], rtol=1e-5, atol=atol), k
    assert not (two / "round-001" / ".train-processes").exists()  # the scratch directory is cleaned up
