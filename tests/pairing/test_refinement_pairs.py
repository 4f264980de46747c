"""Pairs along refinement chains: each revision against the answer it revises, in the direct format (answers to
the prompt) or the refine format (after the request, the earlier answer in the context), as training reads them."""

import random

import pytest

from iterpo.config import PairingSection
from iterpo.errors import ConfigError
from iterpo.pairing import build_strategy
from iterpo.pairing.base import Candidate
from iterpo.records import Judgement, Prompt, Rollout
from iterpo.training.assemble import context_key, context_messages, responses_to_score, training_examples

PROMPT = Prompt("p", [{"role": "user", "content": "What is 2 + 3?"}], "5")


def _cand(idx, score, parent=None, tokens=None, source=None):
    context = []
    if parent is not None:
        context = [{"role": "assistant", "content": f"answer {parent}"}, {"role": "user", "content": "improve it"}]
    r = Rollout(
        "p",
        idx,
        1,
        0,
        f"answer {idx}",
        tokens or [100 + idx],
        "stop",
        source or ("policy" if parent is None else "refine"),
        parent=parent,
        context=context,
    )
    return Candidate(r, Judgement("p", idx, "j", score, ""), score, 0.5)


def _pairs(cands, **options):
    strategy = build_strategy(PairingSection(strategy="refinement", pairs_per_prompt=8, **options), "pairs")
    return strategy.examples(PROMPT, cands, random.Random(0))


# a chain 0 -> 3 -> 5 and a second revision 4 of answer 1, which got worse
CHAIN = [
    _cand(0, 0.0),
    _cand(1, 1.0),
    _cand(2, 0.0),
    _cand(3, 1.0, parent=0),
    _cand(4, 0.0, parent=1),
    _cand(5, 1.0, parent=3),
]


def test_each_revision_is_paired_with_its_parent_the_better_chosen():
    pairs, reason = _pairs(CHAIN)
    assert reason is None
    assert {(p.chosen_idx, p.rejected_idx) for p in pairs} == {(3, 0), (1, 4)}  # 5 ties 3: no pair
    assert all(p.context == [] for p in pairs)  # direct: answers to the prompt alone
    assert {(p.chosen_source, p.rejected_source) for p in pairs} == {("refine", "policy"), ("policy", "refine")}


def test_improved_keeps_only_corrections_and_min_chosen_filters_by_reward():
    pairs, _ = _pairs(CHAIN, direction="improved")
    assert [(p.chosen_idx, p.rejected_idx) for p in pairs] == [(3, 0)]
    assert _pairs(CHAIN, min_chosen=1.5) == ([], "no refinement differs from its parent by the margin")
    assert _pairs(CHAIN[:3], direction="improved") == ([], "no refinements")


def test_the_refine_format_trains_after_the_revisions_request():
    pairs, _ = _pairs(CHAIN, prompt_format="both", direction="improved")
    direct, refine = pairs
    assert (direct.chosen_idx, direct.rejected_idx) == (refine.chosen_idx, refine.rejected_idx) == (3, 0)
    assert direct.context == [] and refine.context == CHAIN[3].rollout.context
    [only] = _pairs(CHAIN, prompt_format="refine", direction="improved")[0]
    assert only.context == CHAIN[3].rollout.context


def test_samples_adds_best_vs_worst_of_the_first_answers_and_pairs_stay_distinct():
    pairs, _ = _pairs(CHAIN, samples=True, direction="improved", prompt_format="refine")
    assert [(p.chosen_idx, p.rejected_idx) for p in pairs] == [(3, 0)]  # 1 vs 0 repeats the rejected answer 0
    twins = [_cand(0, 0.0), _cand(1, 1.0, tokens=[100]), _cand(2, 1.0, parent=0, tokens=[100])]
    assert _pairs(twins, direction="improved") == ([], "every pair repeats a response")  # 2 repeats 0 verbatim
    with pytest.raises(ConfigError, match="prompt_format must be one of direct, refine, both"):
        _pairs(CHAIN, prompt_format="chat")


def test_training_and_the_reference_read_the_prompt_followed_by_the_context():
    pairs, _ = _pairs(CHAIN, prompt_format="both", direction="improved")
    rollouts = {(c.rollout.prompt_id, c.rollout.source, c.idx): c.rollout for c in CHAIN}
    key = context_key(CHAIN[3].rollout.context)
    assert context_messages(key) == CHAIN[3].rollout.context and context_key([]) == ""
    # the same two responses are scored once alone and once after the request
    assert responses_to_score(pairs) == [
        ("p", "p", "policy", 0, ""),
        ("p", "p", "policy", 0, key),
        ("p", "p", "refine", 3, ""),
        ("p", "p", "refine", 3, key),
    ]
    seen = []

    def prompt_ids(pid, context):
        seen.append((pid, context))
        return [1, 2] if not context else [1, 2, 3, 4]

    direct, refine = training_examples(pairs, rollouts, prompt_ids, [], frozenset())
    assert direct.prompt_ids == [1, 2] and refine.prompt_ids == [1, 2, 3, 4]
    assert seen == [("p", ""), ("p", key)]
    assert direct.chosen_ids == refine.chosen_ids == [103] and refine.rejected_ids == [100]
