"""The convergence table and plots behind `iterpo games` and benchmarks/games.py."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from iterpo.games import core
from iterpo.games.plot import svg_log_plot


@dataclass(frozen=True)
class Method:
    label: str
    algorithm: str
    step: float | None  # mirror-descent step; None = 2 beta (Nash-MP's contraction step)
    options: tuple = ()
    max_iterations: int | None = None  # cap for slow rules (the DPO fits)

    def step_size(self, beta: float) -> float:
        return 2 * beta if self.step is None else self.step


METHODS = [
    Method("omd eta=1", "omd", 1.0),
    Method("omd eta=4", "omd", 4.0),
    Method("egpo eta=1", "egpo", 1.0),
    Method("egpo eta=4", "egpo", 4.0),
    Method("nash_mp eta=2b", "nash_mp", None),
    Method("nash_md eta=1", "nash_md", 1.0),
    Method("sppo eta=1", "sppo", 1.0),
    Method("spo eta=1", "spo", 1.0),
    Method("iterative_dpo", "iterative_dpo", 1.0, max_iterations=100),
    Method("apo a=0.5", "apo", 1.0, (("alpha", 0.5),), max_iterations=100),
]


GAME_FAMILIES = ("random", "rps", "cyclic", "bt")


def make_game(kind: str, seed: int, n: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """(P, ref) for a game family: random (EGPO's), rps, cyclic, bt (Bradley-Terry), or a file path."""
    rng = np.random.default_rng(seed)
    if kind == "random":
        P = core.random_game(n, rng)
    elif kind == "rps":
        P = core.rock_paper_scissors()
    elif kind == "cyclic":
        P = core.random_cyclic(n, rng)
    elif kind == "bt":
        P = core.bradley_terry(rng.normal(size=n))
    else:
        P = core.read_game(kind)
    return P, core.random_policy(P.shape[-1], rng)


def iterations_to(gaps: list[float], target: float) -> int | None:
    return next((i for i, g in enumerate(gaps) if g < target), None)


def gap_curve(method: Method, P, beta, ref, iterations: int, seed: int = 0, samples: int | None = None) -> list[float]:
    from iterpo.games import run

    its = min(iterations, method.max_iterations or iterations)
    with np.errstate(over="ignore", under="ignore"):
        pis = run(
            method.algorithm,
            P,
            beta,
            ref,
            its,
            method.step_size(beta),
            seed=seed,
            samples=samples,
            **dict(method.options),
        )
    return [float(np.mean(core.duality_gap(P, beta, p, ref))) for p in pis]


def convergence_table(
    games: list[str],
    betas: list[float],
    seeds: int,
    iterations: int,
    target: float = 1e-6,
    methods: list[Method] = METHODS,
    plot_dir: Path | None = None,
) -> list[dict]:
    """Per (game, beta, method): median iterations to a duality gap below target, and how many seeds got there."""
    rows = []
    for game in games:
        n_seeds = 1 if game == "rps" or Path(game).suffix else seeds
        for beta in betas:
            curves = {}
            for m in methods:
                hits, finals = [], []
                for seed in range(n_seeds):
                    P, ref = make_game(game, seed)
                    gaps = gap_curve(m, P, beta, ref, iterations)
                    if seed == 0:
                        curves[m.label] = gaps
                    hits.append(iterations_to(gaps, target))
                    finals.append(gaps[-1])
                reached = [h for h in hits if h is not None]
                rows.append(
                    {
                        "game": game,
                        "beta": beta,
                        "method": m.label,
                        "seeds": n_seeds,
                        "reached": len(reached),
                        "median_iterations": float(np.median(reached)) if reached else None,
                        "cap": min(iterations, m.max_iterations or iterations),
                        "median_final_gap": float(np.median(finals)),
                    }
                )
            if plot_dir is not None:
                # show up to 1.5x the slowest convergence, so the converging curves are not squashed
                converged = [h for h in (iterations_to(c, target) for c in curves.values()) if h]
                window = min(iterations, max(100, int(1.5 * max(converged)))) if converged else iterations
                svg_log_plot(
                    {k: v[: window + 1] for k, v in curves.items()},
                    Path(plot_dir) / f"gap_{Path(game).stem}_beta{beta:g}.svg",
                    f"duality gap, {game} game, beta={beta:g} (seed 0)",
                    "iteration",
                    "duality gap",
                )
    return rows


def sampled_table(
    game: str, beta: float, seeds: int, iterations: int, samples: int, methods: list[Method]
) -> list[dict]:
    """Final duality gap with sampled preferences over seeds: the geometric mean and a 95% interval for it
    (a t interval on log10 of the gap, since gaps spread over orders of magnitude)."""
    rows = []
    for m in methods:
        finals = []
        for seed in range(seeds):
            P, ref = make_game(game, seed)
            finals.append(max(gap_curve(m, P, beta, ref, iterations, seed=seed, samples=samples)[-1], 1e-300))
        logs = np.log10(finals)
        half = float(_t95(seeds) * np.std(logs, ddof=1) / math.sqrt(seeds)) if seeds > 1 else float("nan")
        mean = float(np.mean(logs))
        rows.append(
            {
                "method": m.label,
                "log10_mean": mean,
                "log10_ci95": half,
                "geo_mean": 10**mean,
                "low": 10 ** (mean - half),
                "high": 10 ** (mean + half),
                "finals": finals,
            }
        )
    return rows


def _t95(n: int) -> float:
    """Two-sided 95% Student t quantile for n - 1 degrees of freedom (table for small n, else 1.96)."""
    table = {
        2: 12.71,
        3: 4.30,
        4: 3.18,
        5: 2.78,
        6: 2.57,
        7: 2.45,
        8: 2.36,
        9: 2.31,
        10: 2.26,
        11: 2.23,
        12: 2.20,
        15: 2.14,
        20: 2.09,
        30: 2.05,
    }
    return table.get(n, 1.96 if n > 30 else table[min(k for k in table if k >= n)])


def format_convergence(rows: list[dict], target: float) -> str:
    out = [
        f"iterations to a duality gap below {target:g} (median over seeds; 'never' = no seed within the cap)",
        "",
        "| game | beta | method | iterations | seeds reaching | final gap (median) |",
        "| --- | ---: | --- | ---: | ---: | ---: |",
    ]
    for r in rows:
        its = f"{r['median_iterations']:.0f}" if r["median_iterations"] is not None else f"never ({r['cap']})"
        out.append(
            f"| {r['game']} | {r['beta']:g} | {r['method']} | {its} | {r['reached']}/{r['seeds']} | "
            f"{r['median_final_gap']:.1e} |"
        )
    return "\n".join(out)


def format_sampled(rows: list[dict], game: str, beta: float, samples: int, iterations: int) -> str:
    out = [
        f"sampled preferences ({samples} per query), {game} game, beta={beta:g}: duality gap after {iterations} "
        "iterations (geometric mean over seeds, 95% interval)",
        "",
        "| method | final gap | 95% interval |",
        "| --- | ---: | --- |",
    ]
    for r in rows:
        out.append(f"| {r['method']} | {r['geo_mean']:.2e} | {r['low']:.1e} to {r['high']:.1e} |")
    return "\n".join(out)
