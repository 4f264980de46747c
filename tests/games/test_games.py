"""Preference games: the equilibrium solver, the gap, the identities between update rules,
and the convergence claims of the papers (EGPO, Nash-MP, APO; see the README), with fixed seeds."""

import math

import numpy as np
import pytest

from iterpo import games
from iterpo.errors import DataError
from iterpo.games.report import make_game


def _game(seed, n=10):
    rng = np.random.default_rng(seed)
    return games.random_game(n, rng), games.random_policy(n, rng)


def _gaps(P, beta, pis, ref):
    return [float(games.duality_gap(P, beta, p, ref)) for p in pis]


# ---------------------------------------------------------------- games and files


def test_game_families_are_valid_preference_matrices():
    rng = np.random.default_rng(0)
    for P in [
        games.random_game(7, rng),
        games.bradley_terry(rng.normal(size=5)),
        games.rock_paper_scissors(),
        games.random_cyclic(6, rng),
        games.random_game(4, rng, contexts=3),
    ]:
        games.check_game(P)
        assert np.allclose(np.diagonal(P, axis1=-2, axis2=-1), 0.5)
    # the cyclic game: every response ties the uniform policy, so uniform is the unregularised equilibrium
    P = games.random_cyclic(7, rng)
    assert np.allclose(P @ np.full(7, 1 / 7), 0.5)


def test_bad_games_and_files_fail_with_the_reason(tmp_path):
    with pytest.raises(DataError, match="must equal 1"):
        games.check_game([[0.5, 0.9], [0.9, 0.5]])
    with pytest.raises(DataError, match="square"):
        games.check_game(np.full((2, 3), 0.5))
    with pytest.raises(DataError, match="does not exist"):
        games.read_game(tmp_path / "missing.csv")
    bad = tmp_path / "bad.csv"
    bad.write_text("0.5,x\n0.5,0.5\n")
    with pytest.raises(DataError, match="not a matrix"):
        games.read_game(bad)
    good = tmp_path / "rps.csv"
    np.savetxt(good, games.rock_paper_scissors(), delimiter=",")
    assert np.array_equal(games.read_game(good), games.rock_paper_scissors())
    np.save(tmp_path / "rps.npy", games.rock_paper_scissors())
    assert np.array_equal(games.read_game(tmp_path / "rps.npy"), games.rock_paper_scissors())


# ---------------------------------------------------------------- the equilibrium and the gap


@pytest.mark.parametrize("beta", [1.0, 0.1, 0.01, 0.001])
def test_regularized_nash_solves_its_fixed_point_to_1e9(beta):
    for seed in range(5):
        P, ref = _game(seed)
        pi = games.regularized_nash(P, beta, ref)
        residual = np.log(pi) - np.log(ref) - P @ pi / beta  # must be constant
        assert np.ptp(residual) < 1e-9
        assert games.duality_gap(P, beta, pi, ref) < 1e-12


def test_regularized_nash_agrees_with_a_long_mirror_prox_run():
    P, ref = _game(3)
    beta = 0.1
    pis = games.run("nash_mp", P, beta, ref, 400, 2 * beta)
    assert np.abs(np.log(pis[-1]) - np.log(games.regularized_nash(P, beta, ref))).max() < 1e-9


def test_duality_gap_matches_the_game_value_definition():
    P, ref = _game(1)
    beta = 0.1
    rng = np.random.default_rng(5)
    pi = games.softmax(rng.normal(size=10))

    def V(p1, p2):
        return p1 @ P @ p2 - beta * games.kl(p1, ref) + beta * games.kl(p2, ref)

    br_max = games.softmax(np.log(ref) + P @ pi / beta)  # argmax_p1 V(p1, pi)
    br_min = games.softmax(np.log(ref) - P.T @ pi / beta)  # argmin_p2 V(pi, p2)
    direct = V(br_max, pi) - V(pi, br_min)
    assert games.duality_gap(P, beta, pi, ref) == pytest.approx(direct, abs=1e-12)
    # and nothing beats the closed-form best responses
    for _ in range(20):
        q = games.softmax(rng.normal(size=10))
        assert V(q, pi) <= V(br_max, pi) + 1e-12 and V(pi, q) >= V(pi, br_min) - 1e-12


