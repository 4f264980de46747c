"""The whole loop on the tiny model: two rounds, every file in place, resumable."""

import json

import pyarrow.parquet as pq
import pytest
import yaml

from iterpo.config import load_config

from helpers import run_config, tiny_config


def _run(cfg_dict, tmp_path, name="cfg.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg_dict))
    return run_config(load_config(path))


def test_two_rounds_write_the_run_directory(tiny_model_dir, tmp_path):
    rows, store = _run(tiny_config(tiny_model_dir, tmp_path / "run"), tmp_path)
    root = store.root
    assert (root / "config.yaml").is_file() and (root / "manifest.json").is_file()
    assert (root / "round-000" / "eval.json").is_file()
    for r in (1, 2):
        d = root / f"round-{r:03d}"
        for name in [
            "rollouts.parquet",
            "judgements.parquet",
            "preferences.parquet",
            "ref_logps.parquet",
            "train.jsonl",
            "eval.json",
        ]:
            assert (d / name).is_file(), name
        assert not (d / "rollouts").exists()  # shards merged and removed
        rollouts = pq.read_table(d / "rollouts.parquet")
        assert rollouts.num_rows == 8 * 4
        prefs = pq.read_table(d / "preferences.parquet")
        assert prefs.num_rows > 0 and set(prefs.column_names) >= {"prompt", "chosen", "rejected"}
        log = [json.loads(x) for x in (d / "train.jsonl").read_text().splitlines()]
        assert log and all("loss" in x and "reward_margin" in x for x in log)
        # a checkpoint transformers loads directly
        from transformers import AutoModelForCausalLM, AutoTokenizer

        AutoModelForCausalLM.from_pretrained(d / "checkpoint")
        AutoTokenizer.from_pretrained(d / "checkpoint")
    assert [r["round"] for r in rows] == [0, 1, 2]
    assert all(r["accuracy"] is not None for r in rows)
    assert rows[1]["pairs"] == pq.read_table(root / "round-001" / "preferences.parquet").num_rows
    # the policy moved: round 2 samples differ from round 1 samples for the same seeds' prompts
    t1 = pq.read_table(root / "round-001" / "rollouts.parquet").column("text").to_pylist()
    t2 = pq.read_table(root / "round-002" / "rollouts.parquet").column("text").to_pylist()
    assert t1 != t2


def test_dpo_loss_decreases_within_a_round(tiny_model_dir, tmp_path):
    cfg = tiny_config(tiny_model_dir, tmp_path / "run", **{"run.rounds": 1, "train.epochs": 6, "train.lr": 3e-3})
    _, store = _run(cfg, tmp_path)
    log = [json.loads(x) for x in (store.root / "round-001" / "train.jsonl").read_text().splitlines()]
    first, last = log[: len(log) // 3], log[-len(log) // 3 :]
    assert sum(x["loss"] for x in last) / len(last) < sum(x["loss"] for x in first) / len(first)
    assert log[-1]["reward_accuracy"] >= 0.5


def test_reference_initial_and_lora(tiny_model_dir, tmp_path):
    cfg = tiny_config(
        tiny_model_dir,
        tmp_path / "run",
        **{"reference.policy": "initial", "model.lora": {"r": 4, "alpha": 8, "save_merged": True}},
    )
    rows, store = _run(cfg, tmp_path)
    ckpt = store.root / "round-002" / "checkpoint"
    assert (ckpt / "adapter_config.json").is_file() and (ckpt / "merged" / "config.json").is_file()
    # with reference = initial and LoRA, round-2 reference log-probs come from the adapters-off model,
    # which equals a freshly loaded base model
    from iterpo.models.loading import load_model
    from iterpo.models.logprobs import score_responses
    from iterpo.plan import build_plan
    from iterpo.records import Rollout
    from iterpo.stages import RunContext

    ctx = RunContext(build_plan(load_config(store.config_path)), store)
    ref = pq.read_table(store.root / "round-002" / "ref_logps.parquet").to_pylist()
    rollouts = {(x.prompt_id, x.sample_idx): x for x in ctx.read(2, "rollouts.parquet", Rollout)}
    base = load_model(tiny_model_dir)
    want = score_responses(
        base,
        [ctx.prompt_ids_of(x["prompt_id"]) for x in ref],
        [rollouts[(x["prompt_id"], x["sample_idx"])].token_ids for x in ref],
        16,
        ctx.pad_id,
    )
    assert [x["ref_logp"] for x in ref] == pytest.approx(want, abs=1e-4)


def test_prompts_from_a_file(tiny_model_dir, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"Say {i}.", "answer": str(i)}) + "\n" for i in range(6)))
    cfg = tiny_config(
        tiny_model_dir,
        tmp_path / "run",
        **{"run.rounds": 1, "task.name": "file", "task.train_file": str(prompts), "task.eval_file": str(prompts)},
    )
    rows, store = _run(cfg, tmp_path)
    assert pq.read_table(store.root / "round-001" / "rollouts.parquet").num_rows == 6 * 4
    assert rows[1]["accuracy"] is not None


def test_round_lr_decay_shrinks_each_rounds_learning_rate(tiny_model_dir, tmp_path):
    cfg = tiny_config(tiny_model_dir, tmp_path / "run", **{"run.rounds": 3, "train.round_lr_decay": 0.5})
    _, store = _run(cfg, tmp_path)
    for r, lr in [(1, 1e-3), (2, 5e-4), (3, 2.5e-4)]:
        log = [json.loads(x) for x in (store.root / f"round-{r:03d}" / "train.jsonl").read_text().splitlines()]
        assert log and all(x["lr"] == pytest.approx(lr) for x in log), r
