"""Step-level pairs at divergence points: siblings are found by their shared steps, and training reads only the
tokens after the divergence point (the shared steps are context)."""

import random

import pytest
import torch

from iterpo.config import PairingSection
from iterpo.losses import get_loss
from iterpo.models.loading import load_model
from iterpo.pairing import build_strategy
from iterpo.pairing.base import Candidate
from iterpo.records import Judgement, Prompt, Rollout
from iterpo.training.assemble import training_examples
from iterpo.training.examples import collate_pairs

PROMPT = Prompt("p", [{"role": "user", "content": "q"}], "1")
A, B, C = [11, 12, 13], [21, 22], [31, 32, 33, 34]  # three first steps
X, Y = [41, 42], [51, 52, 53]  # second steps


def _node(idx, steps, score):
    ids = [t for s in steps for t in s]
    ends, n = [], 0
    for s in steps:
        n += len(s)
        ends.append(n)
    r = Rollout("p", idx, 1, 0, f"node {idx}", ids, "stop", step_ends=ends)
    return Candidate(r, Judgement("p", idx, "value", score, ""), score, 0.5)


def _strategy(**options):
    return build_strategy(PairingSection(strategy="divergence", pairs_per_prompt=4, **options), "pairs")


def test_siblings_pair_best_against_worst_at_their_divergence_point():
    cands = [
        _node(0, [A], 0.2),  # children of the root
        _node(1, [B], 0.9),
        _node(2, [C], 0.5),
        _node(3, [A, X], 1.0),  # children of A
        _node(4, [A, Y], 0.0),
        _node(5, [B, X], 0.7),  # an only child: no pair
    ]
    pairs, why = _strategy().examples(PROMPT, cands, random.Random(0))
    assert why is None
    got = {(p.chosen_idx, p.rejected_idx, p.shared_prefix) for p in pairs}
    assert got == {(3, 4, len(A)), (1, 0, 0)}
    assert pairs[0].chosen_idx == 3  # the largest gap first
    pairs, why = _strategy(margin=0.8).examples(PROMPT, cands, random.Random(0))
    assert [(p.chosen_idx, p.rejected_idx) for p in pairs] == [(3, 4)]
    assert _strategy(margin=2.0).examples(PROMPT, cands, random.Random(0)) == ([], "no siblings differ by the margin")
    assert _strategy().examples(PROMPT, [cands[3], cands[5]], random.Random(0)) == ([], "no siblings")
    with pytest.raises(Exception, match="margin"):
        _strategy(margin=-1)


def test_a_step_pair_trains_only_after_the_divergence_point(tiny_model_dir):
    model = load_model(tiny_model_dir)
    cands = [_node(3, [A, X], 1.0), _node(4, [A, Y], 0.0)]
    [pair], _ = _strategy().examples(PROMPT, cands, random.Random(0))
    rollouts = {("p", "policy", c.idx): c.rollout for c in cands}
    prompt_ids = [5, 6, 7]
    [example] = training_examples([pair], rollouts, lambda pid, context: prompt_ids, [], frozenset())
    assert example.chosen_mask == [False] * len(A) + [True] * len(X)
    assert example.rejected_mask == [False] * len(A) + [True] * len(Y)
    example.ref_logps = (0.0, 0.0)
    batch = collate_pairs(model, [example], get_loss("dpo"), pad_id=0)
    # the definition: log-probs of the diverging steps given the prompt and the shared step
    logp = torch.log_softmax(model(input_ids=torch.tensor([prompt_ids + A + X])).logits[0].float(), -1)
    want = sum(logp[len(prompt_ids) + len(A) - 1 + k, t] for k, t in enumerate(X))
    torch.testing.assert_close(batch.chosen_logps[0], want, rtol=1e-5, atol=1e-4)
    # no gradient reaches the shared step's own predictions: the loss is the same whatever the model assigns them
    model.zero_grad()
    batch.chosen_logps.sum().backward()
    g = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    want.backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, g[n], rtol=1e-4, atol=1e-6, msg=n)
