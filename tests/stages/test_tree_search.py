"""The tree_search stage: a search killed midway resumes to the identical tree and pairs; process judges; step
pairs scored after their divergence point by the reference stage too."""

import json
import signal
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from iterpo.records import Judgement, Prompt, Rollout

from helpers import cli, tiny_config

CONFIGS = Path(__file__).resolve().parent.parent.parent / "configs"


def _search_config(tiny_model_dir, run_dir: Path) -> Path:
    """mcts_dpo's round, one round, 6 prompts in shards of 2 (a middle shard to kill the search in)."""
    recipe = yaml.safe_load((CONFIGS / "mcts_dpo.yaml").read_text())
    cfg = tiny_config(tiny_model_dir, run_dir, **{"task.train_size": 6, "sampling.shard_size": 2})
    cfg["run"]["rounds"] = 1
    cfg["judge"] = {"name": "token_sum"}
    cfg["pairing"], cfg["loss"], cfg["round"] = recipe["pairing"], recipe["loss"], recipe["round"]
    cfg["round"]["stages"][0].update(simulations=3, max_step_tokens=2)
    path = run_dir.with_suffix(".yaml")
    path.write_text(yaml.safe_dump(cfg))
    return path


def _rows(run: Path, name: str) -> list:
    return pq.read_table(run / "round-001" / name).to_pylist()


def test_a_search_killed_midway_resumes_to_the_identical_tree_and_pairs(tiny_model_dir, tmp_path):
    clean, crash = tmp_path / "clean", tmp_path / "crash"
    code, out, err = cli("run", str(_search_config(tiny_model_dir, clean)))
    assert code == 0, err
    # each simulation advances the bar by its shard's 2 prompts: 8 is the middle shard's first simulation
    code, out, err = cli("run", str(_search_config(tiny_model_dir, crash)), failpoints="progress:tree search@8=kill")
    assert code == -signal.SIGKILL, err
    shards = crash / "round-001" / "tree"
    assert (shards / "shard-00000.parquet").exists() and not (shards / "shard-00001.parquet").exists()
    assert not (crash / "round-001" / "tree.parquet").exists()
    code, out, err = cli("resume", str(crash))
    assert code == 0, err
    for name in ("tree.parquet", "rollouts.parquet", "judgements.parquet", "preferences.parquet", "ref_logps.parquet"):
        assert _rows(crash, name) == _rows(clean, name), name
    assert len(_rows(clean, "tree.parquet")) > 6 and _rows(clean, "preferences.parquet")
    logs = [(run / "round-001" / "train.jsonl").read_text().splitlines() for run in (clean, crash)]
    assert [json.loads(x)["loss"] for x in logs[0]] == [json.loads(x)["loss"] for x in logs[1]]
    assert not shards.exists()  # the shards are folded into tree.parquet


def _node(tokenizer, prompt_id: str, steps: list[str], idx: int = 1) -> Rollout:
    ids, ends = [], []
    for s in steps:
        ids += tokenizer.encode(s, add_special_tokens=False)
        ends.append(len(ids))
    return Rollout(prompt_id, idx, 1, 0, "".join(steps), ids, "step", "tree", step_ends=ends)


def test_prm_scores_the_last_step_by_its_good_and_bad_label(tiny_model_dir, tokenizer):
    import torch
    from transformers import AutoModelForCausalLM

    from iterpo.judges import make_judge
    from iterpo.judges.process import steps_of

    prompt = Prompt("p", [{"role": "user", "content": "What is 12 * 3?"}], "36")
    judge = make_judge("prm", {"path": tiny_model_dir})
    nodes = [_node(tokenizer, "p", ["12 * 3 = 36.\n", "The answer is 36."]), _node(tokenizer, "p", ["It is 35."], 2)]
    assert steps_of(tokenizer, nodes[0]) == ["12 * 3 = 36.", "The answer is 36."]
    got = [j.score for j in judge.judge(prompt, nodes)]
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    good = tokenizer.encode("+", add_special_tokens=False)[0]
    bad = tokenizer.encode("-", add_special_tokens=False)[0]
    for node, score in zip(nodes, got):  # one sequence alone, no padding: P(+) / (P(+) + P(-)) after the last tag
        text = "What is 12 * 3?\n" + "\n".join(s + " ки" for s in steps_of(tokenizer, node))
        with torch.no_grad():
            logits = model(torch.tensor([tokenizer.encode(text, add_special_tokens=False)])).logits[0, -1]
        p = torch.softmax(logits[[good, bad]], -1)[0].item()
        assert score == pytest.approx(p, abs=1e-5) and 0 < score < 1
    assert got[0] != got[1]


