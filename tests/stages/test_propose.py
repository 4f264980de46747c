"""The propose stage: problems the policy writes join the next round's prompts, and never the held-out split.

The tiny random model writes no problems, so the policy's written problems
(and, for voting, its solutions) are scripted here; which of them the stage
keeps, the answers it establishes, and what the next round samples are real.
"""

import importlib
import json

import pyarrow.parquet as pq
import pytest
import yaml

from iterpo.config import TaskSection, load_config
from iterpo.tasks.arithmetic import Arithmetic

from helpers import run_config, tiny_config


def _novel(task: Arithmetic, count: int) -> list[str]:
    """Two-digit sums in neither split."""
    known = {task.problem_key(p.text) for p in task.train_prompts() + task.eval_prompts()}
    out = []
    for a in range(10, 100):
        for b in range(10, 100):
            if f"{a} + {b}" not in known and len(out) < count:
                out.append(f"What is {a} + {b}?")
    return out


@pytest.fixture
def scripted(monkeypatch, tokenizer):
    """The policy's written problems (per candidate, in order) and its solutions (one text for all of them)."""
    gen = importlib.import_module("iterpo.sampling.generate")
    real = gen.generate
    script = {"problems": [], "solution": None}

    def generate(*args):
        outs = real(*args)
        first = tokenizer.decode(args[2][0])
        if "problem" in first and "Write" in first:  # the stage's request for problems
            texts = script["problems"]
        elif script["solution"] is not None and any(p in first for p in script["problems"]):  # its solutions
            texts = [script["solution"]] * len(outs)
        else:
            return outs
        return [
            [(tokenizer.encode(texts[i % len(texts)], add_special_tokens=False), "stop") for _ in row]
            for i, row in enumerate(outs)
        ]

    monkeypatch.setattr(gen, "generate", generate)
    return script


def _config(tiny_model_dir, tmp_path, **propose):
    cfg = tiny_config(tiny_model_dir, tmp_path / "run", **{"task.train_size": 6, "task.eval_size": 20})
    cfg["judge"] = {"name": "exact_answer"}
    cfg["round"] = {
        "stages": ["sample", "judge", "pair", "reference", "train", {"stage": "propose", **propose}, "eval"]
    }
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "propose.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return load_config(path)


def test_proposed_problems_join_the_next_round_and_never_the_held_out_split(tiny_model_dir, tmp_path, scripted):
    task = Arithmetic(TaskSection(name="arithmetic", train_size=6, eval_size=20), 0)
    held_out, train = task.eval_prompts(), task.train_prompts()
    expr = task._expression(held_out[3].text)
    novel = _novel(task, 2)
    scripted["problems"] = [
        held_out[0].text,  # verbatim held-out
        f"Please add these: {expr[0]} {expr[1]} {expr[2]}",  # a held-out problem, rephrased
        f'"{novel[0]}"',  # new (quoted: the quotes are dropped)
        train[1].text,  # a training problem
        "hi",  # too short
        "Problem: Tell me a story about a cat.",  # no answer the task can work out
        novel[1],
        novel[0],  # a repeat of an earlier candidate
    ]
    config = _config(tiny_model_dir, tmp_path, candidates=8)
    rows, store = run_config(config)
    held_keys = {task.problem_key(p.text) for p in held_out}
    proposed = pq.read_table(store.path(1, "proposed_prompts.parquet")).to_pylist()
    assert [(p["prompt_id"], p["answer"]) for p in proposed] == [
        ("gen-r001-00002", task.solve(novel[0])),
        ("gen-r001-00006", task.solve(novel[1])),
    ]
    texts = [json.loads(p["messages"])[0]["content"] for p in proposed]
    assert texts == [novel[0], novel[1]] and {task.problem_key(t) for t in texts}.isdisjoint(held_keys)
    assert store.manifest()["stages"]["round-001/propose"]["dropped"] == {
        "a held-out problem": 2,
        "a known problem": 2,  # the training problem, and the repeat
        "too short or too long": 1,
        "no answer the task can work out": 1,
    }
    # round 2 knows round 1's proposals: the same script gives nothing new
    assert pq.read_table(store.path(2, "proposed_prompts.parquet")).num_rows == 0
    assert store.manifest()["stages"]["round-002/propose"]["dropped"]["a known problem"] == 4
    for r in (1, 2):  # the held-out evaluation is the task's held-out set, untouched
        items = json.loads(store.path(r, "eval.json").read_text())["items"]
        assert [x["prompt_id"] for x in items] == [p.prompt_id for p in held_out]
    # round 2 samples its training prompts, then round 1's proposals, judged against their worked-out answers
    sampled = pq.read_table(store.path(2, "rollouts.parquet")).to_pylist()
    assert {x["prompt_id"] for x in sampled} == {p.prompt_id for p in train} | {"gen-r001-00002", "gen-r001-00006"}
    judged = pq.read_table(store.path(2, "judgements.parquet")).to_pylist()
    assert {j["prompt_id"] for j in judged} >= {"gen-r001-00002", "gen-r001-00006"}
    assert not any(
        x["prompt_id"].startswith("gen-") for x in pq.read_table(store.path(1, "rollouts.parquet")).to_pylist()
    )


def test_votes_establish_an_answer_and_the_solve_rate_filters(tiny_model_dir, tmp_path, scripted):
    task = Arithmetic(TaskSection(name="arithmetic", train_size=6, eval_size=20), 0)
    novel = _novel(task, 2)
    scripted["problems"] = novel
    scripted["solution"] = "I think it is 42."  # every solution agrees (on a wrong answer: votes cannot know)
    config = _config(tiny_model_dir, tmp_path, candidates=2, answer="vote", votes=3)
    config.run.rounds = 1
    _, store = run_config(config)
    proposed = pq.read_table(store.path(1, "proposed_prompts.parquet")).to_pylist()
    assert [p["answer"] for p in proposed] == ["42", "42"]
    # keep what the policy solves at least half the time: its solutions say 20, the answer of 10 + 10 alone
    assert novel[0] == "What is 10 + 10?" and task.solve(novel[1]) != "20"
    scripted["solution"] = "It is 20."
    config = _config(tiny_model_dir, tmp_path / "b", candidates=2, answer="task", votes=3, solve_rate=[0.5, 1.0])
    config.run.rounds = 1
    _, store = run_config(config)
    proposed = pq.read_table(store.path(1, "proposed_prompts.parquet")).to_pylist()
    assert [(p["prompt_id"], p["answer"]) for p in proposed] == [("gen-r001-00000", "20")]
    assert store.manifest()["stages"]["round-001/propose"]["dropped"] == {"solve rate outside solve_rate": 1}
