"""Every registered loss against values computed by hand, and against TRL 1.16 where TRL has it."""

import math

import pytest
import torch

from iterpo.errors import ConfigError
from iterpo.losses import PreferenceBatch, RankedBatch, UnpairedBatch, get_loss, list_losses

from trl_reference import trl_dpo_loss, trl_kto_losses


def t(xs, grad=False):
    return torch.tensor(xs, dtype=torch.float64, requires_grad=grad)


def sp(x):  # softplus, -log sigmoid(-x)
    return math.log1p(math.exp(x))


def sig(x):
    return 1 / (1 + math.exp(-x))


# Two pairs: l_w = -1 - (-2) = 1, l_l = -3 - (-1) = -2, delta = 3; and l_w = -1, l_l = 0, delta = -1.
PC, PR, RC, RR = [-1.0, -5.0], [-3.0, -2.0], [-2.0, -4.0], [-1.0, -2.0]
LW, LL = [1.0, -1.0], [-2.0, 0.0]
LEN_C, LEN_R = [4, 2], [5, 3]


def pair_batch(grad=False, **extra):
    return PreferenceBatch(t(PC, grad), t(PR, grad), t(RC), t(RR), t(LEN_C), t(LEN_R), **extra)


EXPECTED = {  # name, hyperparameters -> per-pair loss as a function of (l_w, l_l, beta)
    ("dpo", 0.5): lambda w, l, b: sp(-b * (w - l)),
    ("hinge", 0.5): lambda w, l, b: max(0.0, 1 - b * (w - l)),
    ("ipo", 0.5): lambda w, l, b: (w - l - 1 / (2 * b)) ** 2,
    ("nca", 0.5): lambda w, l, b: sp(-b * w) + 0.5 * sp(b * w) + 0.5 * sp(b * l),
    ("apo_zero", 0.5): lambda w, l, b: (1 - sig(b * w)) + sig(b * l),
    ("apo_down", 0.5): lambda w, l, b: sig(b * w) + 1 - sig(b * (w - l)),
    ("sppo_hard", 0.5): lambda w, l, b: (w - 0.5 / b) ** 2 + (l + 0.5 / b) ** 2,
}


@pytest.mark.parametrize("name,beta", list(EXPECTED))
def test_margin_losses_match_hand_computed_values(name, beta):
    out = get_loss(name, beta=beta)(pair_batch())
    want = [EXPECTED[(name, beta)](w, l, beta) for w, l in zip(LW, LL)]
    assert out.losses.tolist() == pytest.approx(want, abs=1e-12)
    assert float(out.loss) == pytest.approx(sum(want) / 2, abs=1e-12)
    assert out.chosen_rewards.tolist() == pytest.approx([beta * w for w in LW])
    assert out.rejected_rewards.tolist() == pytest.approx([beta * l for l in LL])


def test_dpo_metrics_and_gradient():
    batch = pair_batch(grad=True)
    out = get_loss("dpo", beta=0.1)(batch)
    m = out.metrics()
    assert m["reward_accuracy"] == 0.5 and m["reward_margin"] == pytest.approx(0.1 * (3 + -1) / 2)
    out.loss.backward()
    weight = 0.1 * sig(-0.1 * 3) / 2  # beta * sigmoid(-beta delta), halved by the batch mean
    assert float(batch.chosen_logps.grad[0]) == pytest.approx(-weight, abs=1e-12)
    assert float(batch.rejected_logps.grad[0]) == pytest.approx(weight, abs=1e-12)


def test_cdpo_values_and_stationary_margin():
    eps, beta = 0.1, 0.5
    out = get_loss("cdpo", beta=beta, label_smoothing=eps)(pair_batch())
    want = [(1 - eps) * sp(-beta * (w - l)) + eps * sp(beta * (w - l)) for w, l in zip(LW, LL)]
    assert out.losses.tolist() == pytest.approx(want, abs=1e-12)
    # the gradient vanishes at beta * delta = log((1 - eps) / eps)
    delta = math.log((1 - eps) / eps) / beta
    b = PreferenceBatch(t([delta], True), t([0.0], True), t([0.0]), t([0.0]))
    get_loss("cdpo", beta=beta, label_smoothing=eps)(b).loss.backward()
    assert abs(float(b.chosen_logps.grad)) < 1e-12


