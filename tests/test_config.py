import pytest

from iterpo.config import dump_config, load_config
from iterpo.errors import ConfigError


def test_default_config_is_valid_and_resolved():
    cfg = load_config()
    assert cfg.run.dir == "runs/default"
    assert cfg.to_dict()["loss"] == {"name": "dpo", "beta": 0.1}
    assert "lr: 5.0e-06" in dump_config(cfg)


def test_overrides_are_typed_yaml(tmp_path):
    cfg = load_config(overrides=["train.lr=1e-5", "task.operations=['+', '*']", "loss.beta=0.5"])
    assert cfg.train.lr == 1e-5 and cfg.task.operations == ["+", "*"] and cfg.loss.hyperparams() == {"beta": 0.5}


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("train.lr=-1", "'train.lr'"),
        ("sampling.top_p=1.5", "'sampling.top_p'"),
        ("train.nonsense=1", "'train.nonsense': unknown field"),
        ("reference.policy=latest", "'reference.policy'"),
        ("loss.name=nope", "unknown loss 'nope'"),
        ("loss.gamma=1", "no hyperparameter 'gamma'"),
        ("task.name=file", "task.train_file"),
        ("lr", "expected section.field=value"),
    ],
)
def test_invalid_values_name_the_field(override, fragment):
    with pytest.raises(ConfigError) as info:
        load_config(overrides=[override])
    assert fragment in str(info.value)


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
    assert load_config(configs[0].parent / "default.yaml").fingerprint() == load_config().fingerprint()
