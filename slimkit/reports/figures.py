"""Inline SVG figures for the HTML reports: line charts, histograms, heat maps, scatter plots.

Every function returns one ``<svg>`` element as text, ready to be placed in a page:
no files, no fonts, no scripts, so a report stays one self-contained file that works
opened from disk. The numbers behind a mark are in its ``<title>`` (a tooltip), and
every figure carries ``class="figure"`` and ``data-figure=NAME`` so a test (or a
person with the inspector) can find it.
"""
from __future__ import annotations

import math
from html import escape
from typing import Iterable, Sequence

PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
           "#bcbd22", "#17becf"]
_FONT = 'font-family="sans-serif"'


def _num(v: float) -> str:
    """A coordinate with two decimals (enough for pixels, short in the file)."""
    return f"{v:.2f}".rstrip("0").rstrip(".")


def fmt_tick(v: float, step: float | None = None) -> str:
    """A tick label: integers plain, small and large magnitudes in short scientific form;
    with ``step`` (the tick spacing) just enough decimals to tell neighbours apart."""
    if v == 0:
        return "0"
    a = abs(v)
    if a >= 1e5 or a < 1e-3:
        return f"{v:.1e}".replace("e+0", "e").replace("e-0", "e-")
    if step is not None and 0 < step < 1:
        return f"{v:.{min(6, -math.floor(math.log10(step) + 1e-9))}f}"
    if float(v).is_integer():
        return f"{int(v)}"
    return f"{v:.3g}"


