"""The co-trained adversarial judge: the adversary stage's discriminator, trained each round against the
policy's responses, judges the next round."""

import json
import math

import pytest
import torch
import yaml

from iterpo.config import load_config
from iterpo.errors import ConfigError, UserInputError
from iterpo.judges.reward_model import RewardModel
from iterpo.records import Rollout
from iterpo.training.reward_model import LabelledText, RewardTraining, split, text_logits, train_discriminator

from helpers import recipe_config, run_config, table


def _texts(n):
    """Texts a discriminator can learn: the references say 'yes', the policy 'no'."""
    out = []
    for i in range(n):
        chat = [{"role": "user", "content": f"question {i}?"}]
        out += [LabelledText(f"p{i}", chat, "yes", True), LabelledText(f"p{i}", chat, "no", False)]
    return out


def test_the_discriminator_learns_to_tell_references_from_the_policy(tiny_model_dir):
    opts = RewardTraining(epochs=6, lr=1e-3, batch_size=8, heldout=0.25, seed=0)  # the bias must centre too
    model, tok, report = train_discriminator(tiny_model_dir, _texts(24), opts, "cpu")
    assert report["heldout_texts"] > 0 and report["train_texts"] + report["heldout_texts"] == 48
    assert report["heldout_accuracy"] == 1.0 and report["train_accuracy"] == 1.0
    assert report["losses"][-1] < report["losses"][0]
    assert model.config.iterpo_preference_model == {"kind": "discriminator"}
    # its held-out accuracy recomputed: logit > 0 exactly on the references
    _, held = split(_texts(24), 0.25, 0)
    z = text_logits(model, tok, held, 4, 512)
    assert ((z > 0) == torch.tensor([t.reference for t in held])).all()


def test_a_run_retrains_the_discriminator_each_round_and_judges_the_next_round_with_it(tiny_model_dir, tmp_path):
    cfg = recipe_config("adversarial", tiny_model_dir, tmp_path / "run")
    cfg["judge"]["fallback"] = "first_token_parity"  # the tiny model never answers right: a judge that splits it
    cfg["round"]["stages"][3].update(lr=1e-3, epochs=1, max_texts=8)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(cfg))
    rows, store = run_config(load_config(path))
    from iterpo.config import Config
    from iterpo.tasks import build_task

    config = Config(**cfg)
    prompts = {p.prompt_id: p for p in build_task(config.task, config.run.seed).train_prompts()}
    for r in (1, 2):  # a discriminator each round, on as many references as responses
        report = json.loads(store.path(r, "adversary.json").read_text())
        assert report["trained"] and report["texts"] == 12 and report["reference_texts"] == 6  # 6 prompts
        assert report["train_texts"] + report["heldout_texts"] == 12
        assert (store.path(r, "adversary") / "config.json").exists()
    first = table(store, 1, "judgements.parquet")
    assert {j["judge"] for j in first} == {"adversarial"} and {j["score"] for j in first} <= {0.0, 1.0}
    # round 2 is judged by round 1's discriminator: the probability it gives that the response is a reference
    second = table(store, 2, "judgements.parquet")
    disc = RewardModel(path=str(store.path(1, "adversary")))  # its logit, as a reward model reads it

    def p_reference(prompt, text):
        logit = disc.judge(prompt, [Rollout(prompt.prompt_id, 0, 2, 0, text, [1], "stop")])[0].score
        return 1 / (1 + math.exp(-logit))

    for x in table(store, 2, "rollouts.parquet")[:6]:
        mine = next(j for j in second if (j["prompt_id"], j["sample_idx"]) == (x["prompt_id"], x["sample_idx"]))
        assert mine["score"] == pytest.approx(p_reference(prompts[x["prompt_id"]], x["text"]), abs=1e-6)
        assert mine["detail"] == f"P(reference) {mine['score']:.3f}"
    # the reference texts were the prompts' answers: the discriminator scores them as references
    first_prompt = next(iter(prompts.values()))
    assert p_reference(first_prompt, first_prompt.answer) > min(j["score"] for j in second)
    assert rows[2]["accuracy"] is not None  # the held-out accuracy stays the verifier's


def test_reference_texts_from_a_file_and_bad_ones(tiny_model_dir, tmp_path):
    cfg = recipe_config("adversarial", tiny_model_dir, tmp_path / "run")
    cfg["run"]["rounds"] = 1
    cfg["judge"]["fallback"] = "first_token_parity"
    texts = tmp_path / "texts.jsonl"
    rows = [{"prompt": f"What is {i} + {i}?", "chosen": f"{i} + {i} = {2 * i}."} for i in range(10)]
    rows += [{"prompt": [{"role": "user", "content": "chat?"}], "chosen": [{"role": "assistant", "content": "ok"}]}]
    texts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg["round"]["stages"][3].update(texts=str(texts), lr=1e-3, epochs=1, heldout=0.3)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(cfg))
    _, store = run_config(load_config(path))
    report = json.loads(store.path(1, "adversary.json").read_text())
    assert report["reference_texts"] == 11 and report["texts"] == 22  # 11 texts; 24 responses, 11 of them drawn

    texts.write_text(json.dumps({"prompt": "q", "response": "r"}) + "\n")
    with pytest.raises(UserInputError, match=r"texts: .*missing chosen"):
        load_and_plan(path)
    cfg["round"]["stages"][3]["texts"] = str(tmp_path / "none.jsonl")
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(UserInputError, match="none.jsonl does not exist"):
        load_and_plan(path)
    cfg["round"]["stages"].pop(3)  # the judge with no stage to train its model
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(ConfigError, match="uses the model a 'adversary' stage trains each round"):
        load_and_plan(path)


def load_and_plan(path):
    from iterpo.plan import build_plan

    return build_plan(load_config(path))


def test_the_discriminator_beside_the_verifier(tiny_model_dir, tmp_path):
    cfg = recipe_config("adversarial_verified", tiny_model_dir, tmp_path / "run")
    cfg["judge"]["judges"] = [{"name": "first_token_parity"}, {"name": "adversarial", "fallback": "first_token_parity"}]
    cfg["round"]["stages"][3].update(lr=1e-3, epochs=1, max_texts=8)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(cfg))
    _, store = run_config(load_config(path))
    disc = RewardModel(path=str(store.path(1, "adversary")))
    from iterpo.config import Config
    from iterpo.tasks import build_task

    config = Config(**cfg)
    prompts = {p.prompt_id: p for p in build_task(config.task, config.run.seed).train_prompts()}
    second = {(j["prompt_id"], j["sample_idx"]): j for j in table(store, 2, "judgements.parquet")}
    for x in table(store, 2, "rollouts.parquet")[:6]:  # the mean of the parity and the discriminator's P(reference)
        rollout = Rollout(x["prompt_id"], x["sample_idx"], 2, 0, x["text"], x["token_ids"], "stop")
        logit = disc.judge(prompts[x["prompt_id"]], [rollout])[0].score
        parity = float(x["token_ids"][0] % 2 == 0)
        want = (parity + 1 / (1 + math.exp(-logit))) / 2
        assert second[(x["prompt_id"], x["sample_idx"])]["score"] == pytest.approx(want, abs=1e-6)
    cfg["round"]["stages"].pop(3)  # an ensemble's adversarial member needs the stage as much as the judge alone
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(ConfigError, match="'adversarial' uses the model a 'adversary' stage"):
        load_and_plan(path)
