"""`iterpo train`: offline preference training from a file, TRL's tokenization, clear errors."""

import json
from types import SimpleNamespace

import pytest
import torch

from iterpo.cli import main
from iterpo.config import TrainSection
from iterpo.losses import get_loss
from iterpo.models.loading import load_model
from iterpo.training import LiveReference, train
from iterpo.training.offline import read_preferences, reference_logps, tokenize_pair

CHAT = [
    {
        "prompt": [{"role": "user", "content": f"What is {a} + {b}?"}],
        "chosen": [{"role": "assistant", "content": f"The answer is {a + b}."}],
        "rejected": [{"role": "assistant", "content": f"{a + b + 1}"}],
        "soft_label": 0.8,
    }
    for a, b in [(12, 30), (7, 8), (41, 19), (3, 99), (50, 50), (21, 4)]
]
PLAIN = [
    {"prompt": "Q: what is 2 + 3?\nA:", "chosen": " 5", "rejected": " six, I think"},
    {"prompt": "Q: name a colour.\nA:", "chosen": " blue<|im_end|>", "rejected": " seven"},
]


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("rows", [CHAT, PLAIN], ids=["chat", "plain"])
def test_tokenization_matches_trl(tokenizer, rows):
    from datasets import Dataset
    from trl import DPOTrainer

    bare = SimpleNamespace(_tokenizer=tokenizer)  # the attributes _prepare_dataset reads
    args = SimpleNamespace(dataset_num_proc=None, max_length=None, truncation_mode="keep_start")
    theirs = DPOTrainer._prepare_dataset(
        bare,
        Dataset.from_list([{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in rows]),
        tokenizer,
        args,
        "train",
    )
    for row, t in zip(rows, theirs):
        ours = tokenize_pair(tokenizer, row)
        assert (ours.prompt_ids, ours.chosen_ids, ours.rejected_ids) == (
            t["prompt_ids"],
            t["chosen_ids"],
            t["rejected_ids"],
        )
        end = "<|im_end|>\n" if isinstance(row["prompt"], list) else tokenizer.eos_token  # the turn's end is trained
        assert tokenizer.decode(ours.chosen_ids).endswith(end)


def test_train_writes_policy_log_and_reference_and_changes_the_model(tmp_path, tiny_model_dir, tokenizer):
    prefs = _write(tmp_path / "prefs.jsonl", CHAT)
    out = tmp_path / "out"
    assert (
        main(
            [
                "train",
                "--preferences",
                str(prefs),
                "--model",
                tiny_model_dir,
                "--output",
                str(out),
                "--set",
                "train.lr=1e-3",
                "--set",
                "train.batch_size=2",
                "--set",
                "train.epochs=2",
            ]
        )
        == 0
    )
    log = [json.loads(x) for x in (out / "train.jsonl").read_text().splitlines()]
    assert len(log) == 6 and log[0]["loss"] == pytest.approx(0.6931, abs=1e-3)  # policy = reference at step 1
    assert log[-1]["loss"] < log[0]["loss"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["pairs"] == 6 and summary["pairs_per_second"] > 0
    # the stored reference log-probs are the untrained model's
    before = load_model(tiny_model_dir)
    examples = [tokenize_pair(tokenizer, r) for r in CHAT]
    want = reference_logps(before, examples, 4, tokenizer.pad_token_id)
    stored = [json.loads(x) for x in (out / "ref_logps.jsonl").read_text().splitlines()]
    assert [v for s in stored for v in (s["chosen"], s["rejected"])] == pytest.approx(
        [v for w in want for v in w], abs=1e-4
    )
    after = load_model(str(out / "checkpoint"))
    assert not torch.equal(after.model.layers[0].mlp.up_proj.weight, before.model.layers[0].mlp.up_proj.weight)
    # a second run into the same directory is refused: nothing is overwritten without --force
    assert main(["train", "--preferences", str(prefs), "--model", tiny_model_dir, "--output", str(out)]) == 2


def test_a_loss_with_soft_labels_reads_them_from_the_file(tmp_path, tiny_model_dir):
    prefs = _write(tmp_path / "prefs.jsonl", CHAT)
    assert (
        main(
            [
                "train",
                "--preferences",
                str(prefs),
                "--model",
                tiny_model_dir,
                "--output",
                str(tmp_path / "o"),
                "--loss",
                "irepo",
            ]
        )
        == 0
    )
    no_labels = _write(tmp_path / "plain.jsonl", PLAIN)
    assert (
        main(
            [
                "train",
                "--preferences",
                str(no_labels),
                "--model",
                tiny_model_dir,
                "--output",
                str(tmp_path / "p"),
                "--loss",
                "irepo",
            ]
        )
        == 2
    )


def test_a_margin_loss_needs_a_margin_on_every_row():
    from iterpo.losses import get_loss
    from iterpo.training.examples import PairExample
    from iterpo.training.offline import check_loss

    loss = get_loss("margin_dpo")
    check_loss(loss, [PairExample([1], [2], [3], margin=0.5)], "margin_dpo")
    with pytest.raises(Exception, match="needs a margin"):
        check_loss(loss, [PairExample([1], [2], [3], margin=0.5), PairExample([1], [2], [3])], "margin_dpo")


@pytest.mark.parametrize(
    "rows, message",
    [
        ([{"prompt": "x", "chosen": "y"}], "row 1: missing rejected"),
        ([{"prompt": "x", "chosen": "y", "rejected": ""}], "rejected must be a non-empty string"),
        (
            [{"prompt": [{"role": "user", "content": "x"}], "chosen": "y", "rejected": "z"}],
            "chosen must be a non-empty list",
        ),
        ([{"prompt": "x", "chosen": "y", "rejected": "z", "soft_label": 2}], "soft_label must be a number in"),
        ([{"prompt": "x", "chosen": "y", "rejected": "z", "margin": "wide"}], "margin must be a finite number"),
    ],
)
def test_bad_rows_are_named(tmp_path, rows, message):
    with pytest.raises(Exception, match=message):
        read_preferences(_write(tmp_path / "bad.jsonl", rows))


def test_cli_refuses_bad_input_before_loading_anything(tmp_path, tiny_model_dir, capsys):
    def err():
        return " ".join(capsys.readouterr().err.split())  # the message is wrapped at 100 columns

    assert main(["train", "--preferences", str(tmp_path / "none.jsonl"), "--model", tiny_model_dir]) == 2
    assert "does not exist" in err()
    prefs = _write(tmp_path / "prefs.jsonl", CHAT)
    assert main(["train", "--preferences", str(prefs), "--model", tiny_model_dir, "--loss", "kto"]) == 2
    assert "a preference file holds pairs" in err()
    (tmp_path / "broken.jsonl").write_text('{"prompt": "x",\n')
    assert main(["train", "--preferences", str(tmp_path / "broken.jsonl"), "--model", tiny_model_dir]) == 2
    assert "broken.jsonl line 1 is not valid JSON" in err()


def test_a_live_reference_gives_the_losses_of_stored_reference_log_probs(tiny_model_dir, tokenizer):
    examples = [tokenize_pair(tokenizer, r) for r in CHAT]
    config = TrainSection(lr=1e-3, batch_size=2, epochs=1)
    loss = get_loss("dpo")
    stored = load_model(tiny_model_dir)
    for e, r in zip(examples, reference_logps(stored, examples, 4, tokenizer.pad_token_id)):
        e.ref_logps = r
    log_stored = train(stored, examples, loss, config, seed=0, pad_id=tokenizer.pad_token_id)
    live = load_model(tiny_model_dir)
    frozen = load_model(tiny_model_dir)
    for e in examples:
        e.ref_logps = None
    log_live = train(
        live, examples, loss, config, seed=0, pad_id=tokenizer.pad_token_id, reference=LiveReference(frozen)
    )
    assert [x["loss"] for x in log_live] == pytest.approx([x["loss"] for x in log_stored], rel=1e-4)
    assert log_stored[-1]["loss"] != pytest.approx(log_stored[0]["loss"], abs=1e-4)  # training moved something


def test_splitting_a_batch_into_token_bounded_passes_gives_the_same_training(tiny_model_dir, tokenizer):
    examples = [tokenize_pair(tokenizer, r) for r in CHAT]
    ref = reference_logps(load_model(tiny_model_dir), examples, 4, tokenizer.pad_token_id)
    for e, r in zip(examples, ref):
        e.ref_logps = r
    runs = {}
    for budget in (None, 1):  # one pass per batch of 3, or one pass per pair
        model = load_model(tiny_model_dir)
        config = TrainSection(lr=1e-3, batch_size=3, epochs=1, max_tokens_per_pass=budget)
        runs[budget] = (train(model, examples, get_loss("dpo"), config, seed=0, pad_id=tokenizer.pad_token_id), model)
    (one, m1), (split, m2) = runs[None], runs[1]
    assert [x["loss"] for x in split] == pytest.approx([x["loss"] for x in one], rel=1e-5)
    torch.testing.assert_close(m2.model.layers[1].mlp.down_proj.weight, m1.model.layers[1].mlp.down_proj.weight)


@pytest.mark.parametrize("option", ["gradient_checkpointing", "bf16"])
def test_checkpointing_and_bf16_train_on_packed_passes(tiny_model_dir, tokenizer, option):
    examples = [tokenize_pair(tokenizer, r) for r in CHAT]
    for e, r in zip(examples, reference_logps(load_model(tiny_model_dir), examples, 4, tokenizer.pad_token_id)):
        e.ref_logps = r
    logs = {}
    for on in (False, True):
        model = load_model(tiny_model_dir)
        config = TrainSection(lr=1e-3, batch_size=3, epochs=1, **{option: on})
        logs[on] = [
            x["loss"] for x in train(model, examples, get_loss("dpo"), config, seed=0, pad_id=tokenizer.pad_token_id)
        ]
        assert model.config._attn_implementation != "iterpo_blocked"  # restored after training
    # checkpointing recomputes the same math; bf16 rounds, so only roughly the same
    assert logs[True] == pytest.approx(logs[False], rel=1e-5 if option == "gradient_checkpointing" else 2e-2)


def test_sft_on_a_files_chosen_responses_is_a_warm_up_for_a_run(tmp_path, tiny_model_dir):
    rows = [{"prompt": r["prompt"], "chosen": r["chosen"]} for r in CHAT]  # no rejected: SFT does not need one
    demos = _write(tmp_path / "demos.jsonl", rows)
    out = tmp_path / "warm"
    args = ["train", "--preferences", str(demos), "--model", tiny_model_dir, "--output", str(out), "--loss", "sft"]
    assert main([*args, "--set", "train.lr=1e-3", "--set", "train.batch_size=2", "--set", "train.epochs=3"]) == 0
    log = [json.loads(x) for x in (out / "train.jsonl").read_text().splitlines()]
    assert len(log) == 9 and log[-1]["loss"] < log[0]["loss"]  # the mean token NLL of the chosen responses falls
    assert not (out / "ref_logps.jsonl").exists()  # SFT needs no reference
    warm = load_model(str(out / "checkpoint"))  # a model directory `iterpo run --set model.path=...` starts from
    assert not torch.equal(
        warm.model.layers[0].mlp.up_proj.weight, load_model(tiny_model_dir).model.layers[0].mlp.up_proj.weight
    )
    # a pairwise loss still needs every row's rejected response
    assert main(["train", "--preferences", str(demos), "--model", tiny_model_dir, "--output", str(tmp_path / "x")]) == 2


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_a_falling_learning_rate_follows_transformers_schedules_after_warmup(schedule):
    from transformers import get_scheduler

    from iterpo.training.trainer import lr_factor

    total, warmup = 12, 3
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    theirs = get_scheduler(schedule, optimizer, num_warmup_steps=warmup, num_training_steps=total)
    expected = []
    for _ in range(total):
        expected.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        theirs.step()
    ours = [lr_factor(s, warmup, total, schedule) for s in range(total)]
    assert ours[warmup:] == pytest.approx(expected[warmup:])
    assert ours[:warmup] == pytest.approx([0.25, 0.5, 0.75])  # the rise iterpo always had: (s + 1) / (warmup + 1)
    assert ours[-1] > 0  # the last step still moves
    assert [lr_factor(s, warmup, total, "constant") for s in range(total)] == ours[:warmup] + [1.0] * (total - warmup)


def test_the_schedule_runs_over_the_whole_round_s_steps(tiny_model_dir, tokenizer):
    examples = [tokenize_pair(tokenizer, r) for r in CHAT]
    for e, r in zip(examples, reference_logps(load_model(tiny_model_dir), examples, 4, tokenizer.pad_token_id)):
        e.ref_logps = r
    config = TrainSection(lr=1e-3, batch_size=1, epochs=2, lr_schedule="linear")
    log = train(load_model(tiny_model_dir), examples, get_loss("dpo"), config, seed=0, pad_id=tokenizer.pad_token_id)
    total = 2 * len(examples)
    assert [x["lr"] for x in log] == pytest.approx([1e-3 * (total - s) / total for s in range(total)])