def test_rock_paper_scissors_equilibrium_tends_to_uniform_as_beta_shrinks():
    P = games.rock_paper_scissors()
    ref = np.array([0.6, 0.3, 0.1])
    dists = [games.kl(np.full(3, 1 / 3), games.regularized_nash(P, b, ref)) for b in (1.0, 0.1, 0.01, 0.001)]
    assert all(a > b for a, b in zip(dists, dists[1:])) and dists[-1] < 1e-4


# ---------------------------------------------------------------- identities between update rules


def test_one_sgd_step_on_the_online_ipo_loss_is_one_mirror_descent_step():
    from iterpo.games.sgd import online_ipo_sgd_step

    P, ref = _game(2, n=6)
    beta, lr, n = 0.1, 0.05, 6
    x = np.log(games.softmax(np.random.default_rng(0).normal(size=n)))
    w = P @ np.exp(x)
    sgd = online_ipo_sgd_step(x, w, np.log(ref), beta, lr)
    eta = 4 * lr / n / beta  # eta * beta = 4 lr / N
    md = (1 - eta * beta) * x + eta * beta * np.log(ref) + eta * w
    md = md - np.log(np.exp(md).sum())
    assert np.abs(sgd - md).max() < 1e-12


@pytest.mark.parametrize("algorithm,step", [("omd", 1.0), ("egpo", 2.0), ("nash_mp", 0.2), ("nash_md", 1.0)])
def test_loss_based_updates_equal_the_closed_form(algorithm, step):
    P, ref = _game(4, n=6)
    closed = games.run(algorithm, P, 0.1, ref, 25, step)
    via_loss = games.run(algorithm, P, 0.1, ref, 25, step, via_loss=True)
    assert max(np.abs(np.log(a) - np.log(b)).max() for a, b in zip(closed, via_loss)) < 1e-10


def test_nash_mp_is_extragradient_with_a_reparametrised_step_and_inpo_is_omd():
    P, ref = _game(5)
    beta, eta = 0.1, 0.3
    mp = games.run("nash_mp", P, beta, ref, 30, eta)
    eg = games.run("egpo", P, beta, ref, 30, eta / (1 + eta) / beta)
    assert max(np.abs(a - b).max() for a, b in zip(mp, eg)) < 1e-12
    assert all(
        np.array_equal(a, b)
        for a, b in zip(games.run("inpo", P, beta, ref, 10, 1.0), games.run("omd", P, beta, ref, 10, 1.0))
    )


def test_one_game_per_context_equals_separate_games():
    rng = np.random.default_rng(0)
    P, ref = games.random_game(5, rng, contexts=3), games.random_policy(5, rng, contexts=3)
    together = games.run("egpo", P, 0.1, ref, 20, 1.0)
    for c in range(3):
        alone = games.run("egpo", P[c], 0.1, ref[c], 20, 1.0)
        assert np.abs(together[-1][c] - alone[-1]).max() < 1e-14
    nash = games.regularized_nash(P, 0.1, ref)
    assert np.abs(nash[1] - games.regularized_nash(P[1], 0.1, ref[1])).max() < 1e-14


# ---------------------------------------------------------------- the claims


@pytest.mark.parametrize("beta,iterations", [(0.1, 60), (0.01, 300)])
def test_nash_mp_contracts_kl_at_least_by_one_over_one_plus_two_beta(beta, iterations):
    for seed in range(10):
        P, ref = _game(seed)
        star = games.regularized_nash(P, beta, ref)
        pis = games.run("nash_mp", P, beta, ref, iterations, 2 * beta)
        kl0 = games.kl(star, pis[0])
        for k, pi in enumerate(pis):
            assert games.kl(star, pi) <= (1 + 2 * beta) ** (-k) * kl0 + 1e-13, (seed, k)


