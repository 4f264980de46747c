"""Lean decoder layers (models/lean.py) compute the model's own forward and gradients, and switch off cleanly."""

import pytest
import torch
from transformers import LlamaForCausalLM

from iterpo.models.lean import lean_layers
from iterpo.models.loading import load_model
from iterpo.models.packing import Layout, packed_attention, sequence_logps
from iterpo.training.trainer import set_checkpointing

from helpers import tiny_llama_config

GROUPS = [([5, 9, 11, 40, 7], [[12, 13, 14], [15]]), ([3, 4], [[21, 22, 23, 24, 25]])]


def _logps_and_grads(model, layout, lean, in_place=False):
    model.zero_grad(set_to_none=True)
    if lean:
        # (training holds packed attention for its whole length: a checkpointed layer re-runs in the backward)
        with packed_attention(model), lean_layers(model, grads_in_place=in_place) as switched:
            # two norms and an MLP per layer and the final norm; with in-place gradients the attention's four
            # projections too
            assert switched == (7 if in_place else 3) * model.config.num_hidden_layers + 1
            logps = sequence_logps(model, GROUPS, layout)
            logps.sum().backward()
    else:
        logps = sequence_logps(model, GROUPS, layout)
        logps.sum().backward()
    return logps.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize(
    "padding_free,in_place,checkpointing",
    [(False, False, False), (True, False, False), (True, True, False), (True, True, True)],
    ids=["padded", "padding-free", "grads-in-place", "in-place-checkpointed"],
)
def test_lean_layers_give_the_models_log_probs_and_gradients(tiny_model_dir, padding_free, in_place, checkpointing):
    model = load_model(tiny_model_dir)
    layout = Layout(padding_free=padding_free)
    want, want_grads = _logps_and_grads(model, layout, lean=False)
    if checkpointing:  # the recomputed forward's saved tensors are detached aliases of the weights
        model.train()
        set_checkpointing(model, True)
    got, grads = _logps_and_grads(model, layout, lean=True, in_place=in_place)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-5)
    assert grads.keys() == want_grads.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(grad, want_grads[name], rtol=1e-5, atol=1e-6, msg=name)
    assert not any("forward" in vars(m) for m in model.modules())  # every instance back on its class's forward


def test_bfloat16_weights_take_the_lean_path_within_bfloat16_rounding(tiny_model_dir):
    model = load_model(tiny_model_dir, dtype="bfloat16")
    want, want_grads = _logps_and_grads(model, Layout(), lean=False)
    got, grads = _logps_and_grads(model, Layout(), lean=True)
    torch.testing.assert_close(got, want, rtol=2e-2, atol=5e-2)
    for name, grad in grads.items():
        scale = want_grads[name].float().abs().max().item()
        assert (grad.float() - want_grads[name].float()).abs().max().item() <= 0.05 * scale + 1e-3, name


def test_under_autocast_the_models_own_forward_runs(tiny_model_dir):
    model = load_model(tiny_model_dir)
    mlp, x = model.model.layers[0].mlp, torch.randn(1, 3, model.config.hidden_size)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        want = mlp(x)
        with lean_layers(model):
            got = mlp(x)
    assert got.dtype == want.dtype == torch.bfloat16
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_modules_it_cannot_reproduce_are_left_alone(tokenizer):
    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_llama_config(tokenizer, mlp_bias=True))  # biased projections: no lean MLP
    with lean_layers(model) as switched:
        assert switched == 2 * model.config.num_hidden_layers + 1  # the norms only
        assert "forward" not in vars(model.model.layers[0].mlp)
        assert "forward" in vars(model.model.layers[0].input_layernorm)
    norm = model.model.layers[0].input_layernorm
    norm.forward = lambda x: x  # a forward someone else gave the instance is neither replaced nor removed
    with lean_layers(model) as switched:
        assert switched == 2 * model.config.num_hidden_layers
        assert norm.forward(1) == 1
    assert norm.forward(1) == 1


def test_a_second_derivative_through_lean_layers_raises_instead_of_coming_out_wrong(tiny_model_dir):
    model = load_model(tiny_model_dir)
    x = torch.randn(1, 3, model.config.hidden_size, requires_grad=True)
    with lean_layers(model):
        (grad,) = torch.autograd.grad(model.model.layers[0].mlp(x).sum(), x, create_graph=True)
        with pytest.raises(RuntimeError, match="does not require grad"):  # the first derivative has no graph
            grad.sum().backward()
