"""Writing your own stage: a plugin module registers one, a recipe lists it, and it runs and resumes like the
built-in ones."""

import json

import yaml

from helpers import cli, tiny_config


def _recipe(tiny_model_dir, run_dir, tmp_path):
    cfg = tiny_config(tiny_model_dir, run_dir, **{"task.train_size": 8, "sampling.shard_size": 2})
    cfg["round"] = {
        "stages": ["sample", {"stage": "word_counts", "min_words": 1}, "judge", "pair", "reference", "train", "eval"]
    }
    path = tmp_path / f"{run_dir.name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_a_plugin_stage_runs_inside_a_round_and_resumes(tiny_model_dir, tmp_path):
    clean = tmp_path / "clean"
    code, out, err = cli("run", str(_recipe(tiny_model_dir, clean, tmp_path)), plugins="toy_judges,plugin_stage")
    assert code == 0, err
    counts = json.loads((clean / "round-001" / "word_counts.json").read_text())
    assert counts and all(all(n >= 1 for n in ns) for ns in counts.values())
    manifest = json.loads((clean / "manifest.json").read_text())
    info = manifest["stages"]["round-002/word_counts"]
    assert info["source_file"] == "rollouts.parquet" and info["responses"] == sum(map(len, counts.values()))
    assert "round-001/word_counts.json" in manifest["files"]  # written through the store, with its checksum

    # killed in the middle of the plugin's stage, then resumed: the same files as the uninterrupted run
    crashed = tmp_path / "crashed"
    code, out, err = cli(
        "run",
        str(_recipe(tiny_model_dir, crashed, tmp_path)),
        failpoints="progress:counting words@3=kill",
        plugins="toy_judges,plugin_stage",
    )
    assert code == -9 and not (crashed / "round-001" / "word_counts.json").exists()
    code, out, err = cli("resume", str(crashed), plugins="toy_judges,plugin_stage")
    assert code == 0, err
    for name in (
        "round-001/word_counts.json",
        "round-002/word_counts.json",
        "round-002/eval.json",
        "round-002/train.jsonl",
    ):
        assert (crashed / name).read_bytes() == (clean / name).read_bytes(), name


def test_without_the_plugin_the_recipe_names_the_unknown_stage(tiny_model_dir, tmp_path):
    code, out, err = cli("run", str(_recipe(tiny_model_dir, tmp_path / "run", tmp_path)))
    assert code == 2 and "unknown stage 'word_counts'" in err and "known:" in err
    assert not (tmp_path / "run").exists()