@pytest.mark.parametrize("kind", ["rps", "cyclic"])
@pytest.mark.parametrize("beta", [0.1, 0.01])
def test_extragradient_converges_in_the_last_iterate_on_intransitive_games(kind, beta):
    P, ref = make_game(kind, 0)
    gaps = _gaps(P, beta, games.run("egpo", P, beta, ref, 1000, 1.0), ref)
    assert min(i for i, g in enumerate(gaps) if g < 1e-6) < 1000
    assert max(gaps[-100:]) < 1e-9  # the last iterate itself, not an average


def test_omd_with_a_large_step_cycles_and_constant_step_nash_md_stalls():
    P, ref = make_game("rps", 0)
    beta = 0.1
    omd = _gaps(P, beta, games.run("omd", P, beta, ref, 3000, 4.0), ref)
    tail = omd[-1000:]
    assert min(tail) > 0.1 and max(tail) > 2 * min(tail)  # keeps oscillating far from the equilibrium
    md = _gaps(P, beta, games.run("nash_md", P, beta, ref, 3000, 1.0), ref)
    assert md[-1] > 1e-4 and abs(md[-1] - md[-1000]) < 1e-9 * md[-1]  # settled at a biased point
    star = games.regularized_nash(P, beta, ref)
    assert games.kl(star, games.run("nash_md", P, beta, ref, 3000, 1.0)[-1]) > 1e-4


def test_mirror_descent_without_regularisation_cycles_on_rock_paper_scissors():
    P = games.rock_paper_scissors()
    ref = np.array([0.5, 0.3, 0.2])
    pis = games.run("sppo", P, 0.1, ref, 2000, 0.1)  # multiplicative weights: no pull toward ref
    dist = [games.kl(np.full(3, 1 / 3), p) for p in pis]
    assert dist[-1] > dist[0]  # spirals away from the uniform equilibrium instead of converging


def test_bradley_terry_targets_iterative_dpo_hits_once_and_nash_methods_miss():
    """On a Bradley-Terry game pi* = ref exp(r / beta) / Z differs from the regularised Nash equilibrium.

    Iterative DPO (reference updated) equals pi* after its first round and then
    keeps sharpening, pi_t ∝ ref exp(t r / beta); the Nash methods converge to
    the equilibrium, not to pi*. So 'all methods approach pi*' does not hold.
    """
    rng = np.random.default_rng(0)
    r = rng.normal(size=10)
    P, ref, beta = games.bradley_terry(r), games.random_policy(10, rng), 0.1
    star = games.softmax(np.log(ref) + r / beta)
    nash = games.regularized_nash(P, beta, ref)
    assert games.kl(star, nash) > 0.1
    dpo = games.run("iterative_dpo", P, beta, ref, 3, 1.0)
    assert games.kl(star, dpo[1]) < 1e-12 and np.abs(dpo[1] - star).max() < 1e-9
    for t in (2, 3):
        want = games.softmax(np.log(ref) + t * r / beta)
        assert games.kl(want, dpo[t]) < 1e-12 and np.abs(dpo[t] - want).max() < 1e-9
    for algorithm, step in [("egpo", 1.0), ("nash_mp", 0.2), ("omd", 1.0)]:
        last = games.run(algorithm, P, beta, ref, 300, step)[-1]
        assert games.kl(nash, last) < 1e-12 and games.kl(star, last) > 0.1


def test_apo_follows_the_exponent_recursion_and_beats_iterative_dpo():
    rng = np.random.default_rng(1)
    r = rng.normal(size=8)
    P, ref, beta, alpha = games.bradley_terry(r), games.random_policy(8, rng), 1.0, 0.5
    apo = games.run("apo", P, beta, ref, 8, 1.0, alpha=alpha)
    c = [0.0, 1.0]
    for _ in range(7):
        c.append(c[-1] + alpha * (c[-1] - c[-2]) + 1)
    for t, pi in enumerate(apo):
        want = games.softmax(np.log(ref) + c[t] * r / beta)  # pi_t ∝ ref exp(c_t r / beta)
        assert games.kl(want, pi) < 1e-12 and np.abs(pi - want).max() < 1e-9, t
    increments = np.diff(c)
    assert abs(increments[-1] - 1 / (1 - alpha)) < 0.02
    best = int(np.argmax(r))
    dpo = games.run("iterative_dpo", P, beta, ref, 60, 1.0)
    apo = games.run("apo", P, beta, ref, 60, 1.0, alpha=alpha)
    rounds = lambda pis: next(t for t, p in enumerate(pis) if -np.log(p[best]) < 0.1)  # KL(delta_best || pi_t)
    assert rounds(apo) < 0.6 * rounds(dpo)  # 22 vs 40 rounds here