def test_mcts_dpo_smooths_each_pair_by_its_own_label():
    beta, soft = 0.5, [0.9, 0.3]  # eps = 1 - soft label, capped at 0.5: 0.1, then 0.5
    out = get_loss("mcts_dpo", beta=beta)(pair_batch(soft_label=t(soft)))
    eps = [0.1, 0.5]
    want = [(1 - e) * sp(-beta * (w - l)) + e * sp(beta * (w - l)) for e, w, l in zip(eps, LW, LL)]
    assert out.losses.tolist() == pytest.approx(want, abs=1e-12)
    same = get_loss("cdpo", beta=beta, label_smoothing=0.1)(pair_batch()).losses  # one eps for all: cDPO
    assert get_loss("mcts_dpo", beta=beta)(pair_batch(soft_label=t([0.9, 0.9]))).losses.tolist() == pytest.approx(
        same.tolist(), abs=1e-12
    )


def test_margin_dpo_subtracts_each_pairs_margin_and_is_dpo_at_zero():
    beta, m = 0.5, [0.3, -1.0]
    out = get_loss("margin_dpo", beta=beta)(pair_batch(margin=t(m)))
    want = [sp(mi - beta * (w - l)) for mi, w, l in zip(m, LW, LL)]  # -log sigmoid(beta*delta - m)
    assert out.losses.tolist() == pytest.approx(want, abs=1e-12)
    assert out.extra["target_margin"] == pytest.approx(sum(m) / 2)
    dpo = get_loss("dpo", beta=beta)(pair_batch()).losses
    zero = get_loss("margin_dpo", beta=beta)(pair_batch(margin=t([0.0, 0.0]))).losses
    assert zero.tolist() == pytest.approx(dpo.tolist(), abs=1e-12)
    # the gradient vanishes only as beta*delta - m grows: a pair at beta*delta = m still has DPO's weight at 0
    b = PreferenceBatch(t([2.0], True), t([0.0], True), t([0.0]), t([0.0]), margin=t([beta * 2.0]))
    get_loss("margin_dpo", beta=beta)(b).loss.backward()
    assert float(b.chosen_logps.grad) == pytest.approx(-beta * 0.5, abs=1e-12)
    with pytest.raises(ValueError, match="target margins"):
        get_loss("margin_dpo", beta=beta)(pair_batch())


def test_rdpo_is_unbiased_and_can_go_negative():
    eps, beta = 0.2, 0.5
    loss = get_loss("rdpo", beta=beta, flip_rate=eps)
    fwd = loss(pair_batch()).losses
    flipped = loss(PreferenceBatch(t(PR), t(PC), t(RR), t(RC))).losses  # labels swapped
    dpo = get_loss("dpo", beta=beta)(pair_batch()).losses
    assert ((1 - eps) * fwd + eps * flipped).tolist() == pytest.approx(dpo.tolist(), abs=1e-12)
    big = loss(PreferenceBatch(t([40.0]), t([0.0]), t([0.0]), t([0.0])))
    assert float(big.loss) < 0


def test_ipo_length_normalised_and_stationary_point():
    out = get_loss("ipo", beta=0.5, length_normalize=True)(pair_batch())
    want = [(w / lc - l / lr - 1.0) ** 2 for w, l, lc, lr in zip(LW, LL, LEN_C, LEN_R)]
    assert out.losses.tolist() == pytest.approx(want, abs=1e-12)
    b = PreferenceBatch(t([1 / (2 * 0.5)], True), t([0.0], True), t([0.0]), t([0.0]))
    get_loss("ipo", beta=0.5)(b).loss.backward()
    assert abs(float(b.chosen_logps.grad)) < 1e-12


def test_rpo_adds_the_summed_chosen_nll():
    out = get_loss("rpo", beta=0.5, sft_weight=0.2)(pair_batch())
    want = [sp(-0.5 * (w - l)) + 0.2 * -pc for w, l, pc in zip(LW, LL, PC)]
    assert out.losses.tolist() == pytest.approx(want, abs=1e-12)