def test_step_judge_asks_the_policy_about_the_last_step_only(tiny_model_dir, tokenizer):
    from iterpo.judges import JudgeCache, JudgeContext, judge_with_cache, make_judge
    from iterpo.models.loading import load_model

    prompt = Prompt("p", [{"role": "user", "content": "What is 12 * 3?"}], "36")
    policy = load_model(tiny_model_dir, "float32")
    judge = make_judge("step_judge", {})
    cache = JudgeCache.__new__(JudgeCache)  # only get/put/peek are used here
    store: dict = {}
    cache.get, cache.put, cache.peek = store.get, store.__setitem__, store.get
    judge.setup(JudgeContext(1, 0, cache, lambda: policy, tokenizer))
    same_last = [_node(tokenizer, "p", ["a\n", "36"], 1), _node(tokenizer, "p", ["b\n", "36"], 2)]
    scores = [j.score for j in judge_with_cache(judge, prompt, same_last, cache)]
    assert all(0 < s < 1 for s in scores) and scores[0] != scores[1]  # the earlier steps are in the question
    assert len(store) == 2  # cached per response
    again = judge_with_cache(judge, prompt, same_last, cache)
    assert [j.score for j in again] == scores and len(store) == 2


def test_the_reference_scores_step_pairs_after_their_divergence_point_and_refuses_two_prefixes():
    from iterpo.records import Preference, RankedGroup
    from iterpo.training.assemble import shared_prefixes, trained_mask

    pair = Preference("p", 1, 2, "q", "a", "b", 1.0, 0.0, shared_prefix=3, chosen_source="tree", rejected_source="tree")
    group = RankedGroup("p", "q", [3, 4], ["c", "d"], [1.0, 0.0], ["tree", "tree"], shared_prefix=2)
    assert shared_prefixes([pair, group]) == {
        ("p", "p", "tree", 1, ""): 3,
        ("p", "p", "tree", 2, ""): 3,
        ("p", "p", "tree", 3, ""): 2,
        ("p", "p", "tree", 4, ""): 2,
    }
    ro = Rollout("p", 1, 1, 0, "", [5, 6, 7, 8, 9], "stop", "tree", policy_mask=[True, True, True, False, True])
    assert trained_mask(ro, 3) == [False, False, False, False, True]  # after the prefix, the policy's tokens
    assert trained_mask(ro, 0) == ro.policy_mask
    other = RankedGroup("p", "q", [1, 5], ["a", "e"], [1.0, 0.0], ["tree", "tree"], shared_prefix=1)
    with pytest.raises(ValueError, match="tree#1 of prompt p is named with 3 and with 1 shared prefix tokens"):
        shared_prefixes([pair, other])


def test_visit_smoothing_needs_a_tree_searchs_visit_counts():
    from iterpo.config import PairingSection
    from iterpo.pairing import Candidate, build_strategy

    strategy = build_strategy(PairingSection(strategy="divergence", visit_smoothing=True), "pairs")
    prompt = Prompt("p", [{"role": "user", "content": "q"}])
    cands = [
        Candidate(Rollout("p", i, 1, 0, "", [1, i], "stop", step_ends=[1, 2]), Judgement("p", i, "j", s, ""), s, 0.5)
        for i, s in ((1, 1.0), (2, 0.0))
    ]
    with pytest.raises(ValueError, match="visit_smoothing reads visit counts"):
        strategy.examples(prompt, cands, None)
    for c, n in zip(cands, (6, 2)):
        c.judgement.visits = n
    [pair], _ = strategy.examples(prompt, cands, None)
    assert pair.shared_prefix == 1 and pair.soft_label == pytest.approx(1 / (1 + 2 / 6))


def test_a_judge_failing_too_often_stops_the_search_before_its_shard_is_written(tiny_model_dir, tmp_path):
    run = tmp_path / "failing"
    path = _search_config(tiny_model_dir, run)
    cfg = yaml.safe_load(path.read_text())
    cfg["judge"] = {"name": "token_sum_failing", "max_failed_share": 0.01}  # a few of the verdicts fail
    path.write_text(yaml.safe_dump(cfg))
    code, out, err = cli("run", str(path))
    assert code != 0 and "tree search:" in err and "verdicts failed, above judge.max_failed_share 0.01" in err, err
    # the shards searched before the share was crossed are kept (a resume starts after them); the one that crossed
    # it, and those after it, are not written, nor is the search's result
    tree = run / "round-001" / "tree"
    written = sorted(p.name for p in tree.iterdir()) if tree.exists() else []
    assert written == [f"shard-{n:05d}.parquet" for n in range(len(written))] and len(written) < 3, written
    assert not (run / "round-001" / "tree.parquet").exists() and not (run / "round-001" / "rollouts.parquet").exists()
