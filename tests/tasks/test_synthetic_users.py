"""The synthetic-users task (FSPO): each user's wishes, the shots that show them, and prompts that carry a user."""

import json
import random

import pytest
import yaml

from iterpo.config import TaskSection, load_config
from iterpo.errors import ConfigError, DataError
from iterpo.judges.constraints import Constraints
from iterpo.records import Prompt, Rollout, from_table, to_table
from iterpo.tasks import build_task, read_prompts
from iterpo.tasks.base import few_shot_request
from iterpo.tasks.synthetic_users import HELD_OUT_USERS, USERS, compose, shot

from helpers import recipe_config, run_config, table

ALL = {**USERS, **HELD_OUT_USERS}


def _score(spec, text):
    prompt = Prompt("p", [{"role": "user", "content": "q"}], json.dumps(spec))
    return Constraints().judge(prompt, [Rollout("p", 0, 1, 0, text, [1], "stop")])[0].score


@pytest.mark.parametrize("user", sorted(ALL))
def test_every_users_shots_show_a_reply_that_meets_their_wishes_and_one_that_does_not(user):
    rng = random.Random(user)
    for topic in ("coffee", "the history of bicycles", "the moon"):
        for _ in range(20):
            assert _score(ALL[user], compose(topic, ALL[user], rng)) == 1.0
            x = shot(topic, "a brief note", ALL[user], rng)
            assert _score(ALL[user], x["chosen"]) == 1.0 and _score(ALL[user], x["rejected"]) < 1.0
            assert x["prompt"] == f"Write a brief note about {topic}."


def test_prompts_carry_the_user_their_shots_and_never_their_wishes():
    task = build_task(TaskSection(name="synthetic_users", train_size=40, eval_size=20, shots=3), seed=0)
    train, held, shifted = task.train_prompts(), task.eval_prompts(), task.shifted_prompts()
    assert len(train) == 40 and len(held) == len(shifted) == 20
    assert {p.user for p in train + held} <= set(USERS) and {p.user for p in shifted} <= set(HELD_OUT_USERS)
    for p in train + held + shifted:
        assert json.loads(p.answer) == ALL[p.user]
        text = p.messages[-1]["content"]
        assert text.startswith("Here are 3 earlier requests of mine") and text.count("Preferred reply: ") == 3
        request = text.rsplit("the way I would prefer: ", 1)[1]
        assert request.startswith("Write ") and request.endswith(".") and "word" not in request.lower()
    assert not {p.messages[-1]["content"] for p in train} & {p.messages[-1]["content"] for p in held}
    again = build_task(TaskSection(name="synthetic_users", train_size=40, eval_size=20, shots=3), seed=0)
    assert (
        again.train_prompts() == train
        and build_task(TaskSection(name="synthetic_users"), 1).eval_prompts()[:20]
        == build_task(TaskSection(name="synthetic_users"), 2).eval_prompts()[:20]
    )  # held-out: the same every run
    with pytest.raises(ConfigError, match="shots >= 1"):
        build_task(TaskSection(name="synthetic_users", shots=0), 0)


def test_a_prompt_file_row_may_carry_a_user_and_their_preferences(tmp_path):
    shots = [{"prompt": "Say hi.", "chosen": "hi", "rejected": "HELLO THERE"}]
    rows = [
        {"prompt": "Greet me.", "user": "ann", "preferences": shots, "answer": '{"lowercase": true}'},
        {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Wave."}], "user": "bo"},
    ]
    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    first, second = read_prompts(path)
    assert first.user == "ann" and first.messages == [{"role": "user", "content": few_shot_request("Greet me.", shots)}]
    assert "Preferred reply: hi\nReply I did not prefer: HELLO THERE" in first.messages[0]["content"]
    assert second.user == "bo" and second.messages[1]["content"] == "Wave."
    assert from_table(to_table([first, second], Prompt), Prompt) == [first, second]  # the user survives the store
    for bad, message in [
        ({"prompt": "x", "preferences": [{"prompt": "a", "chosen": "b"}]}, "'preferences' must be a list"),
        ({"prompt": "x", "user": 3}, "'user' must be a non-empty string"),
        ({"messages": [{"role": "system", "content": "s"}], "preferences": shots}, "go before a user request"),
    ]:
        path.write_text(json.dumps(bad) + "\n")
        with pytest.raises(DataError, match=message):
            read_prompts(path)


def test_fspo_recipe_trains_on_each_users_pairs_and_measures_unseen_users(tiny_model_dir, tmp_path):
    cfg = recipe_config("fspo", tiny_model_dir, tmp_path / "run")
    cfg["eval"].update(pair_prompts=3, pair_samples=3, kl_samples=1)
    # enough users and replies that some of the random model's replies to one request differ in score
    cfg["task"]["train_size"] = 48
    cfg["sampling"]["samples_per_prompt"] = 8
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(cfg))
    rows, store = run_config(load_config(path))
    from iterpo.config import Config

    prompts = {p.prompt_id: p for p in build_task(Config(**cfg).task, 0).train_prompts()}
    judged = table(store, 1, "judgements.parquet")
    rollouts = {(x["prompt_id"], x["sample_idx"]): x["text"] for x in table(store, 1, "rollouts.parquet")}
    for j in judged[:12]:  # each reply scored against its own user's wishes
        spec = json.loads(prompts[j["prompt_id"]].answer)
        assert j["score"] == pytest.approx(_score(spec, rollouts[(j["prompt_id"], j["sample_idx"])]))
    prefs = table(store, 1, "preferences.parquet")
    assert prefs and all(x["chosen_score"] > x["rejected_score"] for x in prefs)
    evaluation = json.loads(store.path(2, "eval.json").read_text())
    assert "shifted_pairs" in evaluation["analyses"] and "shifted_accuracy" in evaluation  # the unseen users
    assert rows[2]["accuracy"] is not None
