"""reference.policy ema and extrapolated: the stored reference log-probs are the definitions', recomputed here
from the saved checkpoints, and a run killed in the middle resumes to the same files."""

import signal

import pyarrow.parquet as pq
import pytest
import torch
import yaml
from safetensors.torch import load_file

from iterpo import driver
from iterpo.config import load_config
from iterpo.errors import ConfigError
from iterpo.models.loading import load_model
from iterpo.plan import check_components, resolve
from iterpo.stages import RunContext
from iterpo.training import LiveReference

from helpers import cli, tiny_config


def _config(tiny_model_dir, run_dir, tmp_path, **overrides):
    cfg = tiny_config(tiny_model_dir, run_dir, **{"task.train_size": 6, **overrides})
    path = tmp_path / f"{run_dir.name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _run(tiny_model_dir, run_dir, tmp_path, **overrides):
    path = _config(tiny_model_dir, run_dir, tmp_path, **overrides)
    code, out, err = cli("run", str(path))
    assert code == 0, err
    return path


def _rescored(config_path, r, model_path):
    """Round r's stored reference log-probs, and the same responses scored, in the same order and batches,
    under the model saved at model_path."""
    plan, store = driver.open_run(load_config(config_path))
    try:
        ctx = RunContext(plan, store)
        rows = pq.read_table(store.path(r, "ref_logps.parquet")).to_pylist()
        rollouts = ctx.responses(r)
        prompt_ids = [ctx.prompt_ids_of(x["prompt_id"]) for x in rows]
        responses = [rollouts[(x["response_prompt_id"], x["source"], x["sample_idx"])].token_ids for x in rows]
        model = load_model(str(model_path))
        values = ctx.score(LiveReference(model), prompt_ids, responses, lambda n: None)
        return [x["ref_logp"] for x in rows], list(values)
    finally:
        store.close()


def test_extrapolated_reference_is_apos_combination_of_the_last_two_policies(tiny_model_dir, tmp_path):
    alpha = 0.5
    run = tmp_path / "apo"
    path = _run(
        tiny_model_dir, run, tmp_path, **{"run.rounds": 3, "reference.policy": "extrapolated", "reference.alpha": alpha}
    )
    stored, start = _rescored(path, 1, tiny_model_dir)
    assert stored == pytest.approx(start, abs=1e-6)  # round 1: the starting policy
    stored, now = _rescored(path, 3, run / "round-002" / "checkpoint")
    _, before = _rescored(path, 3, run / "round-001" / "checkpoint")
    want = [(1 + alpha) * a - alpha * b for a, b in zip(now, before)]
    assert stored == pytest.approx(want, abs=1e-5)
    assert max(abs(a - b) for a, b in zip(now, before)) > 1e-3  # the two policies differ: the test can fail


def test_ema_reference_averages_the_weights_and_resumes_after_a_kill(tiny_model_dir, tmp_path):
    decay = 0.5
    overrides = {"reference.policy": "ema", "reference.ema_decay": decay}
    clean = tmp_path / "clean"
    path = _run(tiny_model_dir, clean, tmp_path, **overrides)
    w0 = {k: v for k, v in load_model(tiny_model_dir).state_dict().items()}
    w1 = load_file(clean / "round-001" / "checkpoint" / "model.safetensors")
    w2 = load_file(clean / "round-002" / "checkpoint" / "model.safetensors")
    ema1 = load_file(clean / "round-001" / "reference-ema" / "model.safetensors")
    ema2 = load_file(clean / "round-002" / "reference-ema" / "model.safetensors")
    for k in ema1:
        assert torch.allclose(ema1[k], decay * w0[k] + (1 - decay) * w1[k], atol=1e-7), k
        assert torch.allclose(ema2[k], decay * ema1[k] + (1 - decay) * w2[k], atol=1e-7), k
    assert any(not torch.equal(ema1[k], w1[k]) for k in ema1)
    # round 2 is trained against the average after round 1
    stored, under_ema = _rescored(path, 2, clean / "round-001" / "reference-ema")
    assert stored == pytest.approx(under_ema, abs=1e-6)

    # killed right after round 1's average is saved, then resumed: the same files
    crash = tmp_path / "crash"
    path = _config(tiny_model_dir, crash, tmp_path, **overrides)
    code, _, err = cli("run", str(path), failpoints="written:round-001/reference-ema=kill")
    assert code == -signal.SIGKILL, err
    assert not (crash / "round-001" / "eval.json").exists()
    code, _, err = cli("resume", str(crash))
    assert code == 0, err
    for r in (1, 2):
        for name in ("ref_logps.parquet", "train.jsonl", "reference-ema/model.safetensors"):
            a, b = clean / f"round-{r:03d}" / name, crash / f"round-{r:03d}" / name
            assert a.read_bytes() == b.read_bytes(), name


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        (["reference.policy=ema", "model.lora={r: 4}"], "averages the policy's weights"),
        (["reference.policy=extrapolated", "loss.name=sparsepo"], "defined on whole responses"),
        (["reference.policy=ema", "loss.name=xpo"], "samples from the reference policy"),
        (["reference.policy=extrapolated", "loss.name=kto"], "known only up to a constant per prompt"),
        (["reference.policy=extrapolated", "loss.name=ipo", "loss.length_normalize=true"], "constant per prompt"),
    ],
)
def test_reference_policies_refuse_what_they_cannot_do(overrides, fragment):
    with pytest.raises(ConfigError, match=fragment):
        check_components(load_config(overrides=overrides))


def test_a_reference_policys_options_are_kept_only_where_it_is_chosen():
    default = resolve(load_config())
    assert set(default["reference"]) == {"policy"}  # the default run's config (and fingerprint) are as before
    assert resolve(load_config(overrides=["reference.policy=ema"]))["reference"] == {"policy": "ema", "ema_decay": 0.5}
    apo = resolve(load_config(overrides=["reference.policy=extrapolated", "reference.alpha=0.3"]))
    assert apo["reference"] == {"policy": "extrapolated", "alpha": 0.3}


def test_an_ema_reference_needs_its_stage_in_a_listed_round(tiny_model_dir, tmp_path):
    from iterpo.plan import build_plan

    path = _config(
        tiny_model_dir,
        tmp_path / "run",
        tmp_path,
        **{"reference.policy": "ema", "round.stages": ["sample", "judge", "pair", "reference", "train", "eval"]},
    )
    with pytest.raises(ConfigError, match="needs an 'ema' stage"):
        build_plan(load_config(path))
