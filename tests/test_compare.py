"""`iterpo compare`: recipes on equal budgets over seeds, bootstrap intervals, resumable member runs."""

import json

import pytest
import yaml

from iterpo.compare import bootstrap_interval, plan_members, run_compare
from iterpo.errors import UserInputError

from helpers import cli, tiny_config


def test_bootstrap_interval():
    assert bootstrap_interval([0.5, 0.5, 0.5]) == (0.5, 0.5, 0.5)
    assert bootstrap_interval([0.3]) == (0.3, 0.3, 0.3)
    assert bootstrap_interval([]) == (None, None, None)
    mean, lo, hi = bootstrap_interval([0.0, 0.0, 1.0, 1.0])
    assert mean == 0.5 and 0.0 <= lo < 0.5 < hi <= 1.0
    assert bootstrap_interval([0.0, 0.0, 1.0, 1.0]) == (mean, lo, hi)  # a fixed resampling seed
    # wider data, wider interval
    narrow, wide = bootstrap_interval([0.4, 0.5, 0.6]), bootstrap_interval([0.0, 0.5, 1.0])
    assert wide[2] - wide[1] > narrow[2] - narrow[1]


def _configs(tmp_path, tiny_model_dir, **second):
    paths = []
    for name, loss in (("dpo_recipe", "dpo"), ("ipo_recipe", "ipo")):
        cfg = tiny_config(tiny_model_dir, tmp_path / "unused", **{"loss.name": loss, "run.rounds": 1})
        cfg["run"].pop("dir")
        if name == "ipo_recipe":
            for key, value in second.items():
                section, field = key.split(".")
                cfg[section][field] = value
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        paths.append(str(path))
    return paths


def test_unequal_budgets_are_refused_before_anything_runs(tmp_path, tiny_model_dir):
    paths = _configs(tmp_path, tiny_model_dir, **{"task.train_size": 6})
    with pytest.raises(UserInputError, match="differ in task"):
        plan_members(paths, 2, tmp_path / "cmp", [])
    paths = _configs(tmp_path, tiny_model_dir, **{"sampling.samples_per_prompt": 2})
    with pytest.raises(UserInputError, match="policy samples per round"):
        run_compare(paths, 2, tmp_path / "cmp", [], "test")
    assert not (tmp_path / "cmp").exists()
    with pytest.raises(UserInputError, match="--seeds"):
        plan_members(paths, 0, tmp_path / "cmp", [])


def test_compare_runs_every_member_and_resumes(tmp_path, tiny_model_dir):
    paths = _configs(tmp_path, tiny_model_dir)
    root = tmp_path / "cmp"
    summary = run_compare(paths, 2, root, [], "iterpo compare (test)")
    assert list(summary) == ["dpo_recipe", "ipo_recipe"]
    for name, entry in summary.items():
        assert entry["seeds"] == [0, 1]
        for r in (0, 1):
            scores = [
                json.loads((root / name / f"seed-{s}" / f"round-{r:03d}" / "eval.json").read_text())["accuracy"]
                for s in (0, 1)
            ]
            x = entry["rounds"][r]
            assert x["mean"] == pytest.approx(sum(scores) / 2) and x["low"] <= x["mean"] <= x["high"]
        assert entry["mean_seconds"] > 0 and entry["mean_tokens_per_round"] > 0
        configs = [yaml.safe_load((root / name / f"seed-{s}" / "config.yaml").read_text()) for s in (0, 1)]
        assert [c["run"]["seed"] for c in configs] == [0, 1]
    # the two recipes saw the same prompts and the same seeds: round 0 (the starting model) is identical
    assert summary["dpo_recipe"]["rounds"][0] == summary["ipo_recipe"]["rounds"][0]
    written = json.loads((root / "compare.json").read_text())
    assert written["recipes"]["dpo_recipe"]["rounds"] == summary["dpo_recipe"]["rounds"]
    page = (root / "compare.html").read_text()
    assert "dpo_recipe" in page and 'class="plot"' in page
    manifests = {p: p.read_text() for p in root.glob("*/seed-*/manifest.json")}
    again = run_compare(paths, 2, root, [], "iterpo compare (test)")  # finished members are not run again
    assert again == summary and {p: p.read_text() for p in manifests} == manifests


def test_compare_command(tmp_path, tiny_model_dir):
    paths = _configs(tmp_path, tiny_model_dir)
    code, out, err = cli("compare", *paths, "--seeds", "1", "--dir", str(tmp_path / "c"), "--set", "eval.every=1")
    assert code == 0, err
    assert "held-out score" in out and "dpo_recipe" in out and (tmp_path / "c" / "compare.html").exists()