def test_dpo_nll_adds_the_chosen_nll_per_token():
    out = get_loss("dpo_nll", beta=0.5, nll_weight=2.0)(pair_batch())
    want = [sp(-0.5 * (w - l)) + 2.0 * -pc / n for w, l, pc, n in zip(LW, LL, PC, LEN_C)]
    assert out.losses.tolist() == pytest.approx(want, abs=1e-12)
    assert get_loss("dpo_nll").nll_weight == 1.0  # the paper's equal weighting


def test_exo_matches_its_kl_form():
    beta, eps = 0.5, 0.01
    out = get_loss("exo", beta=beta, epsilon=eps)(pair_batch())
    want = []
    for w, l in zip(LW, LL):
        qw, ql = sig(beta * (w - l)), sig(-beta * (w - l))
        want.append(qw * (math.log(qw) - math.log(1 - eps)) + ql * (math.log(ql) - math.log(eps)))
    assert out.losses.tolist() == pytest.approx(want, abs=1e-12)


def test_bco_running_mean_shift():
    beta = 1.0
    loss = get_loss("bco", beta=beta)
    loss.start()
    first = loss(pair_batch())
    mean1 = (sum(LW) + sum(LL)) / 4  # rewards 1, -1, -2, 0: -0.5
    assert first.losses.tolist() == pytest.approx([sp(-(w - mean1)) + sp(l - mean1) for w, l in zip(LW, LL)])
    second = loss(PreferenceBatch(t([0.0]), t([0.0]), t([-2.0]), t([0.0])))  # rewards 2, 0: batch mean 1
    # as the BCO authors' RunningMoments update: each batch's mean reward counts once, whatever the batch size,
    # so delta = (-0.5 + 1) / 2 = 0.25 (weighting by reward count would give (4 * -0.5 + 2) / 6 = 0)
    mean2 = (mean1 + 1.0) / 2
    assert mean2 == 0.25
    assert float(second.loss) == pytest.approx(sp(-(2 - 0.25)) + sp(0 - 0.25), abs=1e-12)
    assert second.metrics()["reward_shift"] == pytest.approx(0.25, abs=1e-12)
    loss.start()  # a new round starts from no shift history
    assert loss(PreferenceBatch(t([0.0]), t([0.0]), t([-2.0]), t([0.0]))).metrics()["reward_shift"] == 1.0


def test_simpo_and_orpo_use_mean_token_logps():
    out = get_loss("simpo", beta=2.0, gamma=0.5)(pair_batch())
    want = [sp(-(2 * pc / lc - 2 * pr / lr - 0.5)) for pc, pr, lc, lr in zip(PC, PR, LEN_C, LEN_R)]
    assert out.losses.tolist() == pytest.approx(want, abs=1e-12)
    assert not get_loss("simpo").needs_reference
    out = get_loss("orpo", weight=0.3)(pair_batch())
    want = []
    for pc, pr, lc, lr in zip(PC, PR, LEN_C, LEN_R):
        mw, ml = pc / lc, pr / lr
        odds = lambda m: math.log(math.exp(m) / (1 - math.exp(m)))
        want.append(-mw + 0.3 * sp(-(odds(mw) - odds(ml))))
    assert out.losses.tolist() == pytest.approx(want, abs=1e-12)
    assert not get_loss("orpo").needs


def test_irepo_and_soft_dpo_use_soft_labels():
    p = [0.9, 0.6]
    out = get_loss("irepo", beta=0.5)(pair_batch(soft_label=t(p)))
    want = [(0.5 * (w - l) - math.log(q / (1 - q))) ** 2 for w, l, q in zip(LW, LL, p)]
    assert out.losses.tolist() == pytest.approx(want, abs=1e-12)
    hard = get_loss("irepo", beta=0.5, clip=0.01)(pair_batch(soft_label=t([1.0, 1.0])))
    assert hard.losses.tolist() == pytest.approx([(0.5 * (w - l) - math.log(99)) ** 2 for w, l in zip(LW, LL)])
    out = get_loss("soft_dpo", beta=0.5)(pair_batch(soft_label=t(p)))
    assert out.losses.tolist() == pytest.approx([sp(-(2 * q - 1) * 0.5 * (w - l)) for w, l, q in zip(LW, LL, p)])
    sure = get_loss("soft_dpo", beta=0.5)(pair_batch(soft_label=t([1.0, 1.0]))).losses
    assert sure.tolist() == pytest.approx(get_loss("dpo", beta=0.5)(pair_batch()).losses.tolist())
    tie = pair_batch(grad=True, soft_label=t([0.5, 0.5]))
    get_loss("soft_dpo")(tie).loss.backward()
    assert tie.chosen_logps.grad.abs().max() == 0


