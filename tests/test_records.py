from iterpo.records import Rollout, by_prompt


def _rollout(prompt_id: str, i: int) -> Rollout:
    return Rollout(prompt_id, i, 1, i, f"answer {i}", [i], "stop")


def test_by_prompt_keeps_the_order_of_prompts_and_of_each_prompts_items():
    items = [_rollout("b", 0), _rollout("a", 0), _rollout("b", 1), _rollout("c", 0), _rollout("a", 1)]
    groups = by_prompt(iter(items))  # any iterable, read once
    assert list(groups) == ["b", "a", "c"]
    assert [[x.sample_idx for x in g] for g in groups.values()] == [[0, 1], [0, 1], [0]]
    assert groups["b"][1] is items[2]
    assert by_prompt([]) == {}
