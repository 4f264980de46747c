"""RLOO and GRPO against values computed by hand, and their gradients against the estimators they stand for."""

import math

import pytest
import torch

from iterpo.errors import ConfigError
from iterpo.losses import ScoredBatch, get_loss


def _batch(logps, rewards, mask=None, lengths=None, **extra) -> ScoredBatch:
    logps = torch.tensor(logps, dtype=torch.float64, requires_grad=True)
    rewards = torch.tensor(rewards, dtype=torch.float64)
    mask = torch.ones_like(rewards, dtype=torch.bool) if mask is None else torch.tensor(mask)
    lengths = torch.ones_like(rewards) if lengths is None else torch.tensor(lengths, dtype=torch.float64)
    return ScoredBatch(logps=logps, rewards=rewards, mask=mask, lengths=lengths, **extra)


def test_rloo_advantage_is_reward_minus_the_mean_of_the_others():
    # one prompt, k = 3: rewards 1, 0, 0.5; with beta = 0 the advantages are
    # 1 - 0.25 = 0.75, 0 - 0.75 = -0.75, 0.5 - 0.5 = 0
    zeros = torch.zeros(1, 3, dtype=torch.float64)
    batch = _batch([[-2.0, -3.0, -4.0]], [[1.0, 0.0, 0.5]], ref_logps=zeros, prev_logps=zeros)
    out = get_loss("rloo")(batch)
    want = -(0.75 * -2.0 + -0.75 * -3.0 + 0.0 * -4.0) / 3
    assert out.loss.item() == pytest.approx(want)
    out.loss.backward()
    # d loss / d logp_i = -A_i / k: the REINFORCE estimator with the leave-one-out baseline
    assert batch.logps.grad[0].tolist() == pytest.approx([-0.25, 0.25, 0.0])


def test_rloo_kl_shaped_reward_padding_and_lone_samples():
    # prompt 1: two real samples of three; prompt 2: one sample (no baseline: contributes nothing)
    prev = torch.tensor([[-1.0, -2.0, 0.0], [-1.0, 0.0, 0.0]], dtype=torch.float64)
    ref = torch.tensor([[-1.5, -1.0, 0.0], [-3.0, 0.0, 0.0]], dtype=torch.float64)
    batch = _batch(
        [[-1.0, -2.0, 0.0], [-1.0, 0.0, 0.0]],
        [[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]],
        mask=[[True, True, False], [True, False, False]],
        ref_logps=ref,
        prev_logps=prev,
    )
    beta = 0.5
    out = get_loss("rloo", beta=beta)(batch)
    r1, r2 = 1.0 - beta * (-1.0 + 1.5), 0.0 - beta * (-2.0 + 1.0)  # 0.75, 0.5
    a1, a2 = r1 - r2, r2 - r1
    want_first = -(a1 * -1.0 + a2 * -2.0) / 2
    assert out.losses.tolist() == pytest.approx([want_first, 0.0])
    out.loss.backward()
    assert batch.logps.grad.flatten().tolist() == pytest.approx([-a1 / 2 / 2, -a2 / 2 / 2, 0.0, 0.0, 0.0, 0.0])


def _token_batch(rewards, token_logps, old_token_logps, slots, lengths, mask=None):
    """A scored batch with per-token log-probs; logps are their sums per sample."""
    tok = torch.tensor(token_logps, dtype=torch.float64, requires_grad=True)
    slot = torch.tensor(slots)
    B, n = len(rewards), len(rewards[0])
    seq = torch.zeros(B * n, dtype=torch.float64).index_add(0, slot, tok).view(B, n)
    return ScoredBatch(
        logps=seq,
        rewards=torch.tensor(rewards, dtype=torch.float64),
        mask=torch.ones(B, n, dtype=torch.bool) if mask is None else torch.tensor(mask),
        lengths=torch.tensor(lengths, dtype=torch.float64),
        token_logps=tok,
        ref_token_logps=torch.tensor(old_token_logps, dtype=torch.float64),
        token_slot=slot,
    )


def test_grpo_on_the_rounds_first_step_is_the_advantage_weighted_token_mean():
    # policy == sampling policy: rho = 1, KL = 0; rewards 1, 0 -> mean 0.5, unbiased std sqrt(0.5)
    tok = [-0.5, -1.0, -2.0, -0.1, -0.2]  # sample 0: two tokens, sample 1: three
    batch = _token_batch([[1.0, 0.0]], tok, tok, [0, 0, 1, 1, 1], [[2.0, 3.0]])
    loss = get_loss("grpo", eps=0.0)
    a = 0.5 / math.sqrt(0.5)
    assert loss.advantages(batch)[0].tolist() == pytest.approx([a, -a])
    out = loss(batch)
    assert out.loss.item() == pytest.approx(-(a - a) / 2)  # rho = 1: the surrogate is the advantage itself
    out.loss.backward()
    # d loss / d logp_t = -A_i / (|y_i| G) per token of sample i
    want = [-a / 2 / 2] * 2 + [a / 3 / 2] * 3
    assert batch.token_logps.grad.tolist() == pytest.approx(want)


