"""The config: sections, per-field rules, overrides and files (checks across sections are iterpo.plan's)."""

import pytest

from iterpo.config import Config, load_config
from iterpo.errors import ConfigError
from iterpo.plan import check_components, fingerprint, resolve


def test_default_config_is_valid_and_resolved():
    cfg = load_config()
    assert cfg.run.dir == "runs/default"
    resolved = resolve(cfg)
    assert resolved["loss"] == {"name": "dpo_nll", "beta": 0.1, "nll_weight": 3.0}
    assert resolved["judge"]["name"] == "exact_answer"
    assert resolved["train"]["lr"] == 2e-5 and resolved["train"]["round_lr_decay"] == 0.5 and "round" not in resolved


def test_overrides_are_typed_yaml(tmp_path):
    cfg = load_config(overrides=["train.lr=2e-5", "task.operations=['+', '*']", "loss.beta=0.5"])
    assert cfg.train.lr == 2e-5 and cfg.task.operations == ["+", "*"] and cfg.loss.hyperparams()["beta"] == 0.5


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("train.lr=-1", "'train.lr'"),
        ("sampling.top_p=1.5", "'sampling.top_p'"),
        ("train.nonsense=1", "'train.nonsense': unknown field"),
        ("reference.policy=latest", "'reference.policy'"),
        ("task.name=file", "task.train_file"),
        ("train.fsdp=true", "train.processes to 2 or more"),
        ("lr", "expected section.field=value"),
    ],
)
def test_invalid_values_name_the_field(override, fragment):
    with pytest.raises(ConfigError) as info:
        load_config(overrides=[override])
    assert fragment in str(info.value)


@pytest.mark.parametrize(
    "override, fragment", [("loss.name=nope", "unknown loss 'nope'"), ("loss.gamma=1", "no hyperparameter 'gamma'")]
)
def test_components_are_checked_by_the_plan(override, fragment):
    config = load_config(overrides=[override])  # the config module knows no loss
    with pytest.raises(ConfigError, match=fragment):
        check_components(config)


def test_config_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    good = tmp_path / "mine.yaml"
    good.write_text("train:\n  epochs: 3\n")
    cfg = load_config(good)
    assert cfg.train.epochs == 3 and cfg.run.dir == "runs/mine"


def test_shipped_configs_load():
    from pathlib import Path

    configs = sorted((Path(__file__).parent.parent / "configs").glob("*.yaml"))
    assert configs, "configs/ should ship at least the default"
    for path in configs:
        load_config(path)
    # the shipped default file is exactly the built-in default
    assert fingerprint(resolve(load_config(configs[0].parent / "default.yaml"))) == fingerprint(resolve(load_config()))


def test_the_built_in_default_takes_settings_and_another_loss_starts_from_its_own_hyperparameters():
    from iterpo.config import BUILT_IN

    cfg = load_config()
    assert cfg.loss.name == BUILT_IN["loss"]["name"] and cfg.loss.hyperparams() == {"nll_weight": 3.0}
    assert cfg.train.lr == BUILT_IN["train"]["lr"] and cfg.sampling.prompts_per_round == 128
    tweaked = load_config(overrides=["loss.beta=0.2"])  # the built-in loss, one hyperparameter changed
    assert tweaked.loss.name == "dpo_nll" and tweaked.loss.hyperparams() == {"nll_weight": 3.0, "beta": 0.2}
    other = load_config(overrides=["loss.name=ipo", "loss.beta=0.5"])  # no dpo_nll weight carried over
    assert other.loss.name == "ipo" and other.loss.hyperparams() == {"beta": 0.5}
    assert load_config().loss.hyperparams() == {"nll_weight": 3.0}  # BUILT_IN itself was not changed
    # a config file starts from the library's defaults, not the built-in default's settings
    assert Config().loss.name == "dpo" and Config().sampling.prompts_per_round is None