def test_soft_dpo_weight_is_gamma_times_2p_minus_1():
    # SmPO's train.py scales the DPO logit by (2p - 1) * 10, i.e. gamma (2p - 1) with gamma = 10.
    # One pair with beta * delta = 0.5 * (1 - (-2)) = 1.5 (the first pair of pair_batch).
    beta, gamma = 0.5, 10.0
    loss = get_loss("soft_dpo", beta=beta, gamma=gamma)
    one = lambda p, grad=False: PreferenceBatch(
        t([PC[0]], grad), t([PR[0]], grad), t([RC[0]]), t([RR[0]]), soft_label=t([p])
    )
    # p = 0.9: weight 10 * 0.8 = 8, loss = softplus(-8 * 1.5) = log(1 + e^-12)
    assert float(loss(one(0.9)).loss) == pytest.approx(math.log1p(math.exp(-12.0)), abs=1e-12)
    # p = 0.3: weight 10 * -0.4 = -4, loss = softplus(4 * 1.5) = log(1 + e^6)
    assert float(loss(one(0.3)).loss) == pytest.approx(math.log1p(math.exp(6.0)), abs=1e-12)
    # p = 1/2: weight 0, loss log 2 and no gradient
    tie = one(0.5, grad=True)
    out = loss(tie)
    assert float(out.loss.detach()) == pytest.approx(math.log(2.0), abs=1e-12)
    out.loss.backward()
    assert float(tie.chosen_logps.grad) == 0.0 and float(tie.rejected_logps.grad) == 0.0
    # the gradient on lp(y_w) is -beta * weight * sigmoid(-weight * beta * delta): pushes y_w up for p > 1/2,
    # down for p < 1/2 (the old 2p - gamma weight would be negative for every p <= 1 at gamma = 10)
    for p, sign in [(0.9, -1.0), (0.6, -1.0), (0.4, 1.0), (0.1, 1.0)]:
        b = one(p, grad=True)
        loss(b).loss.backward()
        w = gamma * (2 * p - 1)
        assert float(b.chosen_logps.grad) == pytest.approx(-beta * w * sig(-w * 1.5), abs=1e-12)
        assert math.copysign(1.0, float(b.chosen_logps.grad)) == sign
    # gamma = 1 and a sure label is DPO; gamma must be positive
    assert float(get_loss("soft_dpo", beta=beta)(one(1.0)).loss) == pytest.approx(sp(-1.5), abs=1e-12)
    with pytest.raises(ConfigError, match="gamma"):
        get_loss("soft_dpo", gamma=0.0)


def test_sppo_target_is_the_multiplicative_weights_update():
    eta = 10.0
    pw, pl = [0.8, 0.6], [0.3, 0.5]
    batch = PreferenceBatch(
        t(PC, True),
        t(PR, True),
        prev_chosen_logps=t(RC),
        prev_rejected_logps=t(RR),
        chosen_win_rate=t(pw),
        rejected_win_rate=t(pl),
    )
    out = get_loss("sppo", eta=eta)(batch)
    want = [0.5 * ((w - eta * (a - 0.5)) ** 2 + (l - eta * (b - 0.5)) ** 2) for w, l, a, b in zip(LW, LL, pw, pl)]
    assert out.losses.tolist() == pytest.approx(want, abs=1e-12)
    # the minimiser: log pi(y) - log pi_t(y) = eta (P(y beats pi_t) - 1/2), i.e. pi ∝ pi_t exp(eta P)
    at = PreferenceBatch(
        t([eta * 0.3], True),
        t([eta * -0.2], True),
        prev_chosen_logps=t([0.0]),
        prev_rejected_logps=t([0.0]),
        chosen_win_rate=t([0.8]),
        rejected_win_rate=t([0.3]),
    )
    get_loss("sppo", eta=eta)(at).loss.backward()
    assert abs(float(at.chosen_logps.grad)) < 1e-12 and abs(float(at.rejected_logps.grad)) < 1e-12


