"""Packed log-probs (shared prompt, padding-free rows, response-only chunked logits) equal the plain computation."""

import itertools
import random

import pytest
import torch

from iterpo.models.loading import load_model
from iterpo.models.logprobs import score_responses
from iterpo.models.packing import PLAIN, Layout, pack, sequence_logps

LAYOUTS = [Layout(*flags) for flags in itertools.product([False, True], repeat=3)]


def _plain_logps(model, groups):
    """One forward per response over prompt + response, log-softmax of the full logits: the definition."""
    out = []
    for prompt, responses in groups:
        for r in responses:
            ids = torch.tensor([prompt + r])
            logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)  # (T, V)
            out.append(sum(logp[len(prompt) - 1 + k, t] for k, t in enumerate(r)))
    return torch.stack(out)


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    return load_model(tiny_model_dir)


@pytest.fixture(scope="module")
def groups():
    rng = random.Random(0)

    def ids(n):
        return [rng.randrange(5, 2000) for _ in range(n)]

    # prompts of different lengths, 1 to 3 responses each, lengths 1..9 (a 1-token response included)
    return [
        (ids(7), [ids(3), ids(9)]),
        (ids(2), [ids(1)]),
        (ids(12), [ids(4), ids(4), ids(6)]),
        (ids(5), [ids(8), ids(2)]),
    ]


@pytest.mark.parametrize("layout", LAYOUTS, ids=str)
def test_every_layout_gives_the_plain_log_probs_and_gradients(model, groups, layout):
    model.zero_grad()
    want = _plain_logps(model, groups)
    want.sum().backward()
    want_grad = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    got = sequence_logps(model, groups, layout, pad_id=0)
    assert got.shape == (8,)
    torch.testing.assert_close(got, want.detach(), rtol=1e-5, atol=1e-4)
    got.sum().backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, want_grad[n], rtol=1e-4, atol=1e-5, msg=n)
    model.zero_grad()


def test_the_chunked_output_layer_gives_the_same_values_and_gradients_for_any_chunk(model, groups):
    one = sequence_logps(model, groups, Layout(chunk_rows=1))
    one.sum().backward()
    grad = model.lm_head.weight.grad.clone()
    model.zero_grad()
    many = sequence_logps(model, groups, Layout(chunk_rows=4096))
    many.sum().backward()
    torch.testing.assert_close(one, many)
    torch.testing.assert_close(model.lm_head.weight.grad, grad, rtol=1e-4, atol=1e-4)  # summation order differs
    model.zero_grad()


def test_a_shared_padding_free_pack_holds_each_prompt_once_and_no_padding(groups):
    packed = pack(groups, Layout())
    prompt_tokens = sum(len(p) for p, _ in groups)
    response_tokens = sum(len(r) for _, rs in groups for r in rs)
    assert (
        packed.input_ids.shape == (1, prompt_tokens + response_tokens)
        and packed.tokens == prompt_tokens + response_tokens
    )
    assert packed.targets.numel() == response_tokens and packed.n == 8
    plain = pack(groups, PLAIN)
    assert plain.input_ids.shape == (8, max(len(p) + len(r) for p, rs in groups for r in rs))
    assert plain.tokens == sum(len(p) + len(r) for p, rs in groups for r in rs)
    # the third group's second response restarts its positions after the prompt and cannot see the first response
    p, rs = groups[2]
    start = len(groups[0][0]) + 12 + len(groups[1][0]) + 1
    second = start + len(p) + len(rs[0])
    assert packed.position_ids[0, second].item() == len(p)
    g_mask = packed.attention_mask[2, 0]  # (Lg, Lg) of the third group
    local = len(p) + len(rs[0])
    assert g_mask[local, : len(p)].all() and not g_mask[local, len(p) : local].any() and g_mask[local, local]


