"""The rationalize stage (STaR's rationalization) through the star recipe: which prompts get hinted responses,
that each is the hinted prompt's sample from its seed and is kept as an answer to the prompt alone, a
rationalization killed midway resuming to the identical run, and what it refuses."""

import json
import signal
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from iterpo.config import load_config
from iterpo.errors import ConfigError

from helpers import cli, recipe_config, run_config


def _star(tiny_model_dir, run_dir: Path, **changes) -> Path:
    """The star recipe on the tiny model, one round of 8 prompts in shards of 4, 2 samples each, so that with
    first_token_parity (even first token: right) about a quarter of the prompts have no right sample."""
    cfg = recipe_config("star", tiny_model_dir, run_dir)
    cfg["run"]["rounds"] = 1
    cfg["task"]["train_size"] = 8
    cfg["sampling"].update(samples_per_prompt=2, shard_size=4)
    cfg["judge"] = {"name": "first_token_parity"}
    for key, value in changes.items():
        section, name = key.split(".")
        cfg.setdefault(section, {})[name] = value
    path = run_dir.with_suffix(".yaml")
    path.write_text(yaml.safe_dump(cfg))
    return path


def _rows(run: Path, name: str) -> list:
    return pq.read_table(run / "round-001" / name).to_pylist()


def test_unsolved_prompts_get_the_hinted_policys_right_answers_as_answers_to_the_prompt_alone(
    tiny_model_dir, tokenizer, tmp_path
):
    from transformers import AutoModelForCausalLM

    from iterpo.models.chat import encode_prompt
    from iterpo.models.device import sampling_dtype
    from iterpo.plan import build_plan
    from iterpo.sampling import TransformersSampler, derive_seed

    path = _star(tiny_model_dir, tmp_path / "run", **{"run.seed": 1})
    _, store = run_config(load_config(path))
    sampled = _rows(tmp_path / "run", "rollouts.parquet")
    rows = _rows(tmp_path / "run", "rationalized_rollouts.parquet")
    assert [x for x in rows if x["source"] == "policy"] == sampled  # what it read, in order
    unsolved = {
        p
        for p in {x["prompt_id"] for x in sampled}
        if all(x["token_ids"][0] % 2 for x in sampled if x["prompt_id"] == p)
    }
    assert unsolved  # the seed gives prompts with no right sample: what the stage is for
    figures = store.manifest()["stages"]["round-001/rationalize"]
    assert figures["unsolved"] == len(unsolved) and figures["hinted"] == 4 * len(unsolved)
    kept = [x for x in rows if x["source"] == "rationalize"]
    assert kept and figures["kept"] == len(kept)
    assert {x["prompt_id"] for x in kept} <= unsolved  # solved prompts get no hint
    prompts = {p.prompt_id: p for p in build_plan(load_config(path)).train_prompts}
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    cfg = load_config(path)
    sampler = TransformersSampler(lambda: model, tokenizer, sampling_dtype(cfg.sampling.dtype, cfg.model.dtype, "cpu"))
    for x in kept:
        assert x["token_ids"][0] % 2 == 0 and x["context"] == [] and x["parent"] is None  # right, no hint in it
        k = x["sample_idx"] - 2  # after the prompt's 2 samples
        assert x["seed"] == derive_seed(1, 1, "rationalize", x["prompt_id"], k)
        p = prompts[x["prompt_id"]]
        hinted = [{**p.messages[-1], "content": p.messages[-1]["content"] + f"\n(Hint: the answer is {p.answer}.)"}]
        ids = encode_prompt(tokenizer, p.messages[:-1] + hinted)
        [[(again, _)]] = sampler.generate([ids], [[x["seed"]]], 1.0, 1.0, cfg.sampling.max_new_tokens, 1)
        assert again == x["token_ids"]  # the hinted prompt's sample from that seed, alone in its batch
    # judged with the rest, imitated by the SFT (a demonstration group naming a rationalized response)
    judged = {(j["prompt_id"], j["sample_idx"]) for j in _rows(tmp_path / "run", "judgements.parquet")}
    assert {(x["prompt_id"], x["sample_idx"]) for x in kept} <= judged
    # the round table's mean reward: of the sampled responses, not raised by the kept (right) hinted ones
    from iterpo.summary import round_summary

    sampled_mean = sum(x["token_ids"][0] % 2 == 0 for x in sampled) / len(sampled)
    assert round_summary(store, 1)["mean_reward"] == pytest.approx(sampled_mean)
    groups = _rows(tmp_path / "run", "preferences.parquet")
    assert any(g["prompt_id"] in unsolved for g in groups)
    for g in groups:
        if g["prompt_id"] in unsolved:
            assert set(g["sample_idxs"]) <= {x["sample_idx"] for x in kept if x["prompt_id"] == g["prompt_id"]}


