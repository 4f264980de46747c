"""Every registered loss trains one round of the real loop on the tiny model, and its loss falls.

Round 1 is sampled and judged once; each loss then gets its own run directory
holding copies of those rollouts and judgements, and the driver runs the rest
of the round (pair -> reference -> train -> eval) exactly as `iterpo run` would.
"""

import json

import pyarrow.parquet as pq
import pytest
import yaml

from iterpo import driver
from iterpo.config import load_config
from iterpo.losses import get_loss, list_losses
from iterpo.stages import RunContext

from helpers import tiny_config

# Losses whose defaults are sized for large models get test-sized targets.
HYPER = {
    "sppo": {"eta": 10.0},
    "inpo": {"eta": 4.0, "tau": 0.05},
    "xpo": {"alpha": 0.01},
    "vpo": {"alpha": 0.1},
    "hypo": {"kl_weight": 0.01},  # its default; its reported KL term (on the round's samples) may grow as it trains
    "rpo": {"sft_weight": 0.05},
}
# Losses that train on side targets get them from the pair stage (degrees work with any judge).
SETTINGS = {"rationale_dpo": {"pairing.degrees": 2}, "ssl_dpo": {"pairing.degrees": 2}}
VARIANTS = [(name, HYPER.get(name, {}), SETTINGS.get(name, {})) for name in list_losses()] + [
    ("sparsepo", {"mask": "learned"}, {}),
    ("inpo", {"eta": 4.0, "tau": 0.05}, {"reference.policy": "initial"}),  # reference and previous differ
    ("dpo", {}, {"model.lora": {"r": 4, "alpha": 8}, "reference.policy": "initial"}),
    ("sparsepo", {}, {"model.lora": {"r": 4, "alpha": 8}, "reference.policy": "initial"}),
    ("rloo", {"beta": 0.1}, {"reference.policy": "initial", "pairing.reward": "win_proportion"}),  # SPO's reward
    ("grpo", {}, {"model.lora": {"r": 4, "alpha": 8}}),  # the live sampling policy: a frozen copy, adapters on
]


def _config(model_dir, run_dir, **overrides):
    base = {
        "run.rounds": 1,
        "task.train_size": 12,
        "train.epochs": 4,
        "train.lr": 3e-3,
        "train.batch_size": 4,
        "sampling.samples_per_prompt": 6,
    }
    return tiny_config(model_dir, run_dir, **{**base, **overrides})


@pytest.fixture(scope="module")
def sampled_round(tiny_model_dir, tmp_path_factory):
    """Round 1's rollouts and judgements, made once."""
    root = tmp_path_factory.mktemp("sampled")
    path = root / "cfg.yaml"
    path.write_text(yaml.safe_dump(_config(tiny_model_dir, root / "run")))
    config = load_config(path)
    plan, store = driver.open_run(config)
    ctx = RunContext(plan, store)
    for kind in ("sample", "judge"):
        driver.run_stage(ctx, plan.stage_of_kind(kind), 1)
    store.close()
    return store.round_dir(1)


@pytest.mark.parametrize("name,hyper,overrides", VARIANTS, ids=lambda v: str(v) if isinstance(v, str) else "")
def test_loss_trains_a_round_and_falls(name, hyper, overrides, sampled_round, tiny_model_dir, tmp_path):
    cfg = _config(tiny_model_dir, tmp_path / "run", **{"loss.name": name, **overrides})
    cfg["loss"].update(hyper)
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    config = load_config(path)
    plan, store = driver.open_run(config)
    round_dir = store.round_dir(1)
    for f in ("rollouts.parquet", "judgements.parquet"):
        store.copy_in(sampled_round / f, round_dir / f)
    rows = driver.run(plan, store)
    store.close()

    loss = get_loss(name, **hyper)
    shape = pq.read_table(round_dir / "preferences.parquet").column_names
    want = {"pairs": "chosen", "unpaired": "label"}.get(loss.data_shape, "sample_idxs")
    assert want in shape
    # the reference stage runs exactly when the loss needs stored reference or previous-policy log-probs
    assert (round_dir / "ref_logps.parquet").exists() == bool(loss.needs & {"reference", "previous"})

    log = [json.loads(x) for x in (round_dir / "train.jsonl").read_text().splitlines()]
    epochs = sorted({x["epoch"] for x in log})
    mean = lambda e: (
        sum(x["loss"] * x["examples"] for x in log if x["epoch"] == e)
        / sum(x["examples"] for x in log if x["epoch"] == e)
    )
    first, last = mean(epochs[0]), mean(epochs[-1])
    assert last < first, f"{name}: mean loss went from {first:.4f} (first epoch) to {last:.4f} (last epoch)"
    assert rows[1]["accuracy"] is not None
    if name == "kto":
        assert all("z0" in x for x in log)
    if name == "sparsepo":
        assert all("mask_sparsity_u" in x for x in log)