def test_inpo_mixes_reference_and_previous_iterate():
    eta, tau = 4.0, 0.05  # eta * tau = 0.2
    prev_c, prev_r = [-1.5, -4.0], [-2.0, -2.5]
    batch = pair_batch(prev_chosen_logps=t(prev_c), prev_rejected_logps=t(prev_r))
    out = get_loss("inpo", eta=eta, tau=tau)(batch)
    want = []
    for pc, pr, rc, rr, tc, tr in zip(PC, PR, RC, RR, prev_c, prev_r):
        h = (pc - pr) - 0.2 * (rc - rr) - 0.8 * (tc - tr)
        want.append((h - eta / 2) ** 2)
    assert out.losses.tolist() == pytest.approx(want, abs=1e-12)
    with pytest.raises(ConfigError, match="eta \\* tau"):
        get_loss("inpo", eta=10.0, tau=1.0)


def test_online_ipo_regresses_onto_win_rate_differences():
    beta = 0.5
    pw, pl = [0.7, 0.4], [0.2, 0.6]
    out = get_loss("online_ipo", beta=beta)(pair_batch(chosen_win_rate=t(pw), rejected_win_rate=t(pl)))
    want = [(w - l - (a - b) / beta) ** 2 for w, l, a, b in zip(LW, LL, pw, pl)]
    assert out.losses.tolist() == pytest.approx(want, abs=1e-12)


def test_nash_mp_regresses_onto_the_mirror_prox_target():
    eta, beta = 3.0, 0.5  # a = 1/4
    prev_c, prev_r = [-1.5, -4.0], [-2.0, -2.5]
    pw, pl = [0.7, 0.4], [0.2, 0.6]
    batch = pair_batch(
        prev_chosen_logps=t(prev_c),
        prev_rejected_logps=t(prev_r),
        chosen_win_rate=t(pw),
        rejected_win_rate=t(pl),
    )
    out = get_loss("nash_mp", eta=eta, beta=beta)(batch)
    want = []
    for pc, pr, rc, rr, tc, tr, a, b in zip(PC, PR, RC, RR, prev_c, prev_r, pw, pl):
        h = (pc - pr) - 0.25 * (tc - tr) - 0.75 * (rc - rr)
        want.append((h - 0.75 * (a - b) / beta) ** 2)
    assert out.losses.tolist() == pytest.approx(want, abs=1e-12)


def test_xpo_vpo_hypo_terms_on_extra_samples():
    aux, ref_aux = [[-3.0, -5.0], [-2.0, -6.0]], [[-2.0, -4.0], [-3.0, -4.0]]
    dpo = get_loss("dpo", beta=0.5)(pair_batch()).losses.tolist()
    b = pair_batch(aux_logps=t(aux, True), ref_aux_logps=t(ref_aux))
    out = get_loss("xpo", beta=0.5, alpha=0.1)(b)
    assert out.losses.tolist() == pytest.approx([d + 0.1 * sum(a) / 2 for d, a in zip(dpo, aux)])
    out.loss.backward()
    assert b.aux_logps.grad.flatten().tolist() == pytest.approx([0.1 / 2 / 2] * 4)  # alpha / k / B
    for mode, sign in [("optimistic", 1), ("pessimistic", -1)]:
        out = get_loss("vpo", beta=0.5, alpha=0.2, mode=mode)(pair_batch(aux_logps=t(aux), ref_aux_logps=t(ref_aux)))
        value = [sum(x - y for x, y in zip(a, r)) / 2 for a, r in zip(aux, ref_aux)]
        assert out.losses.tolist() == pytest.approx([d + sign * 0.2 * 0.5 * v for d, v in zip(dpo, value)])
    b = pair_batch(aux_logps=t(aux, True), ref_aux_logps=t(ref_aux))
    out = get_loss("hypo", beta=0.5, kl_weight=0.3)(b)
    ratios = [[x - y for x, y in zip(a, r)] for a, r in zip(aux, ref_aux)]  # [[-1, -1], [1, -2]]
    assert out.losses.tolist() == pytest.approx([d + 0.3 * sum(r) / 2 for d, r in zip(dpo, ratios)])
    out.loss.backward()
    # RLOO with k = 2: weight of grad lp(y_j) is (r_j - r_other) / k, times kl_weight, over B = 2
    want = [0.3 * (r[j] - r[1 - j]) / 2 / 2 for r in ratios for j in (0, 1)]
    assert b.aux_logps.grad.flatten().tolist() == pytest.approx(want)