def test_sampled_preferences_keep_the_ordering_on_average():
    """Over 10 seeds: extragradient ends closer to the equilibrium than large-step OMD with 100 or 1000
    sampled preferences per query, and than constant-step Nash-MD once the sampling noise (1000 per query)
    is below Nash-MD's bias; the 95% intervals (on log10 of the gap) do not overlap."""
    from iterpo.games.report import Method, sampled_table

    methods = [Method("egpo", "egpo", 1.0), Method("omd", "omd", 4.0), Method("nash_md", "nash_md", 1.0)]
    for samples, worse in [(100, ["omd"]), (1000, ["omd", "nash_md"])]:
        rows = {r["method"]: r for r in sampled_table("random", 0.1, 10, 300, samples, methods)}
        for other in worse:
            assert rows["egpo"]["high"] < rows[other]["low"], (samples, rows["egpo"], rows[other])
        assert all(math.isfinite(r["log10_ci95"]) for r in rows.values())


# ---------------------------------------------------------------- the command


def test_games_command_prints_the_table_and_writes_plots(tmp_path, capsys):
    from iterpo.cli import main

    game = tmp_path / "rps.csv"
    np.savetxt(game, games.rock_paper_scissors(), delimiter=",")
    code = main(
        [
            "games",
            "--game",
            "cyclic",
            "--game",
            str(game),
            "--beta",
            "0.1",
            "--seeds",
            "2",
            "--iterations",
            "300",
            "--algorithm",
            "egpo",
            "--algorithm",
            "nash_md",
            "--sampled",
            "50",
            "--plots",
            str(tmp_path / "plots"),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "| cyclic | 0.1 | egpo eta=1 |" in out and "| cyclic | 0.1 | nash_md eta=1 | never (300) |" in out
    assert "sampled preferences (50 per query)" in out
    assert (tmp_path / "plots" / "gap_cyclic_beta0.1.svg").is_file() and (
        tmp_path / "plots" / "gap_rps_beta0.1.svg"
    ).is_file()


def test_games_command_rejects_bad_input(tmp_path, capsys):
    from iterpo.cli import main

    assert main(["games", "--game", "nonsense"]) == 2
    bad = tmp_path / "bad.csv"
    bad.write_text("0.5,0.7\n0.7,0.5\n")
    assert main(["games", "--game", str(bad), "--iterations", "5"]) == 2
    assert "must equal 1" in " ".join(capsys.readouterr().err.split())  # the message is wrapped
    assert main(["games", "--algorithm", "nope", "--iterations", "5"]) == 2


def test_iterative_dpo_round_is_what_training_with_the_dpo_loss_converges_to():
    from iterpo.games.sgd import dpo_fit

    rng = np.random.default_rng(7)
    P, ref, beta = games.random_game(6, rng), games.random_policy(6, rng), 0.5
    closed = games.run("iterative_dpo", P, beta, ref, 1, 1.0)[1]
    trained = np.exp(dpo_fit(np.log(ref), ref[:, None] * ref[None, :] * P, beta))
    assert np.abs(trained - closed).max() < 1e-6


def test_metrics_of_the_equilibrium():
    P, ref = _game(0)
    star = games.regularized_nash(P, 0.1, ref)
    m = games.metrics(P, 0.1, star, ref)
    assert m["kl_to_nash"] < 1e-12 and m["duality_gap"] < 1e-12
    assert m["win_rate_vs_nash"] == pytest.approx(0.5)  # any policy ties itself
    assert m["win_rate_vs_ref"] > 0.5  # the equilibrium beats the reference it started from
