"""The refine stage: a refinement killed midway resumes to the identical run directory; what it refuses."""

import json
import signal
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from iterpo.config import load_config
from iterpo.errors import ConfigError, UserInputError

from helpers import cli, tiny_config

CONFIGS = Path(__file__).resolve().parent.parent.parent / "configs"


def _evolve_config(tiny_model_dir, run_dir: Path, **changes) -> Path:
    """evolve's round on the tiny model, one round, 6 prompts in shards of 2 (a middle shard to kill it in)."""
    recipe = yaml.safe_load((CONFIGS / "evolve.yaml").read_text())
    cfg = tiny_config(tiny_model_dir, run_dir, **{"task.train_size": 6, "sampling.shard_size": 2})
    cfg["run"]["rounds"] = 1
    cfg["judge"] = {"name": "token_sum"}
    cfg["pairing"], cfg["loss"], cfg["round"] = recipe["pairing"], recipe["loss"], recipe["round"]
    for key, value in changes.items():
        section, name = key.split(".")
        cfg.setdefault(section, {})[name] = value
    path = run_dir.with_suffix(".yaml")
    path.write_text(yaml.safe_dump(cfg))
    return path


def _rows(run: Path, name: str) -> list:
    return pq.read_table(run / "round-001" / name).to_pylist()


def test_a_refinement_killed_midway_resumes_to_the_identical_run(tiny_model_dir, tmp_path):
    clean, crash = tmp_path / "clean", tmp_path / "crash"
    code, _, err = cli("run", str(_evolve_config(tiny_model_dir, clean)))
    assert code == 0, err
    # the bar advances by each finished shard's 2 prompts: at 2 the first shard is written, the second is not
    code, _, err = cli("run", str(_evolve_config(tiny_model_dir, crash)), failpoints="progress:refining@2=kill")
    assert code == -signal.SIGKILL, err
    shards = crash / "round-001" / "refined_rollouts"
    assert (shards / "shard-00000.parquet").exists() and not (shards / "shard-00001.parquet").exists()
    assert not (crash / "round-001" / "refined_rollouts.parquet").exists()
    code, _, err = cli("resume", str(crash))
    assert code == 0, err
    names = ["refined_rollouts.parquet", "judgements_refine.parquet", "preferences.parquet", "ref_logps.parquet"]
    for name in names:
        assert _rows(crash, name) == _rows(clean, name), name
    assert any(x["parent"] is not None for x in _rows(clean, "refined_rollouts.parquet"))
    assert any(p["context"] for p in _rows(clean, "preferences.parquet"))
    logs = [(run / "round-001" / "train.jsonl").read_text().splitlines() for run in (clean, crash)]
    assert [json.loads(x)["loss"] for x in logs[0]] == [json.loads(x)["loss"] for x in logs[1]]
    for name in ("checkpoint/model.safetensors", "eval.json", "train.jsonl"):  # the same policy, byte for byte
        assert (crash / "round-001" / name).read_bytes() == (clean / "round-001" / name).read_bytes(), name
    assert not shards.exists()  # the shards are folded into the stage's file
    assert sorted(p.name for p in (crash / "round-001").iterdir()) == sorted(
        p.name for p in (clean / "round-001").iterdir()
    )


def test_failing_verdicts_stop_a_refinement_that_reads_them(tiny_model_dir, tmp_path):
    path = _evolve_config(tiny_model_dir, tmp_path / "run", **{"judge.max_failed_share": 0.01})
    cfg = yaml.safe_load(path.read_text())
    cfg["judge"]["name"] = "token_sum_failing"
    # the refinement asks the judge first: which answers are wrong, and its feedback on them
    cfg["round"]["stages"] = [
        "sample",
        {"stage": "refine", "which": "wrong", "feedback": True},
        "judge",
        "pair",
        "reference",
        "train",
    ]
    path.write_text(yaml.safe_dump(cfg))
    code, _, err = cli("run", str(path))
    assert code != 0 and "stage refine: refinement:" in err and "above judge.max_failed_share 0.01" in err, err
    assert not (tmp_path / "run" / "round-001" / "refined_rollouts" / "shard-00000.parquet").exists()


@pytest.mark.parametrize(
    "stage, message",
    [
        ({"stage": "refine", "which": "wrong"}, "reads each answer's verdict; judge 'pairwise_lm' compares"),
        ({"stage": "refine", "steps": 0}, "steps must be at least 1"),
        ({"stage": "refine", "which": "some"}, "which must be one of all, wrong"),
        ({"stage": "refine", "perspectives": {"calm": ""}}, "perspectives must map names to non-empty requests"),
    ],
)
def test_bad_refine_options_are_refused_before_the_run(stage, message, tiny_model_dir, tmp_path):
    path = _evolve_config(tiny_model_dir, tmp_path / "run")
    cfg = yaml.safe_load(path.read_text())
    cfg["round"]["stages"][2] = stage
    if stage.get("which") == "wrong":
        cfg["judge"] = {"name": "pairwise_lm", "path": tiny_model_dir}
    path.write_text(yaml.safe_dump(cfg))
    from iterpo.plan import build_plan

    with pytest.raises(ConfigError, match=message):
        build_plan(load_config(path))


def test_a_reviser_model_writes_the_revisions_in_the_policys_tokens(tiny_model_dir, tokenizer, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    from iterpo.models.chat import encode_prompt
    from iterpo.records import Rollout
    from iterpo.sampling import generate

    from helpers import run_config

    torch.manual_seed(1)  # the same architecture and tokenizer, other weights: another model
    reviser = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    for p in reviser.parameters():
        torch.nn.init.normal_(p, std=0.2)
    reviser_dir = tmp_path / "reviser"
    reviser.save_pretrained(reviser_dir)
    tokenizer.save_pretrained(reviser_dir)
    path = _evolve_config(tiny_model_dir, tmp_path / "run")
    cfg = yaml.safe_load(path.read_text())
    cfg["round"]["stages"][2] = {"stage": "refine", "reviser": str(reviser_dir)}
    path.write_text(yaml.safe_dump(cfg))
    _, store = run_config(load_config(path))
    rows = [Rollout(**x) for x in pq.read_table(store.path(1, "refined_rollouts.parquet")).to_pylist()]
    from iterpo.plan import build_plan

    prompts = {p.prompt_id: p for p in build_plan(load_config(path)).train_prompts}
    revised = [x for x in rows if x.parent is not None]
    assert revised
    for x in revised[:3]:  # generated again by the reviser alone, from its seed: the same revision
        request = encode_prompt(tokenizer, prompts[x.prompt_id].messages + x.context)
        [[(ids, why)]] = generate(reviser.eval(), tokenizer, [request], [[x.seed]], 1.0, 1.0, 6, 1)
        text = tokenizer.decode(ids, skip_special_tokens=True)
        want = tokenizer.encode(text, add_special_tokens=False) + ([tokenizer.eos_token_id] if why == "stop" else [])
        assert x.token_ids == want and x.text == tokenizer.decode(want, skip_special_tokens=True)
    cfg["round"]["stages"][2] = {"stage": "refine", "reviser": str(tmp_path / "nowhere")}
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(UserInputError, match="refine: reviser"):  # a missing model fails before the run
        build_plan(load_config(path))
