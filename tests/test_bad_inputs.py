"""Bad input of every kind gets exit code 2 and a one-paragraph message naming what is wrong, never a traceback,
and leaves an existing run directory byte-identical.

Each case is (id, argv, words the message must contain). ``{name}`` in an argv
or a word is filled from the prepared world: an existing finished run, the
tiny model, and a set of broken files.
"""

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from iterpo.cli import main

from helpers import REPO, run_config, tiny_config


@pytest.fixture(scope="module")
def world(tiny_model_dir, tmp_path_factory):
    """Everything the cases point at: an existing finished run and a set of broken files."""
    from iterpo.config import load_config

    tmp = tmp_path_factory.mktemp("bad-inputs")
    w = SimpleNamespace(tmp=tmp, model=tiny_model_dir, run=tmp / "run")
    good = tiny_config(tiny_model_dir, w.run, **{"run.rounds": 1, "task.train_size": 4})
    w.config = tmp / "good.yaml"
    w.config.write_text(yaml.safe_dump(good))
    run_config(load_config(w.config))

    def write(name: str, content) -> str:
        path = tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        return str(path)

    def config_with(name: str, **sections) -> str:
        cfg = yaml.safe_load(w.config.read_text())
        for key, value in sections.items():
            cfg[key] = value
        return write(name, yaml.safe_dump(cfg))

    # config files
    w.latin1 = write("latin1.yaml", "run:\n  seed: 1  # caf\xe9\n".encode("latin-1"))
    w.bad_yaml = write("bad.yaml", "run: {seed: 1\nsampling: [\n")
    w.list_yaml = write("list.yaml", "- run\n- model\n")
    w.scalar_yaml = write("scalar.yaml", "just text\n")
    w.deep_yaml = write("deep.yaml", "run: " + "[" * 100000 + "]" * 100000 + "\n")
    w.unknown_section = write("unknown_section.yaml", "runn: {seed: 1}\n")
    w.section_not_mapping = write("section_int.yaml", "train: 5\n")
    # model directories and files
    w.no_config_dir = str(tmp / "empty-model")
    Path(w.no_config_dir).mkdir()
    w.bad_json_model = write("bad-json-model/config.json", "{not json")
    w.list_json_model = write("list-json-model/config.json", "[1, 2]")
    w.no_weights = write("no-weights/config.json", (Path(tiny_model_dir) / "config.json").read_text())
    w.bad_weights = write("bad-weights/config.json", (Path(tiny_model_dir) / "config.json").read_text())
    write("bad-weights/model.safetensors", os.urandom(4096))
    w.fake_gguf = write("fake.gguf", "this is not a GGUF file\n")
    w.plain_file = write("weights.bin", b"\0" * 64)
    # prompt files
    w.prompts_latin1 = write("p-latin1.jsonl", json.dumps({"prompt": "x", "answer": "1"}).encode() + b"\n\xff\xfe\n")
    w.prompts_bad_json = write("p-bad.jsonl", json.dumps({"prompt": "1+1?", "answer": "2"}) + "\n{oops\n")
    w.prompts_list_row = write("p-list.jsonl", "[1, 2]\n")
    w.prompts_no_prompt = write("p-noprompt.jsonl", json.dumps({"question": "1+1?", "answer": "2"}) + "\n")
    w.prompts_number = write("p-number.jsonl", json.dumps({"prompt": 42, "answer": "2"}) + "\n")
    w.prompts_bad_messages = write("p-messages.jsonl", json.dumps({"messages": [{"content": "hi"}]}) + "\n")
    w.prompts_empty = write("p-empty.jsonl", "")
    w.prompts_blank = write("p-blank.jsonl", "\n\n   \n")
    w.prompts_dup_ids = write(
        "p-dup.jsonl",
        "".join(json.dumps({"id": "a", "prompt": f"{i}+1?", "answer": str(i + 1)}) + "\n" for i in range(3)),
    )
    w.prompts_huge = write(
        "p-huge.jsonl", json.dumps({"prompt": "1+1?", "answer": "2"}) + "\n" + "x" * 5_000_000 + "\n"
    )
    w.prompts_dict_answer = write("p-answer.jsonl", json.dumps({"prompt": "1+1?", "answer": {"value": 2}}) + "\n")
    w.prompts_list_id = write("p-id.jsonl", json.dumps({"id": [1], "prompt": "1+1?", "answer": "2"}) + "\n")
    w.prompts_no_answer = write("p-noanswer.jsonl", json.dumps({"prompt": "1+1?"}) + "\n")
    w.prompts_corrupt_parquet = write("p-corrupt.parquet", b"PAR1" + os.urandom(200))
    w.prompts_parquet_columns = str(tmp / "p-columns.parquet")
    pq.write_table(pa.table({"question": ["1+1?"], "answer": ["2"]}), w.prompts_parquet_columns)
    w.prompts_good = write("p-good.jsonl", json.dumps({"prompt": "1+1?", "answer": "2"}) + "\n")
    w.prompts_dir = str(tmp)
    # preference files (iterpo train)
    row = {"prompt": "1+1?", "chosen": "2", "rejected": "3"}
    w.prefs_good = write("prefs.jsonl", json.dumps(row) + "\n")
    w.prefs_latin1 = write("prefs-latin1.jsonl", b"\xff\xfe" + json.dumps(row).encode() + b"\n")
    w.prefs_object = write("prefs-object.json", json.dumps(row))
    w.prefs_bad_line = write("prefs-bad.jsonl", json.dumps(row) + "\n{\n")
    w.prefs_missing = write("prefs-missing.jsonl", json.dumps({"prompt": "1+1?", "chosen": "2"}) + "\n")
    w.prefs_empty_chosen = write("prefs-empty.jsonl", json.dumps({**row, "chosen": ""}) + "\n")
    w.prefs_label = write("prefs-label.jsonl", json.dumps({**row, "soft_label": 2}) + "\n")
    w.prefs_mixed = write(
        "prefs-mixed.jsonl", json.dumps({**row, "prompt": [{"role": "user", "content": "1+1?"}]}) + "\n"
    )
    w.prefs_corrupt_parquet = write("prefs.parquet", os.urandom(300))
    w.prefs_none = write("prefs-none.jsonl", "\n")
    w.out_file = write("an-output-file", "x")
    w.out_with_ckpt = str(tmp / "trained")
    (tmp / "trained" / "checkpoint").mkdir(parents=True)
    # run directories in odd states
    w.not_a_run = str(tmp / "not-a-run")
    Path(w.not_a_run).mkdir()
    (Path(w.not_a_run) / "notes.txt").write_text("mine")
    for name, manifest, config_text in [
        ("run-bad-manifest", '{"stages": {', None),
        ("run-list-manifest", "[]", None),
        ("run-bad-files", json.dumps({"format": 2, "stages": {}, "files": {"x": "y"}}), None),
        ("run-old-format", json.dumps({"stages": {}}), None),
        ("run-bad-config", None, "run: [\n"),
        ("run-unknown-field", None, "train:\n  lrr: 1\n"),
        ("run-latin1-config", None, "run:\n  seed: 1 # \xe9\n"),
    ]:
        d = tmp / name
        d.mkdir()
        (d / "manifest.json").write_text(manifest or json.dumps({"format": 2, "stages": {}, "files": {}}))
        if config_text is None:
            (d / "config.yaml").write_text(w.config.read_text())
        else:
            (d / "config.yaml").write_bytes(config_text.encode("latin-1"))
        setattr(w, name.replace("-", "_"), str(d))
    # games
    w.game_not_square = write("game.csv", "0.5,0.5,0.5\n0.5,0.5,0.5\n")
    w.game_corrupt_npy = write("game.npy", os.urandom(100))
    w.game_text = write("game.txt", "a b\nc d\n")
    # plugins
    write("plugins/broken_plugin.py", "def oops(:\n")
    write("plugins/raising_plugin.py", "raise RuntimeError('plugin setup failed')\n")
    w.plugins = str(tmp / "plugins")
    # model-related configs
    w.lora_bad_targets = config_with(
        "lora.yaml", model={"path": tiny_model_dir, "lora": {"target_modules": ["nope_proj"]}}
    )
    w.rm_missing = config_with("rm.yaml", judge={"name": "reward_model", "path": str(tmp / "no-rm")})
    w.rm_not_model = config_with("rm2.yaml", judge={"name": "reward_model", "path": w.not_a_run})
    w.plm_missing = config_with("plm.yaml", judge={"name": "pairwise_lm", "path": str(tmp / "no-lm")})
    return w


