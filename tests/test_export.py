"""`iterpo export`: the pairs a run trained on, in TRL's conversational layout, tokenize under TRL exactly as
iterpo tokenized them (the prompt with the run's system prompt and chat template, a refinement's request too)."""

import importlib

import pytest
import yaml
from datasets import load_from_disk
from trl.data_utils import _tokenize, common_prefix_length

from iterpo.config import load_config
from iterpo.errors import UserInputError
from iterpo.export import export_run
from iterpo.training.assemble import context_key

from helpers import cli, run_config, tiny_config


@pytest.fixture
def plain_answers(monkeypatch, tokenizer):
    """Responses whose tokens are the tokenizer's own encoding of their text (a random model's are not), ended by
    the end of turn: 'The answer is N.' with N read off the sampled tokens."""
    gen = importlib.import_module("iterpo.sampling.generate")
    real = gen.generate

    def generate(*args):
        outs = real(*args)
        return [
            [
                (
                    tokenizer.encode(f"The answer is {sum(ids) % 7}.", add_special_tokens=False)
                    + [tokenizer.eos_token_id],
                    "stop",
                )
                for ids, _ in row
            ]
            for row in outs
        ]

    monkeypatch.setattr(gen, "generate", generate)


def test_trls_tokenization_of_the_export_equals_iterpos(tiny_model_dir, tokenizer, tmp_path, plain_answers):
    from iterpo import driver
    from iterpo.stages import RunContext

    cfg = tiny_config(tiny_model_dir, tmp_path / "run", **{"task.train_size": 6, "run.rounds": 1})
    cfg["model"]["system_prompt"] = "You are a careful calculator."
    cfg["judge"] = {"name": "token_sum"}
    cfg["pairing"] = {"strategy": "refinement", "prompt_format": "both", "pairs_per_prompt": 2}
    cfg["round"] = {
        "stages": [
            "sample",
            "judge",
            "refine",
            {"stage": "judge", "name": "judge_refine"},
            "pair",
            "reference",
            "train",
        ]
    }
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    config = load_config(path)
    run_config(config)
    out = tmp_path / "export"
    assert export_run(tmp_path / "run", None, out) > 0
    rows = load_from_disk(str(out)).to_list()
    plan, store = driver.open_run(config)
    try:
        ctx = RunContext(plan, store)
        responses = ctx.responses(1)
        assert any(len(x["prompt"]) > 2 for x in rows) and any(len(x["prompt"]) == 2 for x in rows)  # both formats
        for row in rows:
            assert row["prompt"][0] == {"role": "system", "content": "You are a careful calculator."}
            # TRL's DPOTrainer tokenization (trl 1.16, DPOTrainer._prepare_dataset's tokenize step)
            prompt_ids = _tokenize(tokenizer, row["prompt"], add_generation_prompt=True)["input_ids"]
            with_chosen = _tokenize(tokenizer, row["prompt"] + row["chosen"])["input_ids"]
            with_rejected = _tokenize(tokenizer, row["prompt"] + row["rejected"])["input_ids"]
            n = min(common_prefix_length(prompt_ids, with_chosen), common_prefix_length(prompt_ids, with_rejected))
            context = row["prompt"][1 + len(ctx.prompt(row["prompt_id"]).messages) :]
            assert prompt_ids[:n] == prompt_ids == ctx.prompt_ids_of(row["prompt_id"], context_key(context))
            for ids, source, key in (
                (with_chosen, "chosen_source", "chosen"),
                (with_rejected, "rejected_source", "rejected"),
            ):
                mine = next(
                    x.token_ids
                    for (pid, src, _), x in responses.items()
                    if pid == row["prompt_id"]
                    and src == row[source]
                    and tokenizer.decode(x.token_ids, skip_special_tokens=True) == row[key][0]["content"]
                )
                # the response's tokens, its end of turn included; the template adds only its line end after it
                assert ids[n : n + len(mine)] == mine and tokenizer.decode(ids[n + len(mine) :]) == "\n"
    finally:
        store.close()
    code, _, err = cli("export", str(tmp_path / "run"), "--to", str(out))
    assert code != 0 and "exists and is not empty" in err
    code, _, err = cli("export", str(tmp_path / "run"), "--rounds", "1", "--to", str(tmp_path / "again"))
    assert code == 0, err
    assert load_from_disk(str(tmp_path / "again")).to_list() == rows
    with pytest.raises(UserInputError, match="round 2 has no"):
        export_run(tmp_path / "run", [2], tmp_path / "none")