def test_grpo_clips_the_ratio_and_adds_the_k3_kl():
    clip, beta = 0.2, 0.1
    old = [-1.0, -1.0, -1.0]
    new = [-1.0 + math.log(1.5), -1.0 + math.log(0.5), -1.0 + math.log(1.1)]  # rho: 1.5, 0.5, 1.1
    batch = _token_batch([[1.0, 0.0, 0.5]], new, old, [0, 1, 2], [[1.0, 1.0, 1.0]])
    loss = get_loss("grpo", clip=clip, beta=beta, eps=1e-4)
    a = loss.advantages(batch)[0].tolist()  # rewards 1, 0, 0.5: mean 0.5, std 0.5
    assert a == pytest.approx([0.5 / 0.5001, -0.5 / 0.5001, 0.0])
    rho = [1.5, 0.5, 1.1]
    surrogate = [min(r * x, min(max(r, 1 - clip), 1 + clip) * x) for r, x in zip(rho, a)]
    kl = [1 / r + math.log(r) - 1 for r in rho]  # pi_ref/pi - log(pi_ref/pi) - 1
    want = -sum(s - beta * k for s, k in zip(surrogate, kl)) / 3
    out = loss(batch)
    assert out.loss.item() == pytest.approx(want)
    assert out.extra["clipped"] == pytest.approx(2 / 3)
    out.loss.backward()
    # sample 0: rho 1.5 > 1.2 with A > 0, clipped: only the KL term's gradient, beta (1 - 1/rho) / G
    # sample 1: rho 0.5 < 0.8 with A < 0: min picks the clipped (constant) branch, same
    # sample 2: A = 0, inside the clip range: only the KL term
    g = batch.token_logps.grad.tolist()
    assert g == pytest.approx([beta * (1 - 1 / r) / 3 for r in rho])


def test_grpo_gradient_matches_finite_differences():
    torch.manual_seed(0)
    slots = [0, 0, 1, 2, 2, 2, 4, 5, 5]  # two prompts of three samples, sample 3 padded away
    old = (torch.randn(len(slots), dtype=torch.float64) - 2).tolist()
    new = [x + 0.05 * torch.randn(()).item() for x in old]
    batch = _token_batch(
        [[1.0, 0.2, 0.0], [0.0, 1.0, 0.7]],
        new,
        old,
        slots,
        [[2.0, 1.0, 3.0], [1.0, 1.0, 2.0]],
        mask=[[True, True, True], [False, True, True]],
    )
    loss = get_loss("grpo", clip=0.2, beta=0.04)

    def f(tok):
        return loss(
            ScoredBatch(
                logps=batch.logps,
                rewards=batch.rewards,
                mask=batch.mask,
                lengths=batch.lengths,
                token_logps=tok,
                ref_token_logps=batch.ref_token_logps,
                token_slot=batch.token_slot,
            )
        ).loss

    assert torch.autograd.gradcheck(f, (batch.token_logps,))


def test_grpo_without_reward_scaling_and_option_checks():
    tok = [-1.0, -1.0]
    batch = _token_batch([[3.0, 1.0]], tok, tok, [0, 1], [[1.0, 1.0]])
    assert get_loss("grpo", scale_rewards=False).advantages(batch).tolist() == [[1.0, -1.0]]
    with pytest.raises(ConfigError, match="clip"):
        get_loss("grpo", clip=1.5)
    with pytest.raises(ConfigError, match="beta"):
        get_loss("rloo", beta=-1.0)


def test_grpo_needs_the_rounds_starting_policy_as_reference():
    from iterpo.config import load_config
    from iterpo.plan import check_components

    config = load_config(overrides=["loss.name=grpo", "reference.policy=initial"])
    with pytest.raises(ConfigError, match="reference.policy 'previous'"):
        check_components(config)


def test_sft_is_the_mean_token_nll_of_each_prompts_demonstrations():
    # prompt 1: two demonstrations, 3 and 1 tokens, summed log-probs -6 and -2; prompt 2: one of 2 tokens, -1
    batch = _batch(
        [[-6.0, -2.0], [-1.0, 0.0]],
        [[1.0, 1.0], [1.0, 0.0]],
        mask=[[True, True], [True, False]],
        lengths=[[3.0, 1.0], [2.0, 1.0]],
    )
    out = get_loss("sft")(batch)
    assert out.losses.tolist() == pytest.approx([8.0 / 4, 1.0 / 2])
    out.loss.backward()
    assert batch.logps.grad.flatten().tolist() == pytest.approx([-1 / 4 / 2, -1 / 4 / 2, -1 / 2 / 2, 0.0])
