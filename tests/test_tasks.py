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
        a, op, b = p.text.replace("?", " ").replace(".", " ").replace(":", " ").split()[2:5] if p.text.startswith("What is") else (None, None, None)
        if a is not None:
            assert int(p.answer) == eval(f"{a}{op}{b}")
    assert len({p.text.split(" ")[0] for p in train}) > 1  # several phrasings
    # held-out set is fixed across run seeds; training prompts follow the seed
    other = build_task(TaskSection(train_size=300, eval_size=300, operations=["+", "-", "*"]), seed=1)
    assert [p.text for p in other.eval_prompts()] == [p.text for p in held_out]
    assert [p.text for p in other.train_prompts()] != [p.text for p in train]


def test_arithmetic_refuses_more_questions_than_exist():
    with pytest.raises(ConfigError, match="distinct"):
        build_task(TaskSection(digits=1, train_size=200, eval_size=10), seed=0)


def test_prompt_files(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"prompt": "hi", "answer": 3}) + "\n\n" + json.dumps({"messages": [{"role": "user", "content": "yo"}]}) + "\n")
    prompts = read_prompts(path)
    assert [p.text for p in prompts] == ["hi", "yo"] and prompts[0].answer == "3" and prompts[1].answer is None
    import pyarrow as pa, pyarrow.parquet as pq

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