def test_sparsepo_with_unit_masks_is_token_level_dpo():
    T = 3
    lp_w, lp_l = t([[-1.0, -0.5, -0.2]], True), t([[-2.0, -0.1, 0.0]], True)
    ref_w, ref_l = t([[-1.2, -0.4, -0.3]]), t([[-1.0, -0.6, 0.0]])
    kl_w, kl_l = t([[0.1, 0.0, 0.3]]), t([[0.2, 0.05, 0.0]])
    mask_w, mask_l = torch.tensor([[True] * T]), torch.tensor([[True, True, False]])
    batch = PreferenceBatch(
        lp_w.sum(1),
        lp_l.sum(1),
        chosen_token_logps=lp_w,
        rejected_token_logps=lp_l,
        ref_chosen_token_logps=ref_w,
        ref_rejected_token_logps=ref_l,
        chosen_token_kl=kl_w,
        rejected_token_kl=kl_l,
        chosen_mask=mask_w,
        rejected_mask=mask_l,
    )
    out = get_loss("sparsepo", beta=0.5)(batch)
    u = (-1 + 1.2 - 0.5 + 0.4 - 0.2 + 0.3) - (-2 + 1.0 - 0.1 + 0.6)
    d = (0.2 + 0.05) - (0.1 + 0.0 + 0.3)
    assert out.loss.item() == pytest.approx(sp(-0.5 * (u - d)), abs=1e-12)
    # rewards as the reference code logs them: beta * (sum of log-ratios - sum of KL) over response tokens
    assert out.chosen_rewards.tolist() == pytest.approx([0.5 * ((-1 + 1.2 - 0.5 + 0.4 - 0.2 + 0.3) - 0.4)])
    assert out.rejected_rewards.tolist() == pytest.approx([0.5 * ((-2 + 1.0 - 0.1 + 0.6) - 0.25)])
    # learned masks start at 1, so the objective starts from the unit-mask one plus the L1 terms
    learned = get_loss("sparsepo", beta=0.5, mask="learned", l1_u=0.01, l1_d=0.02)
    model = type(
        "M", (), {"config": type("C", (), {"hidden_size": 4}), "parameters": lambda self: iter([torch.zeros(1)])}
    )
    learned.start(model())
    batch.ref_chosen_hidden, batch.ref_rejected_hidden = torch.randn(1, T, 4), torch.randn(1, T, 4)
    out2 = learned(batch)
    assert out2.loss.item() == pytest.approx(sp(-0.5 * (u - d)) + 0.01 * 5 + 0.02 * 5, abs=1e-6)
    assert out2.metrics()["mask_sparsity_u"] == 0.0
    out2.loss.backward()
    assert all(p.grad is not None for p in learned.parameters())


