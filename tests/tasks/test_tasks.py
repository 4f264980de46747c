import json

import pytest

from iterpo.config import TaskSection
from iterpo.errors import ConfigError, DataError
from iterpo.tasks import build_task, read_prompts


def test_arithmetic_splits_never_overlap_and_answers_are_exact():
    task = build_task(TaskSection(train_size=300, eval_size=300, operations=["+", "-", "*"]), seed=0)
    train, held_out = task.train_prompts(), task.eval_prompts()
    assert len(train) == 300 and len(held_out) == 300
    assert not {p.text for p in train} & {p.text for p in held_out}
    assert len({p.text for p in train}) == 300
    for p in train[:50]:
        a, op, b = (
            p.text.replace("?", " ").replace(".", " ").replace(":", " ").split()[2:5]
            if p.text.startswith("What is")
            else (None, None, None)
        )
        if a is not None:
            assert int(p.answer) == eval(f"{a}{op}{b}")
    assert len({p.text.split(" ")[0] for p in train}) > 1  # several phrasings
    # held-out set is fixed across run seeds; training prompts follow the seed
    other = build_task(TaskSection(train_size=300, eval_size=300, operations=["+", "-", "*"]), seed=1)
    assert [p.text for p in other.eval_prompts()] == [p.text for p in held_out]
    assert [p.text for p in other.train_prompts()] != [p.text for p in train]


def test_the_arithmetic_tuning_set_is_fixed_and_apart_from_held_out_and_training():
    def questions(prompts):
        return {task._expression(p.text) for p in prompts}

    task = build_task(TaskSection(), seed=0)
    tuning = build_task(TaskSection(tuning=True), seed=0)
    assert len(tuning.eval_prompts()) == 100
    assert not questions(tuning.eval_prompts()) & questions(task.eval_prompts())  # the held-out set
    for seed in range(3):  # no run's training set holds a tuning question
        assert not questions(build_task(TaskSection(), seed).train_prompts()) & questions(tuning.eval_prompts())
    assert [p.text for p in tuning.train_prompts()] == [p.text for p in task.train_prompts()]  # the same training
    assert [p.text for p in build_task(TaskSection(tuning=True), seed=5).eval_prompts()] == [
        p.text for p in tuning.eval_prompts()
    ]
    shifted = tuning.shifted_prompts()  # the tuning questions in the phrasings never trained on
    assert [task._expression(p.text) for p in shifted] == [task._expression(p.text) for p in tuning.eval_prompts()]
    # one-digit sums: 100 questions, no room for a tuning set beside these sizes; training keeps them all
    small = TaskSection(digits=1, train_size=50, eval_size=30)
    assert len(build_task(small, seed=0).train_prompts()) == 50
    with pytest.raises(ConfigError, match="distinct"):
        build_task(TaskSection(digits=1, train_size=50, eval_size=30, tuning=True), seed=0)


def test_arithmetic_refuses_more_questions_than_exist():
    with pytest.raises(ConfigError, match="distinct"):
        build_task(TaskSection(digits=1, train_size=200, eval_size=10), seed=0)


def test_prompt_files(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(
        json.dumps({"prompt": "hi", "answer": 3})
        + "\n\n"
        + json.dumps({"messages": [{"role": "user", "content": "yo"}]})
        + "\n"
    )
    prompts = read_prompts(path)
    assert [p.text for p in prompts] == ["hi", "yo"] and prompts[0].answer == "3" and prompts[1].answer is None
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"prompt": ["a", "b"], "answer": ["1", "2"]}), tmp_path / "p.parquet")
    assert [p.answer for p in read_prompts(tmp_path / "p.parquet")] == ["1", "2"]


@pytest.mark.parametrize(
    "content, fragment",
    [
        ('{"prompt": "ok"}\n{"prompt": "broken"\n', "line 2 is not valid JSON"),
        ('{"prompt": "ok"}\n{"text": "no prompt"}\n', "line 2: needs a non-empty text 'prompt'"),
        ('{"messages": [{"role": "user"}]}\n', "line 1: 'messages' must be"),
        ("", "holds no prompts"),
    ],
)
def test_malformed_prompt_files_name_file_and_line(tmp_path, content, fragment):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(DataError) as info:
        read_prompts(path)
    assert str(path) in str(info.value) and fragment in str(info.value)


def test_missing_prompt_file():
    with pytest.raises(DataError, match="does not exist"):
        read_prompts("/nonexistent/prompts.jsonl")


