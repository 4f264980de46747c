"""The round table's rows read a run directory's files: the shifted-prompt accuracy wherever the run put it."""

from iterpo.store import RunStore
from iterpo.summary import round_summary


def test_a_rounds_shifted_accuracy_is_read_from_eval_json_or_from_an_older_runs_analyses(tmp_path):
    store = RunStore.open(tmp_path / "run", "run: {}\n", "f" * 16)
    store.write_json(store.path(0, "eval.json"), {"round": 0, "accuracy": 0.5, "shifted_accuracy": 0.25})
    store.write_json(store.path(1, "eval.json"), {"round": 1, "accuracy": 0.75, "analyses": {"shifted_accuracy": 0.5}})
    store.write_json(store.path(2, "eval.json"), {"round": 2, "accuracy": 0.75})
    rows = [round_summary(store, r) for r in (0, 1, 2)]
    assert [(x["accuracy"], x["shifted_accuracy"]) for x in rows] == [(0.5, 0.25), (0.75, 0.5), (0.75, None)]