def _fill(value, w):
    return value.format(**vars(w)) if isinstance(value, str) else value


RUN = ["run", "{config}"]
SET = ["--set"]
CASES = [
    # ---- config files
    ("config missing", ["run", "{tmp}/nope.yaml"], ["config file", "nope.yaml", "does not exist"]),
    ("config is a directory", ["run", "{tmp}"], ["config file", "is not a file"]),
    ("config not utf-8", ["run", "{latin1}"], ["latin1.yaml", "not UTF-8"]),
    ("config not yaml", ["run", "{bad_yaml}"], ["bad.yaml", "not valid YAML"]),
    ("config is a list", ["run", "{list_yaml}"], ["list.yaml", "mapping of sections"]),
    ("config is a scalar", ["run", "{scalar_yaml}"], ["scalar.yaml", "mapping of sections"]),
    ("config nested too deep", ["run", "{deep_yaml}"], ["deep.yaml", "nested too deeply"]),
    ("unknown section", ["run", "{unknown_section}"], ["runn", "unknown field"]),
    ("section not a mapping", ["run", "{section_not_mapping}"], ["train"]),
    # ---- field values, from --set on the good config (its run.dir is the existing run)
    ("unknown field", RUN + SET + ["sampling.temprature=0.7"], ["sampling.temprature", "unknown field"]),
    ("wrong type", RUN + SET + ["train.lr=fast"], ["train.lr", "fast"]),
    ("zero rounds", RUN + SET + ["run.rounds=0"], ["run.rounds"]),
    (
        "learning rate growing by round",
        RUN + SET + ["train.round_lr_decay=2"],
        ["round_lr_decay", "less than or equal to 1"],
    ),
    ("learning rate gone after round 1", RUN + SET + ["train.round_lr_decay=0"], ["round_lr_decay", "greater than 0"]),
    ("half-precision first moment", RUN + SET + ["train.first_moment=float16"], ["first_moment", "bfloat16"]),
    ("infinite seed", RUN + SET + ["run.seed=.inf"], ["run.seed"]),
    ("unknown loss", RUN + SET + ["loss.name=dpoo"], ["unknown loss 'dpoo'", "known:"]),
    ("unknown loss option", RUN + SET + ["loss.betta=1"], ["dpo", "betta"]),
    ("bad loss value", RUN + SET + ["loss.beta=-1"], ["beta"]),
    ("unknown judge", RUN + SET + ["judge.name=oracle"], ["unknown judge 'oracle'"]),
    ("unknown judge option", RUN + SET + ["judge.temperature=1"], ["first_token_parity", "temperature"]),
    (
        "bad judge url",
        RUN + SET + ["judge.name=pairwise_http", "--set", "judge.base_url=localhost:8000", "--set", "judge.model=m"],
        ["base_url", "localhost:8000"],
    ),
    ("eval judge not a verifier", RUN + SET + ["eval.judge=pairwise_lm"], ["eval.judge", "not a verifier"]),
    ("unknown pairing", RUN + SET + ["pairing.strategy=bestest"], ["unknown pairing", "bestest"]),
    (
        "pairing for another data shape",
        RUN + SET + ["loss.name=kto", "--set", "pairing.strategy=best_vs_worst"],
        ["best_vs_worst"],
    ),
    ("unknown task", RUN + SET + ["task.name=chess"], ["unknown task 'chess'"]),
    ("file task without file", RUN + SET + ["task.name=file"], ["task.train_file"]),
    ("no operations", RUN + SET + ["task.operations=[]"], ["task.operations"]),
    ("too many digits", RUN + SET + ["task.digits=9"], ["task.digits"]),
    ("unknown dtype", RUN + SET + ["model.dtype=float16"], ["model.dtype"]),
    ("top_p above 1", RUN + SET + ["sampling.top_p=2"], ["sampling.top_p"]),
    ("unknown reference", RUN + SET + ["reference.policy=sometimes"], ["reference.policy"]),
    (
        "xpo with initial reference",
        RUN + SET + ["loss.name=xpo", "--set", "reference.policy=initial"],
        ["xpo", "reference.policy: previous"],
    ),
    ("failed share above 1", RUN + SET + ["judge.max_failed_share=2"], ["judge.max_failed_share"]),
    ("lora rank 0", RUN + SET + ["model.lora={{r: 0}}"], ["model.lora.r"]),
    ("lora modules that do not exist", ["run", "{lora_bad_targets}"], ["model.lora.target_modules", "nope_proj"]),
    # ---- --set syntax
    ("set without =", RUN + SET + ["train.lr"], ["--set", "section.field=value"]),
    ("set value not yaml", RUN + SET + ["train.lr=[1"], ["--set", "not valid YAML"]),
    ("set into a value", RUN + SET + ["train.lr.x=1"], ["--set", "'lr' is not a section"]),
    ("set empty key", RUN + SET + ["=1"], ["--set", "'=1'"]),
    # ---- run directories
    ("run.dir is a file", RUN + SET + ["run.dir={out_file}"], ["run.dir", "an-output-file", "not a directory"]),
    ("run.dir holds other files", RUN + SET + ["run.dir={not_a_run}"], ["run.dir", "not an iterpo run directory"]),
    ("run.dir made with another config", RUN + SET + ["train.lr=0.5"], ["different config", "--force"]),
    ("resume with a changed config", ["resume", "{run}", "--set", "train.lr=0.5"], ["different config"]),
    ("resume a missing directory", ["resume", "{tmp}/gone"], ["gone", "not an iterpo run directory"]),
    ("resume a file", ["resume", "{out_file}"], ["an-output-file", "not an iterpo run directory (not a directory)"]),
    ("resume a plain directory", ["resume", "{not_a_run}"], ["not an iterpo run directory"]),
    ("resume damaged manifest", ["resume", "{run_bad_manifest}"], ["manifest.json", "not valid JSON"]),
    ("resume manifest not an object", ["resume", "{run_list_manifest}"], ["manifest.json", "damaged"]),
    ("resume manifest with bad entries", ["resume", "{run_bad_files}"], ["manifest.json", "damaged"]),
    (
        "resume a run of an earlier format",
        ["resume", "{run_old_format}"],
        ["run-old-format", "earlier iterpo", "format 1"],
    ),
    ("resume config not yaml", ["resume", "{run_bad_config}"], ["config.yaml", "not valid YAML"]),
    ("resume config unknown field", ["resume", "{run_unknown_field}"], ["train.lrr", "unknown field"]),
    ("resume config not utf-8", ["resume", "{run_latin1_config}"], ["config.yaml", "not UTF-8"]),
    ("resume bad --set", ["resume", "{run}", "--set", "train.epochs=-1"], ["train.epochs"]),
    ("status of a missing directory", ["status", "{tmp}/gone"], ["not an iterpo run directory"]),
    ("status damaged manifest", ["status", "{run_bad_manifest}"], ["manifest.json", "not valid JSON"]),
    ("status config not yaml", ["status", "{run_bad_config}"], ["config.yaml", "not valid YAML"]),
    # ---- model paths
    ("model path missing", RUN + SET + ["model.path={tmp}/no-model"], ["model.path", "no-model"]),
    ("model dir without config.json", RUN + SET + ["model.path={no_config_dir}"], ["model.path", "no config.json"]),
    ("model config.json not json", RUN + SET + ["model.path={tmp}/bad-json-model"], ["config.json", "not valid JSON"]),
    (
        "model config.json not an object",
        RUN + SET + ["model.path={tmp}/list-json-model"],
        ["config.json", "JSON object"],
    ),
    ("model without weights", RUN + SET + ["model.path={tmp}/no-weights"], ["no-weights", "no model weights"]),
    ("model weights corrupt", RUN + SET + ["model.path={tmp}/bad-weights"], ["model.safetensors", "cannot be read"]),
    ("gguf that is not gguf", RUN + SET + ["model.path={fake_gguf}"], ["fake.gguf", "not a GGUF file"]),
    ("model path is a plain file", RUN + SET + ["model.path={plain_file}"], ["weights.bin", "neither a .gguf"]),
    ("model path empty", RUN + SET + ["model.path=''"], ["model.path"]),
    ("reward model missing", ["run", "{rm_missing}"], ["reward_model", "no-rm"]),
    ("reward model not a model", ["run", "{rm_not_model}"], ["reward_model", "not-a-run"]),
    ("pairwise lm missing", ["run", "{plm_missing}"], ["pairwise_lm", "no-lm"]),
    # ---- prompt files
    (
        "prompt file missing",
        RUN + SET + ["task.name=file", "--set", "task.train_file={tmp}/none.jsonl"],
        ["none.jsonl", "does not exist"],
    ),
    (
        "prompt file is a directory",
        RUN + SET + ["task.name=file", "--set", "task.train_file={prompts_dir}"],
        ["is a directory"],
    ),
    (
        "prompt file not utf-8",
        RUN + SET + ["task.name=file", "--set", "task.train_file={prompts_latin1}"],
        ["p-latin1.jsonl", "line 2"],
    ),
    (
        "prompt file bad json",
        RUN + SET + ["task.name=file", "--set", "task.train_file={prompts_bad_json}"],
        ["p-bad.jsonl", "line 2", "not valid JSON"],
    ),
    (
        "prompt row a list",
        RUN + SET + ["task.name=file", "--set", "task.train_file={prompts_list_row}"],
        ["p-list.jsonl", "line 1", "expected an object"],
    ),
    (
        "prompt row without prompt",
        RUN + SET + ["task.name=file", "--set", "task.train_file={prompts_no_prompt}"],
        ["p-noprompt.jsonl", "line 1", "'prompt'"],
    ),
    (
        "prompt a number",
        RUN + SET + ["task.name=file", "--set", "task.train_file={prompts_number}"],
        ["p-number.jsonl", "line 1", "'prompt'"],
    ),
    (
        "messages malformed",
        RUN + SET + ["task.name=file", "--set", "task.train_file={prompts_bad_messages}"],
        ["p-messages.jsonl", "'messages'"],
    ),
    (
        "prompt file empty",
        RUN + SET + ["task.name=file", "--set", "task.train_file={prompts_empty}"],
        ["p-empty.jsonl", "no prompts"],
    ),
    (
        "prompt file blank lines",
        RUN + SET + ["task.name=file", "--set", "task.train_file={prompts_blank}"],
        ["p-blank.jsonl", "no prompts"],
    ),
    (
        "prompt ids repeated",
        RUN + SET + ["task.name=file", "--set", "task.train_file={prompts_dup_ids}"],
        ["p-dup.jsonl", "repeats", "'a'"],
    ),
    (
        "prompt file huge bad line",
        RUN + SET + ["task.name=file", "--set", "task.train_file={prompts_huge}"],
        ["p-huge.jsonl", "line 2"],
    ),
    (
        "prompt answer an object",
        RUN + SET + ["task.name=file", "--set", "task.train_file={prompts_dict_answer}"],
        ["p-answer.jsonl", "line 1", "'answer'"],
    ),
    (
        "prompt id a list",
        RUN + SET + ["task.name=file", "--set", "task.train_file={prompts_list_id}"],
        ["p-id.jsonl", "line 1", "'id'"],
    ),
    (
        "verifier without answers",
        RUN
        + SET
        + ["task.name=file", "--set", "task.train_file={prompts_no_answer}", "--set", "judge.name=exact_answer"],
        ["p-noanswer.jsonl", "answer", "exact_answer"],
    ),
    (
        "prompt parquet corrupt",
        RUN + SET + ["task.name=file", "--set", "task.train_file={prompts_corrupt_parquet}"],
        ["p-corrupt.parquet", "parquet"],
    ),
    (
        "prompt parquet without columns",
        RUN + SET + ["task.name=file", "--set", "task.train_file={prompts_parquet_columns}"],
        ["p-columns.parquet", "row 0", "'prompt'"],
    ),
    (
        "eval file malformed",
        RUN
        + SET
        + ["task.name=file", "--set", "task.train_file={prompts_good}", "--set", "task.eval_file={prompts_bad_json}"],
        ["p-bad.jsonl", "line 2"],
    ),
    # ---- iterpo train
    (
        "train preferences missing",
        ["train", "--preferences", "{tmp}/no.jsonl", "--model", "{model}"],
        ["--preferences", "no.jsonl", "does not exist"],
    ),
    (
        "train preferences not utf-8",
        ["train", "--preferences", "{prefs_latin1}", "--model", "{model}"],
        ["prefs-latin1.jsonl", "not"],
    ),
    (
        "train json not a list",
        ["train", "--preferences", "{prefs_object}", "--model", "{model}"],
        ["prefs-object.json", "no preference rows"],
    ),
    (
        "train bad line",
        ["train", "--preferences", "{prefs_bad_line}", "--model", "{model}"],
        ["prefs-bad.jsonl", "line 2"],
    ),
    (
        "train row missing rejected",
        ["train", "--preferences", "{prefs_missing}", "--model", "{model}"],
        ["row 1", "missing rejected"],
    ),
    (
        "train empty chosen",
        ["train", "--preferences", "{prefs_empty_chosen}", "--model", "{model}"],
        ["row 1", "chosen", "non-empty"],
    ),
    (
        "train soft label out of range",
        ["train", "--preferences", "{prefs_label}", "--model", "{model}"],
        ["row 1", "soft_label"],
    ),
    (
        "train mixed chat and text",
        ["train", "--preferences", "{prefs_mixed}", "--model", "{model}"],
        ["row 1", "chosen"],
    ),
    (
        "train corrupt parquet",
        ["train", "--preferences", "{prefs_corrupt_parquet}", "--model", "{model}"],
        ["prefs.parquet"],
    ),
    ("train no rows", ["train", "--preferences", "{prefs_none}", "--model", "{model}"], ["no preference rows"]),
    (
        "train unknown loss",
        ["train", "--preferences", "{prefs_good}", "--model", "{model}", "--loss", "dpoo"],
        ["unknown loss 'dpoo'"],
    ),
    (
        "train loss for another data shape",
        ["train", "--preferences", "{prefs_good}", "--model", "{model}", "--loss", "kto"],
        ["kto"],
    ),
    (
        "train loss needing soft labels",
        ["train", "--preferences", "{prefs_good}", "--model", "{model}", "--loss", "irepo"],
        ["irepo", "soft"],
    ),
    (
        "train model missing",
        ["train", "--preferences", "{prefs_good}", "--model", "{tmp}/no-model"],
        ["model.path", "no-model"],
    ),
    (
        "train output is a file",
        ["train", "--preferences", "{prefs_good}", "--model", "{model}", "--output", "{out_file}"],
        ["--output", "an-output-file"],
    ),
    (
        "train output has a checkpoint",
        ["train", "--preferences", "{prefs_good}", "--model", "{model}", "--output", "{out_with_ckpt}"],
        ["--output", "--force"],
    ),
    (
        "train bad set",
        ["train", "--preferences", "{prefs_good}", "--model", "{model}", "--set", "train.lr=-2"],
        ["train.lr"],
    ),
    # ---- games
    ("games unknown family", ["games", "--game", "chess"], ["--game", "chess"]),
    ("games negative beta", ["games", "--game", "rps", "--beta", "-1"], ["--beta"]),
    ("games unknown algorithm", ["games", "--game", "rps", "--algorithm", "magic"], ["--algorithm", "magic"]),
    ("games matrix not square", ["games", "--game", "{game_not_square}"], ["game.csv"]),
    ("games npy corrupt", ["games", "--game", "{game_corrupt_npy}"], ["game.npy"]),
    ("games text not numbers", ["games", "--game", "{game_text}"], ["game.txt", "not a matrix of numbers"]),
    ("games no seeds", ["games", "--game", "rps", "--seeds", "0"], ["--seeds"]),
    ("games negative iterations", ["games", "--game", "rps", "--iterations", "-5"], ["--iterations"]),
    ("games zero samples", ["games", "--game", "rps", "--sampled", "0"], ["--sampled"]),
    ("games negative target", ["games", "--game", "rps", "--target", "-1"], ["--target"]),
    # ---- arguments of the listing commands and the parser
    ("losses with an argument", ["losses", "extra"], ["unrecognized arguments: extra"]),
    ("judges with an option", ["judges", "--long"], ["unrecognized arguments: --long"]),
    ("pairing with an argument", ["pairing", "x"], ["unrecognized arguments: x"]),
    ("no command", [], ["command"]),
    ("unknown command", ["fly"], ["invalid choice: 'fly'"]),
    ("run unknown option", ["run", "--frobnicate"], ["--frobnicate"]),
    # ---- plugins
    ("plugin missing", ["losses"], ["ITERPO_PLUGINS", "no_such_plugin"], {"ITERPO_PLUGINS": "no_such_plugin"}),
    (
        "plugin with a syntax error",
        ["losses"],
        ["ITERPO_PLUGINS", "broken_plugin", "SyntaxError"],
        {"ITERPO_PLUGINS": "broken_plugin"},
    ),
    (
        "plugin that raises",
        ["losses"],
        ["ITERPO_PLUGINS", "raising_plugin", "plugin setup failed"],
        {"ITERPO_PLUGINS": "raising_plugin"},
    ),
]


