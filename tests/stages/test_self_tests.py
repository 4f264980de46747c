"""The self_tests stage (CodeDPO): solutions and tests the policy wrote rank each other, every run in the sandbox,
and neither the held-out problems nor their hidden tests are ever shown to it.

The tiny random model writes no code, so its replies are scripted here from the
problem it is asked about: solutions that return 0 or 1, and tests of which one
is hostile (it tries to write outside the sandbox and to reach the network).
Extracting the tests, running every pair in the sandbox, the ranking, pairing
and training are real.
"""

import importlib
import json
import re
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from iterpo.config import load_config

from helpers import run_config

CONFIGS = Path(__file__).resolve().parent.parent.parent / "configs"


@pytest.fixture
def coding_policy(monkeypatch, tokenizer, tmp_path):
    gen = importlib.import_module("iterpo.sampling.generate")
    real = gen.generate
    asked: list[str] = []
    mark = tmp_path / "escaped"

    def generate(*args):
        outs = real(*args)
        result = []
        for context, row in zip(args[2], outs):
            text = tokenizer.decode(context)
            name = re.findall(r"`(\w+)\(", text)[-1]
            if "Do not solve it" in text:  # a request for tests
                asked.append(text)
                reply = (
                    f"```python\nassert {name}(0) == 0\nassert {name}(1) == 0\n"
                    f"assert open({str(mark)!r}, 'w').write('x') == 1\n"
                    "assert __import__('socket').create_connection(('1.1.1.1', 80), 2)\n```"
                )
                result.append([(tokenizer.encode(reply, add_special_tokens=False), "stop") for _ in row])
            else:  # a solution: half return 0 (they pass both plain tests), half return 1
                result.append(
                    [
                        (
                            tokenizer.encode(
                                f"```python\ndef {name}(*a):\n    return {ids[0] % 2}\n```", add_special_tokens=False
                            ),
                            w,
                        )
                        for ids, w in row
                    ]
                )
        return result

    monkeypatch.setattr(gen, "generate", generate)
    return asked, mark


def test_codedpo_ranks_solutions_by_self_written_tests_in_the_sandbox(tiny_model_dir, tmp_path, coding_policy):
    import iterpo.judges.code as code

    asked, mark = coding_policy
    sandboxed = []
    real_run = code.run_python
    monkey = pytest.MonkeyPatch()
    monkey.setattr(code, "run_python", lambda *a, **k: sandboxed.append(1) or real_run(*a, **k))
    cfg = yaml.safe_load((CONFIGS / "codedpo.yaml").read_text())
    cfg["run"] = {"dir": str(tmp_path / "run"), "rounds": 1, "threads": 1}
    cfg["model"] = {"path": tiny_model_dir}
    cfg["task"].update(train_size=3, eval_size=2)
    cfg["sampling"].update(samples_per_prompt=4, max_new_tokens=8, temperature=1.0)
    cfg["train"] = {"lr": 1e-3, "epochs": 1, "batch_size": 2}
    cfg["eval"] = {"max_new_tokens": 8}
    path = tmp_path / "codedpo.yaml"
    path.write_text(yaml.safe_dump(cfg))
    try:
        rows, store = run_config(load_config(path))
    finally:
        monkey.undo()
    from iterpo.plan import build_plan

    plan = build_plan(load_config(path))
    plan_prompts = {p.prompt_id: p for p in plan.train_prompts}
    held_out = plan.eval_prompts

    def table(name):
        return pq.read_table(store.path(1, name)).to_pylist()

    tests = table("self_tests.parquet")
    solutions = {(x["prompt_id"], x["sample_idx"]): x for x in table("rollouts.parquet")}
    judged = table("self_test_judgements.parquet")
    assert {t["prompt_id"] for t in tests} == set(plan_prompts)  # training prompts only
    for pid in plan_prompts:
        mine = [t["text"] for t in tests if t["prompt_id"] == pid]
        assert len(mine) == 4 and mine[0].endswith("(0) == 0") and all(t.startswith("assert ") for t in mine)
    for j in judged:
        returns_zero = solutions[(j["prompt_id"], j["sample_idx"])]["text"].count("return 0") == 1
        # the plain tests accept only the solutions returning 0; the hostile ones accept nothing
        assert j["samples"] == ([1.0, 1.0, 0.0, 0.0] if returns_zero else [0.0, 0.0, 0.0, 0.0])
    scores = {j["prompt_id"]: [] for j in judged}
    for j in judged:
        scores[j["prompt_id"]].append((j["samples"][0], j["score"]))
    for values in scores.values():  # passing more credible tests ranks higher; the best scores 1
        assert max(s for _, s in values) == pytest.approx(1.0)
        assert all(s_zero > s_one for p0, s_zero in values if p0 for p1, s_one in values if not p1)
    written = {(t["prompt_id"], t["sample_idx"]): t["text"] for t in tests}
    for t in table("self_test_scores.parquet"):  # a test no solution passes earns no credit
        hostile = any(k in written[(t["prompt_id"], t["sample_idx"])] for k in ("open(", "socket"))
        assert (t["score"] < 1e-6) == hostile and (t["detail"] == "accepts 0 of 2 distinct solutions") == hostile
    pairs = table("preferences.parquet")
    assert pairs and all(solutions[(p["prompt_id"], p["chosen_idx"])]["text"].count("return 0") == 1 for p in pairs)
    # every (distinct solution, test) pair ran in the sandbox, and nothing a test did escaped it
    stage = store.manifest()["stages"]["round-001/self_tests"]
    assert stage["sandbox_runs"] > 0 and len(sandboxed) >= stage["sandbox_runs"]
    assert not mark.exists()
    # neither the held-out problems nor their hidden tests were ever shown to the policy
    for p in held_out:
        assert asked and not any(p.text in text or p.answer in text for text in asked)
    items = json.loads(store.path(1, "eval.json").read_text())["items"]
    assert [x["prompt_id"] for x in items] == [p.prompt_id for p in held_out]  # scored by the hidden tests