def test_scoring_many_responses_groups_shared_prompts_and_keeps_the_order(model, groups):
    prompts = [p for p, rs in groups for _ in rs]
    responses = [r for _, rs in groups for r in rs]
    order = [3, 0, 6, 1, 7, 5, 2, 4]  # shuffled, so groups must be found rather than assumed contiguous
    got = score_responses(model, [prompts[i] for i in order], [responses[i] for i in order], batch_size=3)
    with torch.no_grad():
        want = _plain_logps(model, groups)[order]
    torch.testing.assert_close(torch.tensor(got), want, rtol=1e-5, atol=1e-4)


def test_empty_responses_are_refused(model):
    with pytest.raises(ValueError, match="at least one token"):
        pack([([1, 2], [[]])])


@pytest.mark.parametrize("layout", [Layout(), PLAIN], ids=str)
def test_context_tokens_in_a_response_are_read_but_never_scored_or_trained(model, groups, layout):
    """A trajectory's observation tokens (a tool's output) condition what follows but contribute no log-prob,
    so no gradient reaches the model through predicting them."""
    prompt, (first, second) = groups[0]
    produced = [[True, False, True], [k % 3 != 1 for k in range(len(second))]]
    masked = sequence_logps(model, [(prompt, [first, second], produced)], layout)
    per_token = []  # the definition: every token's log-prob given everything before it, context included
    for r in (first, second):
        logp = torch.log_softmax(model(input_ids=torch.tensor([prompt + r])).logits[0].float(), -1)
        per_token.append([logp[len(prompt) - 1 + k, t] for k, t in enumerate(r)])
    want = torch.stack([sum(lp for lp, keep in zip(row, m) if keep) for row, m in zip(per_token, produced)])
    torch.testing.assert_close(masked, want.detach(), rtol=1e-5, atol=1e-4)
    model.zero_grad()
    want.sum().backward()
    want_grad = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    masked.sum().backward()
    for n, p in model.named_parameters():  # the same gradients: none from predicting the context tokens
        torch.testing.assert_close(p.grad, want_grad[n], rtol=1e-4, atol=1e-5, msg=n)
    model.zero_grad()
    # an observation token's own prediction gets no gradient: changing which token it is moves no scored term
    # except through the context it gives the tokens after it, and a response of observations alone scores 0
    only_context = sequence_logps(model, [(prompt, [first], [[False] * len(first)])], layout)
    assert float(only_context[0].detach()) == 0.0
    with pytest.raises(ValueError, match="one entry per token"):
        sequence_logps(model, [(prompt, [first], [[True]])], layout)


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_gradients_added_in_place_equal_autograd_s_over_several_passes(tokenizer, groups, tied):
    """grads_in_place writes the output layer's weight gradient into .grad itself (and, tied, the embedding's
    as sparse rows after it): two passes of training accumulate what autograd's own accumulation gives, whether
    .grad starts empty or not."""
    from transformers import LlamaForCausalLM

    from helpers import tiny_llama_config

    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_llama_config(tokenizer, tie_word_embeddings=tied))
    assert (model.get_input_embeddings().weight is model.lm_head.weight) == tied
    grads = {}
    for in_place in (False, True):
        layout = Layout(grads_in_place=in_place)
        model.zero_grad()
        for part in (groups[:2], groups[2:]):  # two passes into one gradient, responses weighted unequally
            logps = sequence_logps(model, part, layout)
            (logps * torch.linspace(0.5, 1.5, len(logps))).sum().backward()
        grads[in_place] = {n: p.grad.clone() for n, p in model.named_parameters()}
        assert all(not g.is_sparse for g in grads[in_place].values())
    for n in grads[False]:
        torch.testing.assert_close(grads[True][n], grads[False][n], rtol=1e-5, atol=1e-6, msg=n)
    with torch.no_grad():  # scoring alone (the reference pass) writes no gradient
        model.zero_grad()
        sequence_logps(model, groups, Layout())
    assert model.lm_head.weight.grad is None