def test_kto_reference_point_is_clamped_and_gets_no_gradient():
    beta = 0.5
    logps, ref = t([-1.0, -2.0, -3.0], True), t([-1.5, -1.0, -2.0])
    kl_logps, ref_kl = t([-4.0, -5.0, -1.0], True), t([-3.0, -2.0, -2.0])  # mean l(y') = -1 < 0 -> z0 = 0
    batch = UnpairedBatch(logps, torch.tensor([True, False, True]), ref, kl_logps, ref_kl)
    out = get_loss("kto", beta=beta, desirable_weight=1.0, undesirable_weight=2.0)(batch)
    r = [0.5, -1.0, -1.0]
    want = [1 - sig(beta * r[0]), 2.0 * (1 - sig(beta * (0 - r[1]))), 1 - sig(beta * r[2])]
    assert out.losses.tolist() == pytest.approx(want, abs=1e-12)
    assert out.metrics()["z0"] == 0.0
    out.loss.backward()
    assert kl_logps.grad is None  # the reference point is detached
    positive = UnpairedBatch(t([-1.0]), torch.tensor([True]), t([-1.5]), t([-1.0]), t([-3.0]))
    assert get_loss("kto", beta=beta)(positive).metrics()["z0"] == pytest.approx(2.0)


def test_pro_reduces_to_a_temperature_scaled_pair_loss_for_two_responses():
    logps, lengths, scores = t([[-2.0, -6.0]], True), t([[2.0, 3.0]]), t([[0.9, 0.4]])
    out = get_loss("pro", sft_weight=0.1)(RankedBatch(logps, scores, torch.tensor([[True, True]]), lengths))
    T = 0.9 - 0.4
    assert float(out.loss.detach()) == pytest.approx(sp(-T * (-1.0 - (-2.0))) + 0.1 * 1 * 2.0, abs=1e-12)


def test_pro_three_responses_and_padding():
    s, r = [-1.0, -2.0, -0.5], [3.0, 2.0, 0.0]
    logps = t([[-1.0, -4.0, -1.0, 0.0]])
    lengths = t([[1.0, 2.0, 2.0, 1.0]])
    batch = RankedBatch(logps, t([r + [0.0]]), torch.tensor([[True, True, True, False]]), lengths)
    out = get_loss("pro", sft_weight=0.05)(batch)
    k0 = [s[0] * 3.0, s[1] * 1.0, s[2] * 3.0]  # T_00 = max(1, 3) = 3
    k1 = [s[1] * 2.0, s[2] * 2.0]
    lse = lambda xs: math.log(sum(math.exp(x) for x in xs))
    want = (lse(k0) - k0[0]) + (lse(k1) - k1[0]) + 0.05 * 4 * 1.0
    assert float(out.loss) == pytest.approx(want, abs=1e-12)


def test_tpo_pairwise_rank_loss():
    beta = 0.5
    logps, ref = t([[-2.0, -3.0, -1.0]]), t([[-2.5, -2.0, -1.0]])
    lengths, scores = t([[1.0, 2.0, 1.0]]), t([[1.0, 0.0, 0.0]])
    out = get_loss("tpo", beta=beta)(RankedBatch(logps, scores, torch.tensor([[True] * 3]), lengths, ref))
    rew = [beta * 0.5, beta * -0.5, 0.0]
    # ordered pairs with different scores: (0,1), (0,2) and their mirrors, each the same term
    want = (sp(-(rew[0] - rew[1])) + sp(-(rew[0] - rew[2]))) / 2
    assert float(out.loss) == pytest.approx(want, abs=1e-12)


# ---------------------------------------------------------------- TRL 1.16 parity

RNG = torch.Generator().manual_seed(0)
CASES = [  # (chosen, rejected, ref_chosen, ref_rejected, chosen_len, rejected_len), log-probs drawn at random
    tuple(float(x) for x in -torch.rand(4, generator=RNG, dtype=torch.float64) * 20) + (int(a), int(b))
    for a, b in torch.randint(1, 30, (8, 2), generator=RNG)
]


