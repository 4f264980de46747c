"""A trajectory's observation tokens (and a step pair's shared prefix) are context in every training path: the
pairwise, token-level and scored collates and the reference stage's scoring leave them out, so no loss term and
no gradient comes from predicting them."""

import random

import pytest
import torch

from iterpo.losses import get_loss
from iterpo.models.loading import load_model
from iterpo.models.logprobs import score_responses
from iterpo.records import Rollout, from_table, to_table
from iterpo.training import LiveReference
from iterpo.training.examples import GroupExample, PairExample, collate_pairs, collate_scored


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    return load_model(tiny_model_dir)


def _ids(rng, n):
    return [rng.randrange(5, 2000) for _ in range(n)]


def _definition(model, prompt, response, mask):
    """Per-token log-probs from one plain forward over prompt + response, summed over the policy's tokens."""
    logp = torch.log_softmax(model(input_ids=torch.tensor([prompt + response])).logits[0].float(), -1)
    return sum(logp[len(prompt) - 1 + k, t] for k, (t, keep) in enumerate(zip(response, mask)) if keep)


@pytest.fixture(scope="module")
def trajectory():
    """A prompt and two trajectories: policy turn, tool observation, policy turn (5 + 4 + 3 and 2 + 6 + 2)."""
    rng = random.Random(3)
    prompt = _ids(rng, 6)
    chosen, rejected = _ids(rng, 12), _ids(rng, 10)
    chosen_mask = [True] * 5 + [False] * 4 + [True] * 3
    rejected_mask = [True] * 2 + [False] * 6 + [True] * 2
    return prompt, chosen, chosen_mask, rejected, rejected_mask


def test_a_pair_scores_and_trains_on_the_policy_tokens_only(model, trajectory):
    prompt, chosen, cm, rejected, rm = trajectory
    example = PairExample(prompt, chosen, rejected, ref_logps=(-50.0, -40.0), chosen_mask=cm, rejected_mask=rm)
    batch = collate_pairs(model, [example], get_loss("dpo"), pad_id=0)
    want = torch.stack([_definition(model, prompt, chosen, cm), _definition(model, prompt, rejected, rm)])
    got = torch.stack([batch.chosen_logps[0], batch.rejected_logps[0]])
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)
    # length-normalised losses divide by the tokens the policy wrote
    assert batch.chosen_lengths.tolist() == [8.0] and batch.rejected_lengths.tolist() == [4.0]
    # the gradient is the definition's: nothing comes from predicting the observation tokens
    model.zero_grad()
    want.sum().backward()
    want_grad = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    got.sum().backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, want_grad[n], rtol=1e-4, atol=1e-6, msg=n)
    model.zero_grad()


def test_rewriting_an_observation_token_changes_no_term_it_predicts(model, trajectory):
    """Only the observation's own prediction would change when the last observation token changes... were it
    scored: the loss reads it only as context for the tokens after it."""
    prompt, chosen, cm, _, _ = trajectory
    last_obs = max(k for k, keep in enumerate(cm) if not keep)
    # the same response cut just after the observation: only policy tokens before it are scored
    cut, cut_mask = chosen[: last_obs + 1], cm[: last_obs + 1]
    other = list(cut)
    other[last_obs] = (other[last_obs] + 1) % 2000 + 5
    a = collate_pairs(
        model,
        [PairExample(prompt, cut, cut, (0.0, 0.0), chosen_mask=cut_mask, rejected_mask=cut_mask)],
        get_loss("dpo"),
        pad_id=0,
    )
    b = collate_pairs(
        model,
        [PairExample(prompt, other, other, (0.0, 0.0), chosen_mask=cut_mask, rejected_mask=cut_mask)],
        get_loss("dpo"),
        pad_id=0,
    )
    assert float(a.chosen_logps[0].detach()) == pytest.approx(float(b.chosen_logps[0].detach()), abs=1e-6)


def test_token_level_losses_see_only_policy_tokens(model, trajectory):
    prompt, chosen, cm, rejected, rm = trajectory
    example = PairExample(prompt, chosen, rejected, chosen_mask=cm, rejected_mask=rm)
    batch = collate_pairs(model, [example], get_loss("sparsepo"), pad_id=0, reference=LiveReference(model))
    assert batch.chosen_mask[0, : len(cm)].tolist() == cm
    assert batch.rejected_mask[0, : len(rm)].tolist() == rm
    for values in (batch.chosen_token_logps, batch.ref_chosen_token_logps, batch.chosen_token_kl):
        assert (values[0, : len(cm)][~torch.tensor(cm)] == 0).all()
    want = _definition(model, prompt, chosen, cm)
    torch.testing.assert_close(batch.chosen_logps[0], want, rtol=1e-5, atol=1e-4)


def test_scored_groups_and_reference_scoring_skip_observations(model, trajectory):
    prompt, chosen, cm, rejected, rm = trajectory
    example = GroupExample(prompt, [chosen, rejected], [1.0, 0.0], prev_logps=[0.0, 0.0], masks=[cm, rm])
    loss = get_loss("grpo")
    batch = collate_scored(model, [example], loss, pad_id=0, reference=LiveReference(model))
    want = torch.stack([_definition(model, prompt, chosen, cm), _definition(model, prompt, rejected, rm)])
    torch.testing.assert_close(batch.logps[0], want, rtol=1e-5, atol=1e-4)
    assert batch.lengths[0].tolist() == [8.0, 4.0]
    assert len(batch.token_logps) == 8 + 4  # one per policy token
    with torch.no_grad():
        stored = score_responses(model, [prompt, prompt], [chosen, rejected], 4, masks=[cm, None])
    assert stored[0] == pytest.approx(float(want[0].detach()), abs=1e-4)
    with torch.no_grad():  # None: every token scored
        assert stored[1] == pytest.approx(float(_definition(model, prompt, rejected, [True] * 10)), abs=1e-4)


def test_a_trajectory_rollout_round_trips_through_the_store():
    r = Rollout(
        "p",
        0,
        1,
        7,
        "42",
        [5, 6, 7, 8],
        "stop",
        policy_mask=[True, False, False, True],
        step_ends=[1, 4],
        transcript="<calc>6*7</calc> 42 The answer is 42",
    )
    back = from_table(to_table([r], Rollout), Rollout)
    assert back == [r] and back[0].policy_tokens == 2
    flat = from_table(to_table([Rollout("p", 1, 1, 7, "x", [5, 6], "stop")], Rollout), Rollout)[0]
    assert flat.policy_mask == [] and flat.policy_tokens == 2 and flat.transcript is None