def _snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_exits_2_with_a_message_and_touches_nothing(case, world, capsys, monkeypatch):
    name, argv, words, *env = case
    for key, value in (env[0] if env else {}).items():
        monkeypatch.setenv(key, value)
    monkeypatch.syspath_prepend(world.plugins)
    monkeypatch.chdir(world.tmp)  # anything a bad command writes by default lands here, in the test's folder
    before = _snapshot(world.run)
    try:
        code = main([_fill(a, world) for a in argv])
    except SystemExit as exc:  # argparse's own errors
        code = exc.code
    err = " ".join(capsys.readouterr().err.split())
    assert code == 2, f"{name}: exit {code}, stderr: {err}"
    assert "Traceback" not in err
    for word in words:
        assert _fill(word, world) in err, f"{name}: {word!r} not in: {err}"
    assert _snapshot(world.run) == before, f"{name}: the existing run directory changed"


def test_the_corpus_is_large_enough():
    assert len(CASES) >= 60


def test_the_real_command_prints_no_traceback(world):
    """Through the installed entry point: the message, exit 2, no traceback (a sample of the corpus)."""
    env = dict(os.environ, PYTHONPATH=str(REPO / "tests"))
    for argv in (
        ["run", world.bad_yaml],
        ["resume", world.run_bad_manifest],
        ["run", str(world.config), "--set", f"model.path={world.fake_gguf}"],
    ):
        done = subprocess.run(
            [sys.executable, "-m", "iterpo", *argv], capture_output=True, text=True, env=env, cwd=world.tmp
        )
        assert done.returncode == 2 and done.stderr.startswith("iterpo: error: ") and "Traceback" not in done.stderr
