"""Hand-written inline SVG charts: nothing to install, nothing fetched, works offline.

Each function returns one ``<svg class="plot" data-plot=NAME>`` element with explicit width
and height (so a browser gives it a size without any stylesheet) and ``<title>`` tooltips on
its marks. Only a handful of chart shapes are needed: histogram, lines, reliability diagram,
sorted bars and a timeline.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from html import escape

W, H = 400, 230
M_LEFT, M_RIGHT, M_TOP, M_BOTTOM = 52, 14, 26, 40

STATUS_COLORS = {
    "complete": "#2f7d32",
    "forced": "#d08a00",
    "direct": "#00838f",
    "fallback": "#7b4fa0",
    "error": "#c62828",
}
PALETTE = ["#1f6fb2", "#d08a00", "#2f7d32", "#c62828", "#7b4fa0", "#00838f", "#6d4c41"]


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """About ``count`` round tick values covering [lo, hi]."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return [lo] if math.isfinite(lo) else [0.0]
    raw = (hi - lo) / max(count, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    ticks = []
    v = first
    while v <= hi + step * 1e-9:
        ticks.append(round(v, 10))
        v += step
    return ticks


def fmt(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 10000:
        return f"{v / 1000:.0f}k"
    if abs(v) >= 100 or float(v).is_integer():
        return f"{v:.0f}"
    return f"{v:.2g}" if abs(v) < 0.01 else f"{v:.2f}".rstrip("0").rstrip(".")


@dataclass
class Frame:
    """A plotting area mapping data coordinates to pixels."""

    x0: float
    x1: float
    y0: float
    y1: float
    width: int = W
    height: int = H

    def x(self, v: float) -> float:
        span = self.x1 - self.x0 or 1.0
        return M_LEFT + (v - self.x0) / span * (self.width - M_LEFT - M_RIGHT)

    def y(self, v: float) -> float:
        span = self.y1 - self.y0 or 1.0
        return self.height - M_BOTTOM - (v - self.y0) / span * (self.height - M_TOP - M_BOTTOM)

    def axes(
        self,
        xlabel: str,
        ylabel: str,
        xticks: Sequence[float] | None = None,
        *,
        yticks: bool = True,
    ) -> list[str]:
        out = []
        base, left = self.height - M_BOTTOM, M_LEFT
        for t in nice_ticks(self.y0, self.y1) if yticks else []:
            yy = self.y(t)
            out.append(
                f'<line x1="{left}" x2="{self.width - M_RIGHT}" y1="{yy:.1f}" y2="{yy:.1f}" '
                'class="grid"/>'
                f'<text x="{left - 5}" y="{yy + 4:.1f}" text-anchor="end">{fmt(t)}</text>'
            )
        for t in xticks if xticks is not None else nice_ticks(self.x0, self.x1):
            xx = self.x(t)
            out.append(
                f'<line x1="{xx:.1f}" x2="{xx:.1f}" y1="{base}" y2="{base + 4}" class="axis"/>'
                f'<text x="{xx:.1f}" y="{base + 16}" text-anchor="middle">{fmt(t)}</text>'
            )
        out.append(
            f'<line x1="{left}" x2="{self.width - M_RIGHT}" y1="{base}" y2="{base}" class="axis"/>'
            f'<line x1="{left}" x2="{left}" y1="{M_TOP}" y2="{base}" class="axis"/>'
            f'<text x="{(left + self.width - M_RIGHT) / 2:.0f}" y="{self.height - 6}" '
            f'text-anchor="middle" class="label">{escape(xlabel)}</text>'
            f'<text transform="translate(12 {(M_TOP + base) / 2:.0f}) rotate(-90)" '
            f'text-anchor="middle" class="label">{escape(ylabel)}</text>'
        )
        return out


def svg(name: str, title: str, body: list[str], width: int = W, height: int = H) -> str:
    return (
        f'<svg class="plot" data-plot="{escape(name)}" xmlns="http://www.w3.org/2000/svg" '
        f'width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="{escape(title)}"><text x="{M_LEFT}" y="16" class="title">'
        f"{escape(title)}</text>{''.join(body)}</svg>"
    )


def empty(name: str, title: str, why: str) -> str:
    return svg(
        name,
        title,
        [f'<text x="{W / 2}" y="{H / 2}" text-anchor="middle" class="note">{escape(why)}</text>'],
    )


def histogram(
    name: str,
    title: str,
    edges: Sequence[float],
    counts: Sequence[int],
    *,
    xlabel: str,
    color: str = PALETTE[0],
    ylabel: str = "pairs",
) -> str:
    if not sum(counts):
        return empty(name, title, "no values")
    frame = Frame(edges[0], edges[-1], 0, max(counts) * 1.05)
    body = frame.axes(xlabel, ylabel)
    for lo, hi, c in zip(edges[:-1], edges[1:], counts, strict=True):
        if not c:
            continue
        x, w = frame.x(lo), max(frame.x(hi) - frame.x(lo) - 1, 1)
        y = frame.y(c)
        body.append(
            f'<rect x="{x:.1f}" y="{y:.1f}" width="{w:.1f}" height="{frame.y(0) - y:.1f}" '
            f'fill="{color}"><title>{fmt(lo)}–{fmt(hi)}: {c}</title></rect>'
        )
    return svg(name, title, body)


def lines(
    name: str,
    title: str,
    series: Sequence[tuple[str, Sequence[float], Sequence[float]]],
    *,
    xlabel: str,
    ylabel: str,
    step: bool = True,
    colors: Sequence[str] | None = None,
) -> str:
    """One polyline per (label, xs, ys) series, with a legend; ``step`` draws a staircase."""
    points = [(x, y) for _, xs, ys in series for x, y in zip(xs, ys, strict=True)]
    if not points:
        return empty(name, title, "no values")
    frame = Frame(
        min(0.0, *(p[0] for p in points)),
        max(p[0] for p in points) or 1.0,
        0,
        max(p[1] for p in points) * 1.05 or 1.0,
    )
    body = frame.axes(xlabel, ylabel)
    for i, (label, xs, ys) in enumerate(series):
        color = colors[i] if colors is not None else PALETTE[i % len(PALETTE)]
        coords: list[str] = []
        prev_y = 0.0
        for x, y in zip(xs, ys, strict=True):
            if step:
                coords.append(f"{frame.x(x):.1f},{frame.y(prev_y):.1f}")
            coords.append(f"{frame.x(x):.1f},{frame.y(y):.1f}")
            prev_y = y
        body.append(
            f'<polyline fill="none" stroke="{color}" stroke-width="1.8" '
            f'points="{" ".join(coords)}"><title>{escape(label)}</title></polyline>'
        )
        ly = M_TOP + 4 + 13 * i
        if i < 8:
            body.append(
                f'<rect x="{M_LEFT + 8}" y="{ly}" width="10" height="3" fill="{color}"/>'
                f'<text x="{M_LEFT + 22}" y="{ly + 5}" class="legend">{escape(label[:40])}</text>'
            )
    return svg(name, title, body)


def reliability(name: str, title: str, rows: Sequence[dict[str, float]], ece: float) -> str:
    """Observed fraction relevant against mean P(true) per bin, the diagonal as reference."""
    if not rows:
        return empty(name, title, "no judged pairs")
    frame = Frame(0, 1, 0, 1)
    ticks = [0, 0.2, 0.4, 0.6, 0.8, 1.0]
    body = frame.axes("mean P(true) in bin", "fraction relevant", ticks)
    body.append(
        f'<line x1="{frame.x(0)}" y1="{frame.y(0)}" x2="{frame.x(1)}" y2="{frame.y(1)}" '
        'class="diag"/>'
    )
    most = max(r["n"] for r in rows)
    for r in rows:
        x0, x1 = frame.x(r["lo"]), frame.x(r["hi"])
        y = frame.y(r["accuracy"])
        body.append(
            f'<rect x="{x0 + 1:.1f}" y="{y:.1f}" width="{x1 - x0 - 2:.1f}" '
            f'height="{frame.y(0) - y:.1f}" fill="{PALETTE[0]}" '
            f'fill-opacity="{0.25 + 0.6 * r["n"] / most:.2f}"><title>P(true) '
            f"{r['lo']:.1f}–{r['hi']:.1f}: {int(r['n'])} pairs, mean P(true) "
            f"{r['confidence']:.3f}, relevant {r['accuracy']:.3f}</title></rect>"
            f'<circle cx="{frame.x(r["confidence"]):.1f}" cy="{y:.1f}" r="3" '
            f'fill="{PALETTE[3]}"/>'
        )
    body.append(
        f'<text x="{frame.x(0.03):.0f}" y="{M_TOP + 12}" class="legend">ECE {ece:.3f}</text>'
    )
    return svg(name, title, body)


def sorted_bars(
    name: str, title: str, values: Sequence[float], *, ylabel: str, max_bars: int = 400
) -> str:
    """Values sorted descending as thin bars (green above zero, red below); long series are
    thinned to ``max_bars`` evenly spaced order statistics."""
    vals = sorted((v for v in values if not math.isnan(v)), reverse=True)
    if not vals:
        return empty(name, title, "no values")
    if len(vals) > max_bars:
        vals = [vals[round(i * (len(vals) - 1) / (max_bars - 1))] for i in range(max_bars)]
    lo, hi = min(0.0, *vals), max(0.0, *vals)
    frame = Frame(0, len(vals), lo - 0.05 * (hi - lo or 1), hi + 0.05 * (hi - lo or 1))
    body = frame.axes("queries, sorted by gain", ylabel, [])
    zero = frame.y(0)
    w = max((frame.x(1) - frame.x(0)) - 0.5, 0.5)
    for i, v in enumerate(vals):
        y = frame.y(v)
        color = PALETTE[2] if v >= 0 else PALETTE[3]
        body.append(
            f'<rect x="{frame.x(i):.1f}" y="{min(y, zero):.1f}" width="{w:.2f}" '
            f'height="{max(abs(zero - y), 0.5):.1f}" fill="{color}"><title>{v:+.3f}</title></rect>'
        )
    return svg(name, title, body)


def timeline(
    name: str,
    title: str,
    bars: Sequence[tuple[str, str, float, float, int]],
    *,
    max_bars: int = 5000,
) -> str:
    """A Gantt chart: one lane per worker, one bar per shard from start to commit (seconds
    since the first shard started). ``bars`` = (worker, shard, start, end, rows)."""
    if not bars:
        return empty(name, title, "no commit markers")
    bars = sorted(bars, key=lambda b: b[2])[:max_bars]
    workers = sorted({b[0] for b in bars})
    lane_h = 16 if len(workers) <= 12 else max(4, 200 // len(workers))
    height = M_TOP + M_BOTTOM + lane_h * len(workers) + 10
    width = W + 200
    frame = Frame(0, max(b[3] for b in bars) or 1.0, 0, 1, width=width, height=height)
    body = frame.axes("seconds since the first shard started", "worker", yticks=False)
    lane: Callable[[str], float] = lambda w: M_TOP + 6 + lane_h * workers.index(w)  # noqa: E731
    for i, w in enumerate(workers):
        if lane_h >= 12:
            body.append(
                f'<text x="{M_LEFT - 4}" y="{lane(w) + lane_h - 5}" text-anchor="end" '
                f'class="legend">w{i}</text>'
            )
    for worker, shard, start, end, rows in bars:
        x0, x1 = frame.x(start), frame.x(end)
        body.append(
            f'<rect x="{x0:.1f}" y="{lane(worker):.1f}" width="{max(x1 - x0, 1):.1f}" '
            f'height="{lane_h - 3}" fill="{PALETTE[workers.index(worker) % len(PALETTE)]}" '
            f'fill-opacity="0.75" stroke="#fff" stroke-width="0.5"><title>{escape(shard)} on '
            f"{escape(worker)}: {rows} pairs, {end - start:.1f}s ({start:.1f}–{end:.1f})"
            "</title></rect>"
        )
    return svg(name, title, body, width, height)