@pytest.mark.parametrize(
    "name,judge", [("word_problems", "exact_answer"), ("code", "python_tests"), ("constraints", "constraints")]
)
def test_generated_tasks_have_fixed_disjoint_splits(name, judge):
    task = build_task(TaskSection(name=name, train_size=64, eval_size=100), seed=0)
    train, held_out = task.train_prompts(), task.eval_prompts()
    assert task.default_judge == judge and len(train) == 64 and len(held_out) == 100
    assert len({p.text for p in train + held_out}) == 164  # distinct, and the splits never overlap
    other = build_task(TaskSection(name=name, train_size=64, eval_size=100), seed=1)
    assert [p.text for p in other.eval_prompts()] == [p.text for p in held_out]
    assert [p.text for p in other.train_prompts()] != [p.text for p in train]
    if name == "code":  # the smallest problem space
        with pytest.raises(ConfigError, match="distinct"):
            build_task(TaskSection(name=name, train_size=100000, eval_size=10), seed=0)


def test_word_problem_answers_are_exact():
    import re

    task = build_task(TaskSection(name="word_problems", train_size=300, eval_size=10), seed=0)
    checked = 0
    for p in task.train_prompts():
        n = [int(x) for x in re.findall(r"\d+", p.text)]
        if "km per hour" in p.text:
            assert int(p.answer) == n[0] * n[1] + n[2] * n[3]
        elif "shared equally" in p.text:
            assert int(p.answer) == (n[0] - n[1]) / n[2]
        elif "pages" in p.text:
            assert int(p.answer) == n[0] - n[1] * n[2]
        elif "dollars per hour" in p.text:
            assert int(p.answer) == n[0] * n[1] * n[2] - n[3]
        else:
            continue
        checked += 1
    assert checked > 100 and all(int(p.answer) > 0 for p in task.train_prompts())


SOLUTIONS = {  # correct solutions for some code families, keyed by the function name's prefix
    "add_": "def {f}(x):\n    return x + {k}",
    "divisible_by_": "def {f}(n):\n    return n % {k} == 0",
    "nth_multiple_of_": "def {f}(n):\n    return n * {k}",
    "sum_multiples_of_": "def {f}(n):\n    return sum(range({k}, max(n, 0), {k}))",
}


def test_code_tests_pass_correct_solutions_and_fail_wrong_ones():
    import re

    from iterpo.judges import make_judge
    from iterpo.records import Rollout

    task = build_task(TaskSection(name="code", train_size=80, eval_size=10), seed=0)
    judge = make_judge("python_tests", {})
    checked = 0
    for p in task.train_prompts():
        f = re.search(r"`(\w+)\(", p.text).group(1)
        assert f.isidentifier() and f"{f}(" in p.answer
        prefix = next((x for x in SOLUTIONS if f.startswith(x) and f[len(x) :].isdigit()), None)
        if prefix is None or checked >= 6:
            continue
        good = "```python\n" + SOLUTIONS[prefix].format(f=f, k=f[len(prefix) :]) + "\n```"
        bad = "```python\n" + SOLUTIONS[prefix].format(f=f, k=int(f[len(prefix) :]) + 1) + "\n```"
        verdicts = judge.judge(
            p, [Rollout(p.prompt_id, 0, 1, 0, good, [1], "stop"), Rollout(p.prompt_id, 1, 1, 0, bad, [1], "stop")]
        )
        assert [v.score for v in verdicts] == [1.0, 0.0], (p.text, verdicts)
        checked += 1
    assert checked == 6


def _satisfying(spec: dict) -> str:
    """A response meeting every constraint of spec."""
    words = ["calm", "waves", "roll", "in", "with", "the", "tide"]
    words += [w for w in spec.get("must_include", []) if w not in words]
    words += ["again"] * max(0, spec.get("min_words", 0) - len(words))
    body = " ".join(words)
    if spec.get("starts_with"):
        body = spec["starts_with"] + " " + body
    if spec.get("ends_with"):
        body = body + " " + spec["ends_with"]
    if spec.get("lowercase"):
        body = body.lower()
    if spec.get("json"):
        body = json.dumps({"text": body})
    return body


def test_constraint_prompts_can_be_met():
    from iterpo.judges import make_judge
    from iterpo.records import Rollout

    task = build_task(TaskSection(name="constraints", train_size=100, eval_size=10), seed=0)
    judge = make_judge("constraints", {})
    for p in task.train_prompts():
        spec = json.loads(p.answer)
        assert 1 <= len(spec) <= 3
        (ok,) = judge.judge(p, [Rollout(p.prompt_id, 0, 1, 0, _satisfying(spec), [1], "stop")])
        assert ok.score == 1.0, (p.text, ok.detail)
