"""A minimal SVG line plot (log-scale y), so convergence curves need no plotting library."""

from __future__ import annotations

import math
from pathlib import Path

COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#7f7f7f", "#bcbd22"]


def svg_log_plot(
    curves: dict[str, list[float]],
    path: Path,
    title: str,
    xlabel: str,
    ylabel: str,
    floor: float = 1e-16,
    width: int = 640,
    height: int = 400,
) -> None:
    """Write curves (name -> y values at x = 0, 1, ...) as an SVG with a log10 y axis."""
    left, right, top, bottom = 70, 150, 30, 45
    pw, ph = width - left - right, height - top - bottom
    ys = [max(v, floor) for c in curves.values() for v in c if math.isfinite(v)]
    lo = math.floor(math.log10(min(ys))) if ys else -16
    hi = math.ceil(math.log10(max(ys))) if ys else 0
    hi = max(hi, lo + 1)
    xmax = max((len(c) - 1 for c in curves.values()), default=1) or 1

    def px(i):
        return left + pw * i / xmax

    def py(v):
        v = max(v, floor)
        return top + ph * (hi - math.log10(v)) / (hi - lo)

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        'font-family="sans-serif" font-size="12">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="{left + pw / 2}" y="18" text-anchor="middle" font-size="14">{title}</text>',
        f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="black"/>',
    ]
    step = max(1, (hi - lo) // 8)
    for e in range(lo, hi + 1, step):
        y = py(10.0**e)
        out.append(f'<line x1="{left}" x2="{left + pw}" y1="{y:.1f}" y2="{y:.1f}" stroke="#ddd"/>')
        out.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">1e{e}</text>')
    for k in range(6):
        i = xmax * k / 5
        out.append(f'<text x="{px(i):.1f}" y="{top + ph + 16}" text-anchor="middle">{i:.0f}</text>')
    out.append(f'<text x="{left + pw / 2}" y="{height - 8}" text-anchor="middle">{xlabel}</text>')
    out.append(
        f'<text x="16" y="{top + ph / 2}" text-anchor="middle" '
        f'transform="rotate(-90 16 {top + ph / 2})">{ylabel}</text>'
    )
    for n, (name, ys_) in enumerate(curves.items()):
        color = COLORS[n % len(COLORS)]
        pts = " ".join(f"{px(i):.1f},{py(v):.1f}" for i, v in enumerate(ys_) if math.isfinite(v))
        out.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{pts}"/>')
        ly = top + 14 + 16 * n
        out.append(
            f'<line x1="{left + pw + 10}" x2="{left + pw + 30}" y1="{ly - 4}" y2="{ly - 4}" '
            f'stroke="{color}" stroke-width="2"/>'
        )
        out.append(f'<text x="{left + pw + 34}" y="{ly}">{name}</text>')
    out.append("</svg>")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(out) + "\n")