def _step(ticks: list[float]) -> float | None:
    return ticks[1] - ticks[0] if len(ticks) > 1 else None


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """About ``count`` round tick values covering [low, high] (steps of 1, 2 or 5 x 10^k)."""
    if not (math.isfinite(low) and math.isfinite(high)):
        return [0.0]
    if high <= low:
        return [low]
    raw = (high - low) / max(count, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    first = math.ceil(low / step - 1e-9) * step
    ticks, t = [], first
    while t <= high + step * 1e-9:
        ticks.append(round(t, 12))
        t += step
    return ticks


class Axes:
    """Linear (or log10) mapping of data coordinates to the pixels of a plotting area."""

    def __init__(self, width: int, height: int, xlim, ylim, *, logx: bool = False, margin=(52, 14, 22, 40)):
        self.width, self.height = width, height
        self.left, self.right, self.top, self.bottom = margin
        self.logx = logx
        self.xlim, self.ylim = self._pad(xlim, logx), self._pad(ylim, False)

    @staticmethod
    def _pad(lim, log: bool):
        lo, hi = lim
        if log:
            lo, hi = math.log10(max(lo, 1e-12)), math.log10(max(hi, 1e-12))
        if hi - lo < 1e-12:
            lo, hi = lo - 0.5, hi + 0.5
        return lo, hi

    def x(self, v: float) -> float:
        v = math.log10(max(v, 1e-12)) if self.logx else v
        span = self.width - self.left - self.right
        return self.left + (v - self.xlim[0]) / (self.xlim[1] - self.xlim[0]) * span

    def y(self, v: float) -> float:
        span = self.height - self.top - self.bottom
        return self.height - self.bottom - (v - self.ylim[0]) / (self.ylim[1] - self.ylim[0]) * span

    def frame(self, xlabel: str, ylabel: str, title: str = "") -> list[str]:
        """Axes box, grid, ticks, labels and title."""
        x0, x1 = self.left, self.width - self.right
        y0, y1 = self.top, self.height - self.bottom
        out = [f'<rect x="{x0}" y="{y0}" width="{x1 - x0}" height="{y1 - y0}" fill="#fff" stroke="#999"/>']
        if self.logx:
            xt = [10 ** e for e in range(math.ceil(self.xlim[0]), math.floor(self.xlim[1]) + 1)] or \
                 [10 ** self.xlim[0], 10 ** self.xlim[1]]
        else:
            xt = nice_ticks(*self.xlim)
        xstep = None if self.logx else _step(xt)
        for t in xt:
            px = self.x(t)
            if x0 - 0.5 <= px <= x1 + 0.5:
                out.append(f'<line x1="{_num(px)}" y1="{y0}" x2="{_num(px)}" y2="{y1}" stroke="#eee"/>')
                out.append(f'<text x="{_num(px)}" y="{y1 + 13}" font-size="10" text-anchor="middle" {_FONT}>'
                           f'{escape(fmt_tick(t, xstep))}</text>')
        yt = nice_ticks(*self.ylim)
        for t in yt:
            py = self.y(t)
            if y0 - 0.5 <= py <= y1 + 0.5:
                out.append(f'<line x1="{x0}" y1="{_num(py)}" x2="{x1}" y2="{_num(py)}" stroke="#eee"/>')
                out.append(f'<text x="{x0 - 4}" y="{_num(py + 3)}" font-size="10" text-anchor="end" {_FONT}>'
                           f'{escape(fmt_tick(t, _step(yt)))}</text>')
        out.append(f'<text x="{(x0 + x1) / 2}" y="{self.height - 4}" font-size="11" text-anchor="middle" '
                   f'{_FONT}>{escape(xlabel)}</text>')
        out.append(f'<text x="12" y="{(y0 + y1) / 2}" font-size="11" text-anchor="middle" {_FONT} '
                   f'transform="rotate(-90 12 {(y0 + y1) / 2})">{escape(ylabel)}</text>')
        if title:
            out.append(f'<text x="{(x0 + x1) / 2}" y="{y0 - 5}" font-size="12" font-weight="bold" '
                       f'text-anchor="middle" {_FONT}>{escape(title)}</text>')
        return out


def _svg(name: str, width: int, height: int, body: Iterable[str], label: str = "") -> str:
    return (f'<svg class="figure" data-figure="{escape(name)}" xmlns="http://www.w3.org/2000/svg" '
            f'width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" '
            f'aria-label="{escape(label or name)}">' + "".join(body) + "</svg>")


def _legend(items: Sequence[tuple[str, str, bool]], x: float, y: float) -> list[str]:
    out = []
    for i, (label, color, dashed) in enumerate(items):
        yy = y + 13 * i
        dash = ' stroke-dasharray="4 3"' if dashed else ""
        out.append(f'<line x1="{x}" y1="{yy}" x2="{x + 16}" y2="{yy}" stroke="{color}" stroke-width="2"{dash}/>')
        out.append(f'<text x="{x + 20}" y="{yy + 3}" font-size="10" {_FONT}>{escape(label)}</text>')
    return out


def line_chart(name: str, series: Sequence[dict], *, xlabel: str, ylabel: str, title: str = "",
               width: int = 420, height: int = 260, ylim: tuple | None = None) -> str:
    """Lines with point markers. ``series``: dicts with ``label``, ``x``, ``y`` (None = gap),
    optional ``dashed``. Returns an empty string when there is nothing to draw."""
    pts = [(x, y) for s in series for x, y in zip(s["x"], s["y"]) if y is not None and math.isfinite(y)]
    if not pts:
        return ""
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    ax = Axes(width, height, (min(xs), max(xs)), ylim or (min(ys), max(ys)))
    body = ax.frame(xlabel, ylabel, title)
    legend = []
    for i, s in enumerate(series):
        color = s.get("color") or PALETTE[i % len(PALETTE)]
        dash = ' stroke-dasharray="4 3"' if s.get("dashed") else ""
        run: list[str] = []
        segments = []
        for x, y in zip(s["x"], s["y"]):
            if y is None or not math.isfinite(y):
                if run:
                    segments.append(run)
                run = []
                continue
            run.append(f"{_num(ax.x(x))},{_num(ax.y(y))}")
            body.append(f'<circle cx="{_num(ax.x(x))}" cy="{_num(ax.y(y))}" r="2" fill="{color}">'
                        f'<title>{escape(s["label"])}: {fmt_tick(x)}, {y:.4g}</title></circle>')
        if run:
            segments.append(run)
        for seg in segments:
            body.append(f'<polyline points="{" ".join(seg)}" fill="none" stroke="{color}" stroke-width="1.5"{dash}/>')
        legend.append((s["label"], color, bool(s.get("dashed"))))
    body += _legend(legend, ax.left + 6, ax.top + 10)
    return _svg(name, width, height, body, title or ylabel)


def histogram_chart(name: str, bins: Sequence[float], layers: Sequence[dict], *, title: str = "",
                    xlabel: str = "weight", width: int = 300, height: int = 170, markers: Sequence[float] = (),
                    curve: Sequence[float] | None = None, curve_label: str = "") -> str:
    """Overlaid step histograms over shared ``bins`` (edges). ``layers``: dicts with
    ``label``, ``counts`` (len(bins) - 1) and optional ``color``. ``markers``: x values
    drawn as thin vertical lines (centroids, mixture means); ``curve``: a density already
    scaled to counts, evaluated at the bin centres (a mixture prior)."""
    if len(bins) < 2 or not layers:
        return ""
    top = max([max(h["counts"]) for h in layers if len(h["counts"])] + [max(curve) if curve else 0, 1])
    ax = Axes(width, height, (bins[0], bins[-1]), (0, top * 1.05), margin=(46, 8, 18, 32))
    body = ax.frame(xlabel, "count", title)
    legend = []
    for i, h in enumerate(layers):
        color = h.get("color") or PALETTE[i % len(PALETTE)]
        pts = [f"{_num(ax.x(bins[0]))},{_num(ax.y(0))}"]
        for j, c in enumerate(h["counts"]):
            pts += [f"{_num(ax.x(bins[j]))},{_num(ax.y(c))}", f"{_num(ax.x(bins[j + 1]))},{_num(ax.y(c))}"]
        pts.append(f"{_num(ax.x(bins[-1]))},{_num(ax.y(0))}")
        body.append(f'<polyline points="{" ".join(pts)}" fill="{color}" fill-opacity="0.25" stroke="{color}" '
                    f'stroke-width="1"><title>{escape(h["label"])}: {sum(h["counts"]):,} weights</title></polyline>')
        legend.append((h["label"], color, False))
    if curve:
        centres = [(a + b) / 2 for a, b in zip(bins[:-1], bins[1:])]
        pts = " ".join(f"{_num(ax.x(x))},{_num(ax.y(min(y, top * 1.05)))}" for x, y in zip(centres, curve))
        body.append(f'<polyline points="{pts}" fill="none" stroke="#000" stroke-width="1"/>')
        legend.append((curve_label or "density", "#000", False))
    # Few markers: dashed lines across the plot; many (a 256-entry codebook): short ticks
    # along the axis, which stay readable.
    y_top = ax.top if len(markers) <= 16 else ax.height - ax.bottom - 8
    for m in markers:
        if bins[0] <= m <= bins[-1]:
            px = _num(ax.x(m))
            body.append(f'<line class="marker" x1="{px}" y1="{y_top}" x2="{px}" y2="{ax.height - ax.bottom}" '
                        f'stroke="#d62728" stroke-width="0.8" stroke-dasharray="2 2"><title>{m:.5g}</title></line>')
    if markers:
        legend.append(("centroids / means", "#d62728", True))
    if len(legend) > 1:  # one series: the title says what it is
        body += _legend(legend, ax.width - ax.right - 110, ax.top + 9)
    return _svg(name, width, height, body, title)


def _heat_color(v: float | None, lo: float, hi: float) -> str:
    """White (``lo``) to dark blue (``hi``); grey for a missing value."""
    if v is None or not math.isfinite(v):
        return "#ccc"
    t = 0.0 if hi <= lo else min(max((v - lo) / (hi - lo), 0.0), 1.0)
    r, g, b = (int(247 + (8 - 247) * t), int(251 + (48 - 251) * t), int(255 + (107 - 255) * t))
    return f"#{r:02x}{g:02x}{b:02x}"


def heatmap(name: str, rows: Sequence[str], cols: Sequence[str], values: Sequence[Sequence[float | None]], *,
            title: str = "", value_label: str = "", fmt: str = "{:.1f}", marks: dict | None = None,
            cell_w: int = 44, cell_h: int = 14) -> str:
    """A rows x cols grid coloured by value, each cell labelled; readable with hundreds of
    rows (a row is ``cell_h`` pixels). ``marks``: row index -> column index outlined (a
    chosen level)."""
    if not rows or not cols:
        return ""
    flat = [v for r in values for v in r if v is not None and math.isfinite(v)]
    lo, hi = (min(flat), max(flat)) if flat else (0.0, 1.0)
    label_w = min(320, 12 + 6 * max(len(r) for r in rows))
    top = 34
    width = label_w + cell_w * len(cols) + 10
    height = top + cell_h * len(rows) + 30
    body = []
    if title:
        body.append(f'<text x="4" y="13" font-size="12" font-weight="bold" {_FONT}>{escape(title)}</text>')
    for j, c in enumerate(cols):
        body.append(f'<text x="{label_w + cell_w * j + cell_w / 2}" y="{top - 5}" font-size="10" '
                    f'text-anchor="middle" {_FONT}>{escape(str(c))}</text>')
    for i, (rname, line) in enumerate(zip(rows, values)):
        y = top + cell_h * i
        body.append(f'<text x="{label_w - 4}" y="{y + cell_h - 3}" font-size="10" text-anchor="end" '
                    f'{_FONT}>{escape(rname)}</text>')
        for j, v in enumerate(line):
            x = label_w + cell_w * j
            color = _heat_color(v, lo, hi)
            text = "" if v is None else fmt.format(v)
            dark = v is not None and hi > lo and (v - lo) / (hi - lo) > 0.55
            body.append(f'<rect x="{x}" y="{y}" width="{cell_w}" height="{cell_h}" fill="{color}" stroke="#fff">'
                        f'<title>{escape(rname)} @ {escape(str(cols[j]))}: {escape(text)}</title></rect>')
            body.append(f'<text x="{x + cell_w / 2}" y="{y + cell_h - 3}" font-size="9" text-anchor="middle" '
                        f'fill="{"#fff" if dark else "#000"}" {_FONT}>{escape(text)}</text>')
        if marks and i in marks:
            x = label_w + cell_w * marks[i]
            body.append(f'<rect class="chosen" x="{x + 1}" y="{y + 1}" width="{cell_w - 2}" height="{cell_h - 2}" '
                        f'fill="none" stroke="#d62728" stroke-width="2"/>')
    ly = top + cell_h * len(rows) + 8
    for k in range(11):
        v = lo + (hi - lo) * k / 10
        body.append(f'<rect x="{label_w + 14 * k}" y="{ly}" width="14" height="10" fill="{_heat_color(v, lo, hi)}"/>')
    body.append(f'<text x="{label_w - 4}" y="{ly + 9}" font-size="10" text-anchor="end" {_FONT}>'
                f'{escape(fmt.format(lo))}</text>')
    body.append(f'<text x="{label_w + 14 * 11 + 4}" y="{ly + 9}" font-size="10" {_FONT}>{escape(fmt.format(hi))} '
                f'{escape(value_label)}</text>')
    return _svg(name, width, height, body, title)


def pareto_front(points: Sequence[tuple[float, float]]) -> list[bool]:
    """Which points are non-dominated when ``x`` is a cost (smaller is better) and ``y`` a
    gain (larger is better): no other point has x <= and y >= with one strict."""
    flags = []
    for i, (x, y) in enumerate(points):
        dominated = any((x2 <= x and y2 >= y) and (x2 < x or y2 > y) for j, (x2, y2) in enumerate(points) if j != i)
        flags.append(not dominated)
    return flags


def scatter_chart(name: str, points: Sequence[dict], *, xlabel: str, ylabel: str, title: str = "",
                  logx: bool = False, width: int = 440, height: int = 300) -> str:
    """Points (dicts with ``x``, ``y``, ``label``, optional ``href``, ``front``, ``baseline``);
    the non-dominated ones (``front``) are filled red and joined by a step line."""
    pts = [p for p in points if p.get("x") is not None and p.get("y") is not None]
    if not pts:
        return ""
    xs, ys = [p["x"] for p in pts], [p["y"] for p in pts]
    # a margin around the points, so that none sits on the frame
    if logx:
        lo, hi = math.log10(max(min(xs), 1e-12)), math.log10(max(max(xs), 1e-12))
        xlim = (10 ** (lo - 0.05 * (hi - lo or 1)), 10 ** (hi + 0.05 * (hi - lo or 1)))
    else:
        xlim = (min(xs) - 0.05 * (max(xs) - min(xs) or 1), max(xs) + 0.05 * (max(xs) - min(xs) or 1))
    ylim = (min(ys) - 0.05 * (max(ys) - min(ys) or 1), max(ys) + 0.05 * (max(ys) - min(ys) or 1))
    ax = Axes(width, height, xlim, ylim, logx=logx)
    body = ax.frame(xlabel, ylabel, title)
    front = sorted((p for p in pts if p.get("front")), key=lambda p: p["x"])
    if len(front) > 1:
        steps = []
        for a, b in zip(front, front[1:]):
            steps += [f"{_num(ax.x(a['x']))},{_num(ax.y(a['y']))}", f"{_num(ax.x(b['x']))},{_num(ax.y(a['y']))}"]
        steps.append(f"{_num(ax.x(front[-1]['x']))},{_num(ax.y(front[-1]['y']))}")
        body.append(f'<polyline points="{" ".join(steps)}" fill="none" stroke="#d62728" stroke-width="1" '
                    f'stroke-dasharray="3 2"/>')
    for p in pts:
        cx, cy = _num(ax.x(p["x"])), _num(ax.y(p["y"]))
        cls = "point front" if p.get("front") else "point"
        if p.get("baseline"):
            shape = (f'<rect class="{cls}" x="{float(cx) - 4}" y="{float(cy) - 4}" width="8" height="8" '
                     f'fill="{"#d62728" if p.get("front") else "#fff"}" stroke="#333">')
            close = "</rect>"
        else:
            shape = (f'<circle class="{cls}" cx="{cx}" cy="{cy}" r="{4 if p.get("front") else 3}" '
                     f'fill="{"#d62728" if p.get("front") else "#1f77b4"}" fill-opacity="0.85" stroke="#333" '
                     f'stroke-width="0.5">')
            close = "</circle>"
        mark = f'{shape}<title>{escape(p["label"])}: {fmt_tick(p["x"])}, {p["y"]:.4g}</title>{close}'
        if p.get("href"):
            mark = f'<a href="{escape(p["href"])}">{mark}</a>'
        body.append(mark)
    body += _legend([("non-dominated (Pareto front)", "#d62728", True)], ax.left + 6, ax.height - ax.bottom - 10)
    return _svg(name, width, height, body, title)