@pytest.mark.parametrize(
    "trl_type,ours,hyper,trl_smoothing",
    [
        ("sigmoid", "dpo", {"beta": 0.1}, 0.0),
        ("ipo", "ipo", {"beta": 0.1, "length_normalize": True}, 0.0),
        ("hinge", "hinge", {"beta": 0.1}, 0.0),
        ("robust", "rdpo", {"beta": 0.1, "flip_rate": 0.2}, 0.2),
        ("nca_pair", "nca", {"beta": 0.1}, 0.0),
        ("exo_pair", "exo", {"beta": 0.1, "epsilon": 1e-3}, 1e-3),
        ("bco_pair", "bco", {"beta": 0.1, "reward_shift": False}, 0.0),
        ("sppo_hard", "sppo_hard", {"beta": 0.1}, 0.0),
        ("apo_zero", "apo_zero", {"beta": 0.1}, 0.0),
        ("apo_down", "apo_down", {"beta": 0.1}, 0.0),
    ],
)
def test_pairwise_losses_match_trl(trl_type, ours, hyper, trl_smoothing):
    loss = get_loss(ours, **hyper)
    for c, r, rc, rr, lc, lr in CASES:
        batch = PreferenceBatch(t([c]), t([r]), t([rc]), t([rr]), t([lc]), t([lr]))
        want = trl_dpo_loss(trl_type, hyper["beta"], c, r, rc, rr, lc, lr, label_smoothing=trl_smoothing)
        assert float(loss(batch).loss) == pytest.approx(want, abs=1e-6, rel=1e-6)


def test_kto_auto_weight_balances_desirable_and_undesirable():
    from types import SimpleNamespace

    loss = get_loss("kto")  # desirable_weight: auto
    loss.start(None, [SimpleNamespace(desirable=d) for d in [True, False, False, False]])
    batch = UnpairedBatch(
        t([-1.0, -2.0]), torch.tensor([True, False]), t([-1.0, -2.0]), t([-1.0, -1.0]), t([-1.0, -1.0])
    )
    out = loss(batch)
    assert out.metrics()["desirable_weight"] == pytest.approx(3.0)  # 3 undesirable per desirable in the round
    assert out.losses.tolist() == pytest.approx([3.0 * 0.5, 0.5])
    fresh = get_loss("kto")(batch)  # not started: balances the batch itself
    assert fresh.metrics()["weighted_desirable_ratio"] == pytest.approx(1.0)
    with pytest.raises(ConfigError, match="desirable_weight"):
        get_loss("kto", desirable_weight="sometimes")


def test_kto_matches_trl():
    g = torch.Generator().manual_seed(1)
    for _ in range(5):
        logps, ref, kl, ref_kl = (-torch.rand(6, generator=g, dtype=torch.float64) * 10 for _ in range(4))
        labels = [True, False, True, True, False, False]
        ours = get_loss("kto", beta=0.3, desirable_weight=1.2, undesirable_weight=0.8)(
            UnpairedBatch(logps, torch.tensor(labels), ref, kl, ref_kl)
        )
        want = trl_kto_losses(0.3, logps.tolist(), ref.tolist(), kl.tolist(), ref_kl.tolist(), labels, 1.2, 0.8)
        assert float(ours.loss) == pytest.approx(want, abs=1e-6, rel=1e-6)


# ---------------------------------------------------------------- the registry


def test_registry_lists_every_issue_loss():
    want = {
        "dpo",
        "cdpo",
        "margin_dpo",
        "rdpo",
        "ipo",
        "hinge",
        "rpo",
        "dpo_nll",
        "simpo",
        "orpo",
        "nca",
        "exo",
        "bco",
        "apo_zero",
        "apo_down",
        "sppo",
        "sppo_hard",
        "inpo",
        "online_ipo",
        "xpo",
        "vpo",
        "hypo",
        "irepo",
        "soft_dpo",
        "sparsepo",
        "kto",
        "pro",
        "tpo",
        "rloo",
        "grpo",
        "sft",
        "nash_mp",
    }
    assert want <= set(list_losses())
    from iterpo.losses import LOSSES

    for name in list_losses():
        doc = LOSSES.get(name).__doc__ or ""
        assert "20" in doc, f"{name}: docstring must cite its paper and year"


def test_unknown_loss_and_hyperparameter_fail_listing_what_exists():
    with pytest.raises(ConfigError, match="known: .*dpo"):
        get_loss("nope")
    with pytest.raises(ConfigError, match="takes: beta"):
        get_loss("dpo", gamma=1.0)
    with pytest.raises(ConfigError, match="beta must be > 0"):
        get_loss("dpo", beta=0)
    with pytest.raises(ConfigError, match="flip_rate"):
        get_loss("rdpo", flip_rate=0.5)
    with pytest.raises(ConfigError, match="mode"):
        get_loss("vpo", mode="sideways")
