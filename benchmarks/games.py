"""Iterations each algorithm needs to reach a duality gap of 1e-6 on exactly solvable preference games.

Prints the convergence table (random EGPO-style games over 10 seeds, rock-paper-scissors,
random cyclic games, Bradley-Terry games; beta 0.1 and 0.01), the sampled-preference
table (final gaps with 95% intervals over seeds), and writes SVG convergence plots.

    python benchmarks/games.py [--plots docs/games] [--iterations 3000] [--seeds 10]

`iterpo games` runs the same code with more choices (your own game file, betas, algorithms).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from iterpo.games.report import METHODS, Method, convergence_table, format_convergence, format_sampled, sampled_table

SAMPLED = [
    Method("egpo eta=1", "egpo", 1.0),
    Method("nash_mp eta=2b", "nash_mp", None),
    Method("omd eta=1", "omd", 1.0),
    Method("omd eta=4", "omd", 4.0),
    Method("nash_md eta=1", "nash_md", 1.0),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plots", default="docs/games")
    parser.add_argument("--iterations", type=int, default=3000)
    parser.add_argument("--seeds", type=int, default=10)
    args = parser.parse_args()
    start = time.perf_counter()
    rows = convergence_table(
        ["random", "rps", "cyclic", "bt"], [0.1, 0.01], args.seeds, args.iterations, 1e-6, METHODS, Path(args.plots)
    )
    print(format_convergence(rows, 1e-6))
    for samples in (100, 1000):
        print()
        print(
            format_sampled(sampled_table("random", 0.1, args.seeds, 300, samples, SAMPLED), "random", 0.1, samples, 300)
        )
    print(f"\nplots in {args.plots}/; {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
