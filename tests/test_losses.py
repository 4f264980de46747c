import math

import pytest
import torch

from iterpo.errors import ConfigError
from iterpo.losses import PreferenceBatch, get_loss, list_losses


def _batch(pc, pr, rc, rr, requires_grad=False):
    t = lambda xs: torch.tensor(xs, dtype=torch.float64, requires_grad=requires_grad)
    return PreferenceBatch(t(pc), t(pr), t(rc), t(rr))


def test_dpo_matches_hand_computed_values():
    # pair 1: l_w = -1 - (-2) = 1, l_l = -3 - (-1) = -2, delta = 3
    # pair 2: l_w = -5 - (-4) = -1, l_l = -2 - (-2) = 0, delta = -1
    batch = _batch([-1.0, -5.0], [-3.0, -2.0], [-2.0, -4.0], [-1.0, -2.0])
    out = get_loss("dpo", beta=0.5)(batch)
    expected = [math.log(1 + math.exp(-1.5)), math.log(1 + math.exp(0.5))]
    assert out.losses.tolist() == pytest.approx(expected, abs=1e-12)
    assert float(out.loss) == pytest.approx(sum(expected) / 2, abs=1e-12)
    assert out.chosen_rewards.tolist() == pytest.approx([0.5, -0.5])
    assert out.rejected_rewards.tolist() == pytest.approx([-1.0, 0.0])
    m = out.metrics()
    assert m["reward_accuracy"] == 0.5 and m["reward_margin"] == pytest.approx((1.5 - 0.5) / 2)


def test_dpo_gradient_is_beta_sigmoid_of_minus_margin():
    batch = _batch([-1.0], [-3.0], [-2.0], [-1.0], requires_grad=True)
    beta = 0.1
    get_loss("dpo", beta=beta)(batch).loss.backward()
    delta = 3.0
    weight = beta / (1 + math.exp(beta * delta))  # beta * sigmoid(-beta * delta)
    assert float(batch.chosen_logps.grad) == pytest.approx(-weight, abs=1e-12)
    assert float(batch.rejected_logps.grad) == pytest.approx(weight, abs=1e-12)


def test_unknown_loss_and_hyperparameter_fail_listing_what_exists():
    with pytest.raises(ConfigError, match="known: .*dpo"):
        get_loss("nope")
    with pytest.raises(ConfigError, match="takes: beta"):
        get_loss("dpo", gamma=1.0)
    with pytest.raises(ConfigError, match="beta must be > 0"):
        get_loss("dpo", beta=0)
    assert "dpo" in list_losses()
