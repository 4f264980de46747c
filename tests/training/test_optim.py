"""AdamW with a bfloat16 first moment: AdamW's steps, its state in less memory, in the trainer."""

import pytest
import torch

from iterpo.config import TrainSection
from iterpo.losses import get_loss
from iterpo.models.loading import load_model
from iterpo.training import optim, train

from helpers import sum_pairs


def _pairs_of_params(dtype, generator):
    """The same weights twice: a flat vector, a matrix, and a matrix stored transposed (not contiguous)."""
    first = [
        torch.randn(23, generator=generator, dtype=dtype),
        torch.randn(4, 6, generator=generator, dtype=dtype),
        torch.randn(5, 3, generator=generator, dtype=dtype).t().contiguous().t(),
    ]
    second = [x.clone() for x in first]  # clone keeps the layout
    assert not second[2].is_contiguous()
    return [torch.nn.Parameter(x) for x in first], [torch.nn.Parameter(x) for x in second]


def _steps(theirs, ours, generator, dtype, steps=6):
    """The same gradients into both optimizers, step by step; the second parameter gets none at step 3."""
    for step in range(steps):
        for a, b in zip(theirs.param_groups[0]["params"], ours.param_groups[0]["params"]):
            g = torch.randn(a.shape, generator=generator, dtype=dtype)
            a.grad, b.grad = torch.empty_like(a).copy_(g), torch.empty_like(b).copy_(g)  # laid out as the weights
        if step == 3:
            theirs.param_groups[0]["params"][1].grad = None
            ours.param_groups[0]["params"][1].grad = None
        theirs.step()
        ours.step()


def test_with_moments_in_the_weights_dtype_it_is_torchs_adamw(monkeypatch):
    monkeypatch.setattr(optim, "CPU_SLICE", 7)  # several slices per tensor, one of them short
    generator = torch.Generator().manual_seed(0)
    a, b = _pairs_of_params(torch.float64, generator)  # float64 weights keep float64 moments
    theirs = torch.optim.AdamW(a, lr=1e-2, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1)
    ours = optim.AdamWBf16Mean(b, lr=1e-2, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1)
    _steps(theirs, ours, generator, torch.float64)
    for x, y in zip(a, b):
        torch.testing.assert_close(y.detach(), x.detach(), rtol=0, atol=1e-12)
        assert not torch.equal(x.detach(), torch.zeros_like(x))
    assert ours.state[b[1]]["step"] == 5  # the step without a gradient is not counted, as in torch's AdamW


def test_float32_weights_keep_the_first_moment_in_bfloat16(monkeypatch):
    monkeypatch.setattr(optim, "CPU_SLICE", 7)
    generator = torch.Generator().manual_seed(1)
    a, b = _pairs_of_params(torch.float32, generator)
    theirs = torch.optim.AdamW(a, lr=1e-3, weight_decay=0.01)
    ours = optim.AdamWBf16Mean(b, lr=1e-3, weight_decay=0.01)
    _steps(theirs, ours, generator, torch.float32, steps=1)
    for x, y in zip(a, b):
        mean, square = ours.state[y]["exp_avg"], ours.state[y]["exp_avg_sq"]
        assert (mean.dtype, square.dtype) == (torch.bfloat16, torch.float32)
        # after one step m = 0.1 g: torch's float32 m rounded to bfloat16; v and the weights are AdamW's own
        expected = theirs.state[x]["exp_avg"].contiguous()
        assert torch.equal(mean, expected.to(torch.bfloat16))
        torch.testing.assert_close(square, theirs.state[x]["exp_avg_sq"].contiguous(), rtol=0, atol=0)
        torch.testing.assert_close(y.detach(), x.detach(), rtol=0, atol=0)
    _steps(theirs, ours, generator, torch.float32, steps=20)
    for x, y in zip(a, b):  # later steps differ by m's rounding: a small part of a step's size (lr)
        gap = float((x.detach() - y.detach()).abs().max())
        assert 0 < gap < 0.05 * 20 * 1e-3


def test_the_trainer_trains_with_it_as_with_float32_moments(tiny_model_dir, tokenizer):
    examples = sum_pairs(tokenizer, tiny_model_dir)
    losses, models = {}, {}
    for dtype in ("float32", "bfloat16"):
        models[dtype] = load_model(tiny_model_dir)
        config = TrainSection(lr=1e-3, batch_size=2, epochs=3, first_moment=dtype)
        log = train(models[dtype], examples, get_loss("dpo"), config, seed=0, pad_id=tokenizer.pad_token_id)
        losses[dtype] = [x["loss"] for x in log]
    assert losses["bfloat16"][0] == losses["float32"][0]  # the same first step's loss: the same weights
    assert losses["bfloat16"] == pytest.approx(losses["float32"], rel=2e-3)
    assert losses["bfloat16"][-1] < losses["bfloat16"][0]  # and it learns
    w32 = models["float32"].model.layers[0].mlp.up_proj.weight
    w16 = models["bfloat16"].model.layers[0].mlp.up_proj.weight
    assert not torch.equal(w32, w16)  # the moment's rounding shows in later steps
