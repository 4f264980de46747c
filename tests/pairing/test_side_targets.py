"""Side targets of a pair: the judge's rationale and degrees of removed content, how training scores them, and
the losses that weigh them."""

import random

import pytest
import torch

from iterpo.config import PairingSection
from iterpo.losses import PreferenceBatch, get_loss
from iterpo.pairing import build_strategy
from iterpo.pairing.base import Candidate
from iterpo.pairing.build import add_side_targets
from iterpo.pairing.side import degree_targets, rationale_of, sentences, without_key_sentences
from iterpo.records import Judgement, Preference, Prompt, Rollout

PROMPT = Prompt("p", [{"role": "user", "content": "Tom has 3 apples and buys 4. How many?"}], "7")
ANSWER = "Tom starts with 3 apples. He buys 4 more apples. So he has 3 + 4 = 7. Done."


def _cand(idx, score, rationale=None, rationales=()):
    r = Rollout("p", idx, 1, 0, f"answer {idx}", [idx + 1], "stop")
    return Candidate(
        r, Judgement("p", idx, "j", score, "", rationale=rationale, rationales=list(rationales)), score, 0.5
    )


def test_key_sentences_go_first_and_degrees_count_them():
    assert sentences(ANSWER) == ["Tom starts with 3 apples.", "He buys 4 more apples.", "So he has 3 + 4 = 7.", "Done."]
    # words of 4+ letters count 1, numbers 2: 5, 5, 6, 1 -> the sum goes first, then the later of the tie
    assert without_key_sentences(ANSWER, 1) == "Tom starts with 3 apples. He buys 4 more apples. Done."
    assert without_key_sentences(ANSWER, 2) == "Tom starts with 3 apples. Done."
    pair = Preference("p", 0, 1, PROMPT.text, ANSWER, "8", 1.0, 0.0)
    targets = degree_targets(pair, 5)
    assert [t["target"] for t in targets] == ["0", "1", "2", "3"]  # at most one fewer than its 4 sentences
    assert targets[0]["request"].startswith("Question: Tom has 3") and ANSWER in targets[0]["request"]
    assert "Done." in targets[3]["request"] and "apples" not in targets[3]["request"].split("Answer:")[1]
    assert degree_targets(Preference("p", 0, 1, "q", "", "x", 1.0, 0.0), 2) == []


def test_rationales_come_from_a_pairwise_reply_or_both_pointwise_explanations():
    a = _cand(0, 1.0, rationale="clear and correct", rationales=["", "A is right: 7"])
    b = _cand(1, 0.0, rationale="wrong sum")
    assert rationale_of(a, b) == "A is right: 7"  # the reply comparing a (first) with b
    a.judgement.rationales = []
    assert rationale_of(a, b) == "On the preferred response: clear and correct\nOn the other response: wrong sum"
    assert rationale_of(_cand(0, 1.0), b) is None
    strategy = build_strategy(PairingSection(strategy="best_vs_worst", rationale=True, degrees=1), "pairs")
    [pair], _ = strategy.examples(PROMPT, [a, b], random.Random(0))
    missing = add_side_targets(pair, {("policy", 0): a, ("policy", 1): b}, True, 1)
    assert missing == 0 and pair.side[0]["target"].startswith("On the preferred response: clear")
    assert (
        "Preferred response: answer 0" in pair.side[0]["request"]
        and "Other response: answer 1" in pair.side[0]["request"]
    )
    assert [t["target"] for t in pair.side[1:]] == ["0"]  # "answer 0" is one sentence
    lone = Preference("p", 0, 1, "q", "a", "b", 1.0, 0.0)
    assert add_side_targets(lone, {("policy", 0): _cand(0, 1.0), ("policy", 1): b}, True, 0) == 1 and not lone.side


def test_side_losses_add_the_weighted_per_token_nll_by_hand():
    batch = PreferenceBatch(
        chosen_logps=torch.tensor([-1.0, -2.0]),
        rejected_logps=torch.tensor([-3.0, -1.0]),
        ref_chosen_logps=torch.tensor([-1.5, -2.0]),
        ref_rejected_logps=torch.tensor([-2.0, -2.0]),
        side_logps=torch.tensor([[-4.0, -3.0], [0.0, 0.0]]),
        side_lengths=torch.tensor([[2.0, 3.0], [1.0, 1.0]]),
        side_mask=torch.tensor([[True, True], [False, False]]),
    )
    out = get_loss("rationale_dpo", beta=0.5, gamma=2.0)(batch)
    delta = torch.tensor([(-1.0 + 1.5) - (-3.0 + 2.0), (-2.0 + 2.0) - (-1.0 + 2.0)])
    dpo = torch.nn.functional.softplus(-0.5 * delta)
    side = torch.tensor([(4.0 / 2 + 3.0 / 3) / 2, 0.0])  # the second pair has no side target
    assert out.losses == pytest.approx(dpo + 2.0 * side)
    assert out.extra["side_nll"] == pytest.approx(1.5) and out.extra["with_side"] == pytest.approx(0.5)
    assert get_loss("ssl_dpo").gamma == 0.1 and get_loss("ssl_dpo").needs == get_loss("rationale_dpo").needs


def test_collate_scores_each_side_target_after_its_own_request(tiny_model_dir):
    from iterpo.models.loading import load_model
    from iterpo.models.logprobs import score_responses
    from iterpo.training.examples import PairExample, collate_pairs

    model = load_model(tiny_model_dir)
    side = [([5, 6, 7], [8, 9]), ([10, 11], [12])]
    examples = [
        PairExample([1, 2], [3], [4], ref_logps=(0.0, 0.0), side=side),
        PairExample([1, 2], [5, 6], [7], ref_logps=(0.0, 0.0)),
    ]
    batch = collate_pairs(model, examples, get_loss("rationale_dpo"), pad_id=0)
    want = score_responses(model, [s[0] for s in side], [s[1] for s in side], 4, 0, None)
    assert batch.side_logps.shape == (2, 2) and batch.side_mask.tolist() == [[True, True], [False, False]]
    assert batch.side_logps[0].tolist() == pytest.approx(want, abs=1e-5)
    assert batch.side_lengths[0].tolist() == [2.0, 1.0]
