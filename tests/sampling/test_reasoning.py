"""Responses that reason before they answer: split at the end marker, token-exact, and masked when asked."""

import pytest

from iterpo.records import Rollout
from iterpo.sampling.reasoning import split_reasoning
from iterpo.training.assemble import trained_mask


def _split(tokenizer, text, end="</think>", start="<think>"):
    ids = tokenizer.encode(text, add_special_tokens=False)
    return ids, split_reasoning(lambda x: tokenizer.decode(x, skip_special_tokens=True), ids, end, start)


def test_the_answer_follows_the_end_marker_and_the_reasoning_tokens_end_with_it(tokenizer):
    ids, part = _split(tokenizer, "<think>7 + 8 is 15</think> The answer is 15.")
    assert part.answer == "The answer is 15." and part.reasoning == "<think>7 + 8 is 15</think>"
    n = part.reasoning_tokens
    decode = lambda x: tokenizer.decode(x, skip_special_tokens=True)  # noqa: E731
    assert "</think>" in decode(ids[:n]) and "</think>" not in decode(ids[: n - 1])  # the fewest such tokens
    assert decode(ids[n:]).strip() == part.answer


@pytest.mark.parametrize(
    "text, answer, reasoning, all_reasoning",
    [
        ("The answer is 15.", "The answer is 15.", None, False),  # no marker: all answer
        ("<think>7 + 8 is", "", "<think>7 + 8 is", True),  # opened, never closed: no answer
        ("7 + 8 is 15</think>15", "15", "7 + 8 is 15</think>", False),  # no start marker needed
    ],
)
def test_responses_without_a_closed_thought(tokenizer, text, answer, reasoning, all_reasoning):
    ids, part = _split(tokenizer, text)
    assert (part.answer, part.reasoning) == (answer, reasoning)
    assert (part.reasoning_tokens == len(ids)) == all_reasoning
    assert part.reasoning_tokens == 0 or reasoning is not None


def test_a_custom_marker_and_masking_the_reasoning(tokenizer):
    ids, part = _split(tokenizer, "scratch: 2*3=6 ### 6", end="###", start=None)
    assert part.answer == "6" and part.reasoning == "scratch: 2*3=6 ###"
    ro = Rollout(
        "p", 0, 1, 0, part.answer, ids, "stop", reasoning=part.reasoning, reasoning_tokens=part.reasoning_tokens
    )
    n = part.reasoning_tokens
    assert trained_mask(ro) is None  # reasoning.train true: every token
    assert trained_mask(ro, mask_reasoning=True) == [k >= n for k in range(len(ids))]
    assert trained_mask(ro, shared=n + 1, mask_reasoning=True) == [k >= n + 1 for k in range(len(ids))]


def test_reasoning_is_refused_where_responses_are_episodes_or_tree_steps(tiny_model_dir, tmp_path):
    import yaml

    from iterpo.config import load_config
    from iterpo.errors import ConfigError
    from iterpo.plan import build_plan

    from helpers import tiny_config

    cfg = tiny_config(tiny_model_dir, tmp_path / "run")
    cfg["reasoning"] = {"end": "</think>"}
    cfg["environment"] = {"name": "calculator"}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(ConfigError, match="reasoning splits flat responses"):
        build_plan(load_config(path))
    del cfg["environment"]
    cfg["round"] = {"stages": [{"stage": "tree_search"}, "pair", "reference", "train"]}
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(ConfigError, match="does not split off a reasoning part"):
        build_plan(load_config(path))