def test_a_rationalization_killed_midway_resumes_to_the_identical_run(tiny_model_dir, tmp_path):
    clean, crash = tmp_path / "clean", tmp_path / "crash"
    code, _, err = cli("run", str(_star(tiny_model_dir, clean, **{"run.seed": 1})))
    assert code == 0, err
    # the bar advances by each finished shard's 4 prompts: at 4 the first shard is written, the second is not
    code, _, err = cli(
        "run", str(_star(tiny_model_dir, crash, **{"run.seed": 1})), failpoints="progress:rationalizing@4=kill"
    )
    assert code == -signal.SIGKILL, err
    shards = crash / "round-001" / "rationalized_rollouts"
    assert (shards / "shard-00000.parquet").exists() and not (shards / "shard-00001.parquet").exists()
    code, _, err = cli("resume", str(crash))
    assert code == 0, err
    for name in ("rationalized_rollouts.parquet", "judgements.parquet", "preferences.parquet"):
        assert _rows(crash, name) == _rows(clean, name), name
    figures = [
        {
            k: v
            for k, v in json.loads((run / "manifest.json").read_text())["stages"]["round-001/rationalize"].items()
            if k in ("unsolved", "hinted", "kept", "prompts_kept")
        }
        for run in (clean, crash)
    ]
    assert figures[0] == figures[1] and figures[0]["unsolved"] > 0  # the whole round's, also after the resume
    for name in ("checkpoint/model.safetensors", "eval.json", "train.jsonl"):  # the same policy, byte for byte
        assert (crash / "round-001" / name).read_bytes() == (clean / "round-001" / name).read_bytes(), name
    assert not shards.exists()


@pytest.mark.parametrize(
    "stage, message",
    [
        ({"stage": "rationalize", "samples": 0}, "samples must be at least 1"),
        ({"stage": "rationalize", "hint": " (Hint: look again.)"}, "hint must contain {answer}"),
        ({"stage": "rationalize", "hint": " {answer} {other}"}, "write {answer} where the answer goes"),
        ({"stage": "rationalize", "hint": " {{answer}}"}, "hint must contain {answer}"),
        ({"stage": "rationalize", "hint": " {answer.real}"}, "write {answer} where the answer goes"),
        ({"stage": "rationalize"}, "reads each response's verdict; judge 'pairwise_lm' compares"),
    ],
)
def test_bad_rationalize_options_are_refused_before_the_run(stage, message, tiny_model_dir, tmp_path):
    from iterpo.plan import build_plan

    path = _star(tiny_model_dir, tmp_path / "run")
    cfg = yaml.safe_load(path.read_text())
    cfg["round"]["stages"][1] = stage
    if stage == {"stage": "rationalize"}:
        cfg["judge"] = {"name": "pairwise_lm", "path": tiny_model_dir}
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(ConfigError, match=message.replace("{", r"\{").replace("}", r"\}")):
        build_plan(load_config(path))


def test_a_task_without_reference_answers_is_refused_before_the_run(tiny_model_dir, tmp_path):
    from iterpo.plan import build_plan

    train, held_out = tmp_path / "train.jsonl", tmp_path / "eval.jsonl"
    train.write_text("".join(f'{{"prompt": "Say something about {k}."}}\n' for k in range(8)))  # no answers
    held_out.write_text("".join(f'{{"prompt": "What is {k} + 1?", "answer": "{k + 1}"}}\n' for k in range(3)))
    path = _star(
        tiny_model_dir,
        tmp_path / "run",
        **{"task.name": "file", "task.train_file": str(train), "task.eval_file": str(held_out)},
    )
    with pytest.raises(ConfigError, match="no training prompt of task 'file' has one"):
        build_plan(load_config(path))


def test_a_round_whose_prompts_have_no_answers_stops_with_a_clear_error_and_keeps_its_samples(tiny_model_dir, tmp_path):
    """The run-time backstop behind the plan's check: the plan passes (some training prompts have answers), but
    round 1 draws only prompts without one (as a round of proposed problems could): the stage stops, naming the
    round and the task, writes nothing, and the round's samples stay on disk, intact, for a resume."""
    from iterpo.errors import DataError

    train, held_out = tmp_path / "train.jsonl", tmp_path / "eval.jsonl"
    lines = [f'{{"prompt": "Say something about {k}."}}\n' for k in range(4)]  # round 1: no answers
    lines += [f'{{"prompt": "What is {k} + 2?", "answer": "{k + 2}"}}\n' for k in range(4)]
    train.write_text("".join(lines))
    held_out.write_text("".join(f'{{"prompt": "What is {k} + 1?", "answer": "{k + 1}"}}\n' for k in range(3)))
    path = _star(
        tiny_model_dir,
        tmp_path / "run",
        **{
            "task.name": "file",
            "task.train_file": str(train),
            "task.eval_file": str(held_out),
            "sampling.prompts_per_round": 4,
        },
    )
    with pytest.raises(DataError, match="no prompt of round 1 has one \\(task 'file'\\)"):
        run_config(load_config(path))
    round_dir = tmp_path / "run" / "round-001"
    assert not (round_dir / "rationalized_rollouts.parquet").exists()
    sampled = _rows(tmp_path / "run", "rollouts.parquet")  # reads (and so checks) the whole file
    assert len(sampled) == 4 * 2 and len({x["prompt_id"] for x in sampled}) == 4
    assert all(x["source"] == "policy" for x in sampled)
