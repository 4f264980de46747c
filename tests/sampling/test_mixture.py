"""Sampling from the geometric mixture of two policies (Nash-MD's opponent), token by token."""

import torch

from iterpo.models.loading import load_model, load_tokenizer
from iterpo.sampling.generate import generate
from iterpo.sampling.mixture import GeometricMixture
from iterpo.training import LiveReference


def _models(tiny_model_dir):
    policy = load_model(tiny_model_dir)
    other = load_model(tiny_model_dir)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.05 * torch.randn_like(p))  # a different policy
    return policy, other


def test_the_mixture_at_its_ends_is_either_policy_and_between_mixes_log_probs(tiny_model_dir):
    tok = load_tokenizer(tiny_model_dir)
    policy, other = _models(tiny_model_dir)
    prompts = [[1, 5, 7, 9], [3, 4]]
    seeds = [[11, 12, 13], [21, 22, 23]]

    def draw(model):
        return generate(model, tok, prompts, seeds, 1.0, 1.0, 6, 8)

    assert draw(GeometricMixture(policy, LiveReference(other), 0.0)) == draw(policy)
    assert draw(GeometricMixture(policy, LiveReference(other), 1.0)) == draw(other)
    halfway = draw(GeometricMixture(policy, LiveReference(other), 0.5))
    assert halfway != draw(policy) or halfway != draw(other)

    # the next-token log-probs are (1 - w) log pi + w log ref, up to a constant per position
    ids = torch.tensor([[1, 5, 7, 9]])
    mask, pos = torch.ones_like(ids), torch.arange(4)[None]
    mixture = GeometricMixture(policy, LiveReference(other), 0.3)
    with torch.no_grad():
        got = mixture(ids, mask, pos, past_key_values=mixture.new_cache()).logits[0, -1]
        a = torch.log_softmax(policy(ids).logits[0, -1].float(), -1)
        b = torch.log_softmax(other(ids).logits[0, -1].float(), -1)
    want = 0.7 * a + 0.3 * b
    assert torch.allclose(torch.log_softmax(got, -1), torch.log_softmax(want, -1), atol=1e-5)
