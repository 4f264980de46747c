"""The round table adds up each column's stages, the generating and judging stages of recipes included."""

from rich.console import Console

from iterpo.progress import round_table

# a round's row without its times, as summary.round_summary builds it
ROW = dict(round=1, accuracy=0.5, mean_reward=0.4, pairs=10, skipped=2, mean_loss=0.6, reward_margin=0.1)


def test_seconds_columns_add_up_the_stages_that_generate_and_judge():
    times = {
        "sample": 10,
        "refine": 5,
        "rationalize": 2,
        "judge": 1,
        "judge_refine": 2,
        "self_tests": 4,
        "pair": 0.2,
        "train": 30,
        "train_sft": 3,
        "tree_search": 7,
        "propose": 1,
        "eval": 6,
    }
    row = {**ROW, "sample_tokens_per_s": 100.0, "times": times}
    console = Console(width=300, record=True)
    console.print(round_table([row]))
    text = console.export_text()
    assert "25 / 7 / 0 / - / 33 / 6" in text  # sample+refine+rationalize+tree_search+propose; judges
    assert "held-out acc" in text
    console.print(round_table([row], tuning=True))  # task.tuning: the accuracy is the tuning set's
    text = console.export_text()
    assert "tuning acc" in text and "held-out" not in text


def test_the_shifted_column_shows_only_when_a_round_has_shifted_accuracy():
    row = {**ROW, "times": {"sample": 1}}
    console = Console(width=300, record=True)
    console.print(round_table([row]))
    assert "shifted acc" not in console.export_text()
    console.print(round_table([{**row, "round": 0, "shifted_accuracy": None}, {**row, "shifted_accuracy": 0.625}]))
    text = console.export_text()
    assert "shifted acc" in text and "0.625" in text
