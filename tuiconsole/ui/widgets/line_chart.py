"""A line chart with axes, drawn in braille dots: the console's plots.

Why not textual-plotext (plotext in a widget), which we tried first: plotext builds
its whole figure as a matrix of Python objects on every frame. The loss figure drawn
as its PlotextPlot draws it took 27-32 ms at 38x11, 42-67 ms at 72x26 and 89-122 ms
at 156x45 (``python -m benchmarks.plots``, a loaded 2-core box), and the console
redraws its charts every second while training, on a GIL it shares with the training
thread (the console may cost <= 2% of a core). Its ticks are not step-aware either
("2497398.8" on a 10M-step axis) and textual-plotext pins plotext < 6. This draws
the same braille lines in O(points shown + cells): each series is first reduced to
two points per dot column (min and max, so a spike survives), then to a path without
repeats, so a 10M-step run costs what a 1k-step one does.

Every number on an axis is written whole (a tick whose label does not fit is left
out, never cut); change markers are a dim vertical rule and a short label above the
plot, shortened by whole words or left out when labels would overlap.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from rich.segment import Segment
from rich.style import Style
from textual.strip import Strip
from textual.widget import Widget

from tuiconsole.ui.fmt import fmt_lr

# Braille dot bits by (dx, dy) within a 2x4 cell (Unicode's dot numbering).
_DOTS = ((0x01, 0x02, 0x04, 0x40), (0x08, 0x10, 0x20, 0x80))
BRAILLE = 0x2800
_BRAILLE = tuple(chr(BRAILLE + i) for i in range(256))
AXIS = "#808080"
LABEL = "#a8a8a8"


@dataclass(frozen=True)
class Line:
    """One series: ``xs`` ascending. ``points``: drawn as dots (evals), not joined."""

    xs: Sequence[float]
    ys: Sequence[float]
    color: str
    label: str = ""
    points: bool = False
    right: bool = False  # on the right-hand axis


@dataclass(frozen=True)
class Marker:
    """A vertical rule at ``x`` with a short label (a journaled change)."""

    x: float
    label: str
    color: str = "#d7875f"


@dataclass(frozen=True)
class Chart:
    lines: tuple[Line, ...] = ()
    markers: tuple[Marker, ...] = ()
    log_y: bool = False
    log_x: bool = False  # x on a log scale (the lr range test's lrs)
    right_fmt: Callable[[float], str] | None = None  # labels of the right axis (None: none)
    right_range: tuple[float, float] | None = None  # fixed (e.g. accuracy 0..1)
    legend: bool = False  # a top row naming each labelled line in its colour
    empty: str = "no data yet"
    # Charts stacked in one pane share these, so their steps line up column for column:
    x_range: tuple[float, float] | None = None  # else the data's
    y_width: int = 0  # the y labels' column, at least
    right_width: int = 0  # cells kept right of the plot (a right axis's, or blank)


Row = list[tuple[str, str]]  # (text, colour) runs


# -- ticks and labels -------------------------------------------------------------------


def nice_step(span: float, n: int) -> float:
    """A 1, 2, 2.5 or 5 x 10^k step giving about ``n`` intervals over ``span``."""
    if span <= 0 or n <= 0 or not math.isfinite(span):
        return 1.0
    raw = span / n
    mag: float = 10.0 ** math.floor(math.log10(raw))
    for m in (1, 2, 2.5, 5, 10):
        if raw <= m * mag * (1 + 1e-9):
            return m * mag
    return 10 * mag


def linear_ticks(lo: float, hi: float, n: int) -> list[float]:
    """Round values in [lo, hi], about ``n`` of them (at least the ends' neighbours)."""
    if hi <= lo:
        return [lo]
    step = nice_step(hi - lo, max(1, n))
    first = math.ceil(lo / step - 1e-9)
    ticks: list[float] = []
    k = first
    while k * step <= hi + step * 1e-9 and len(ticks) < 100:
        ticks.append(_clean(k * step, step))
        k += 1
    return ticks


def log_ticks(lo: float, hi: float, n: int) -> list[float]:
    """1/2/5 x 10^k values in [lo, hi]; only powers of ten (every k-th) over many decades;
    finer (1..9 x 10^k, thinned) within one decade. A constant lr gets its one value."""
    if lo <= 0 or hi <= 0 or hi < lo:
        return []
    a, b = math.floor(math.log10(lo)), math.ceil(math.log10(hi))

    def within(mantissas: tuple[int, ...]) -> list[float]:
        return [
            float(f"{m}e{e}")
            for e in range(a, b + 1)
            for m in mantissas
            if lo * (1 - 1e-9) <= float(f"{m}e{e}") <= hi * (1 + 1e-9)
        ]

    n = max(n, 1)
    mid = within((1, 2, 5))
    if 1 <= len(mid) <= n:
        return mid
    if not mid:
        dense = within((1, 2, 3, 4, 5, 6, 7, 8, 9))
        return dense[:: math.ceil(len(dense) / n)] if dense else []
    sparse = within((1,))
    if 1 <= len(sparse) <= n:
        return sparse
    if not sparse:
        return mid[:: math.ceil(len(mid) / n)]
    return sparse[:: math.ceil(len(sparse) / n)]


def _dense_ticks(lo: float, hi: float, n: int, rows: int) -> list[float]:
    """Linear ticks, at least three where the rows allow (no more than one per row)."""
    ticks = linear_ticks(lo, hi, n)
    for _ in range(3):
        if len(ticks) >= 3:
            break
        finer = linear_ticks(lo, hi, n * 2)
        if len(finer) > rows:
            break
        ticks, n = finer, n * 2
    return ticks


def _clean(v: float, step: float) -> float:
    """``k * step`` without float noise (0.30000000000000004 -> 0.3)."""
    digits = max(0, -math.floor(math.log10(step)) + 2)
    return round(v, digits)


def fmt_tick(v: float, step: float) -> str:
    """A tick label exact to the tick step: 0.25, 1.5, 1200, 2.5e-4."""
    if v == 0:
        return "0"
    if abs(v) >= 1e5 or abs(v) < 1e-3:
        return fmt_lr(v)
    decimals = max(0, -math.floor(math.log10(step) + 1e-9))
    if round(step * 10**decimals, 9) % 1:  # 2.5 x 10^k: one digit more
        decimals += 1
    return f"{v:.{decimals}f}"


def fmt_step(v: float) -> str:
    """A step number short and exact for round ticks: 500, 1200, 25k, 2.5M."""
    n = round(v)
    for div, suffix in ((1_000_000_000, "G"), (1_000_000, "M"), (1000, "k")):
        if abs(n) >= div * 10 or (abs(n) >= div and n % (div // 10) == 0 and abs(n) >= 10_000):
            q = n / div
            text = f"{q:.1f}".rstrip("0").rstrip(".") if q != int(q) else str(int(q))
            if float(text) * div == n:
                return text + suffix
    return str(n)


# -- drawing ----------------------------------------------------------------------------


def reduce_points(
    xs: Sequence[float], ys: Sequence[float], x0: float, x1: float, cols: int
) -> list[tuple[float, float]]:
    """At most two points (min, max) per dot column over [x0, x1]: O(len) once, then
    the drawing is O(cols) whatever the series' length."""
    n = min(len(xs), len(ys))
    if n <= 2 * cols or x1 <= x0:
        return [(xs[i], ys[i]) for i in range(n) if math.isfinite(ys[i])]
    out: list[tuple[float, float]] = []
    scale = (cols - 1) / (x1 - x0)
    col = None
    lo = hi = None
    for i in range(n):
        y = ys[i]
        if not math.isfinite(y):
            continue
        c = int((xs[i] - x0) * scale)
        if c != col:
            if lo is not None and hi is not None:
                out.extend(sorted((lo, hi)) if lo[0] <= hi[0] else sorted((hi, lo)))
            col, lo, hi = c, (xs[i], y), (xs[i], y)
        else:
            assert lo is not None and hi is not None
            if y < lo[1]:
                lo = (xs[i], y)
            if y > hi[1]:
                hi = (xs[i], y)
    if lo is not None and hi is not None:
        out.extend(sorted((lo, hi)))
    return out


class _Canvas:
    """Braille dots over ``w`` x ``h`` cells, each cell in the colour drawn last."""

    def __init__(self, w: int, h: int) -> None:
        self.w, self.h = w, h
        self.bits = [[0] * w for _ in range(h)]
        self.color: list[list[str]] = [[""] * w for _ in range(h)]
        self.chars: dict[tuple[int, int], tuple[str, str]] = {}  # (row, col): glyph

    def dot(self, x: int, y: int, color: str) -> None:
        """``x`` in [0, 2w), ``y`` in [0, 4h) from the top."""
        if 0 <= x < 2 * self.w and 0 <= y < 4 * self.h:
            r, c = y >> 2, x >> 1
            self.bits[r][c] |= _DOTS[x & 1][y & 3]
            self.color[r][c] = color

    def line(self, x0: int, y0: int, x1: int, y1: int, color: str) -> None:
        """Dots from (x0, y0) to (x1, y1): one per step along the longer axis."""
        n = max(abs(x1 - x0), abs(y1 - y0))
        bits, colors, w2, h4 = self.bits, self.color, 2 * self.w, 4 * self.h
        for i in range(n + 1):
            x = x0 + (x1 - x0) * i // n if n else x0
            y = y0 + (y1 - y0) * i // n if n else y0
            if 0 <= x < w2 and 0 <= y < h4:
                r, c = y >> 2, x >> 1
                bits[r][c] |= _DOTS[x & 1][y & 3]
                colors[r][c] = color

    def glyph(self, row: int, col: int, char: str, color: str) -> None:
        if 0 <= row < self.h and 0 <= col < self.w:
            self.chars[(row, col)] = (char, color)

    def rows(self, rules: dict[int, str]) -> list[Row]:
        """Each row as (text, colour) runs: glyphs, else braille, else a marker's rule."""
        out = []
        for r in range(self.h):
            bits, colors = self.bits[r], self.color[r]
            row: Row = []
            text: list[str] = []
            run_color = None
            for c in range(self.w):
                glyph = self.chars.get((r, c)) if self.chars else None
                if glyph is not None:
                    ch, color = glyph
                elif bits[c]:
                    ch, color = _BRAILLE[bits[c]], colors[c]
                elif c in rules:
                    ch, color = "│", rules[c]
                else:
                    ch, color = " ", ""
                if color != run_color:
                    if text:
                        row.append(("".join(text), run_color or ""))
                    text, run_color = [], color
                text.append(ch)
            if text:
                row.append(("".join(text), run_color or ""))
            out.append(row)
        return out


def _y_range(values: list[float], log: bool) -> tuple[float, float] | None:
    vals = [v for v in values if math.isfinite(v) and (v > 0 or not log)]
    if not vals:
        return None
    lo, hi = min(vals), max(vals)
    if log:
        if hi <= lo * 1.0001:
            return lo / 1.5, hi * 1.5
        pad = (math.log10(hi) - math.log10(lo)) * 0.04
        return lo / 10**pad, hi * 10**pad
    if hi - lo <= 1e-12 * max(abs(hi), 1e-300):
        d = abs(hi) * 0.1 or 1.0
        return lo - d, hi + d
    pad = (hi - lo) * 0.04
    return lo - pad, hi + pad


def short_label(text: str, width: int) -> str:
    """Whole words of ``text`` within ``width`` cells (a cut word, or number, is dropped)."""
    if len(text) <= width:
        return text
    words, out = text.split(), ""
    for w in words:
        cand = f"{out} {w}" if out else w
        if len(cand) + 1 > width:
            break
        out = cand
    return f"{out}…" if out else ""


def render(chart: Chart, width: int, height: int) -> list[Row]:
    """The chart as ``height`` rows of (text, colour) runs, each ``width`` cells wide."""
    if width <= 0 or height <= 0:
        return []
    rows: list[Row] = []
    if chart.legend and height >= 4:
        rows.append(_legend(chart.lines, width))
    lines = [_drawable(ln, chart.log_y and not ln.right) for ln in chart.lines]
    lines = [ln for ln in lines if ln.xs]
    markers = chart.markers
    if chart.log_x:
        lines = [_log_x(ln) for ln in lines]
        lines = [ln for ln in lines if ln.xs]
        markers = tuple(Marker(math.log10(m.x), m.label, m.color) for m in markers if m.x > 0)
    xs_all = [x for ln in lines for x in (ln.xs[0], ln.xs[-1])]
    left_vals = [y for ln in lines if not ln.right for y in ln.ys]
    yr = _y_range(left_vals, chart.log_y)
    if not xs_all or yr is None or height - len(rows) < 3:
        rows.extend(_blank(width, chart.empty if i == 0 else "") for i in range(height - len(rows)))
        return rows
    x0, x1 = min(xs_all), max(xs_all)
    if chart.x_range is not None and not chart.log_x:
        x0, x1 = min(x0, chart.x_range[0]), max(x1, chart.x_range[1])
    if x1 <= x0:
        x1 = x0 + 1
    want_marks = [m for m in markers if x0 <= m.x <= x1]
    mark_row = bool(want_marks) and height - len(rows) >= 6
    plot_h = height - len(rows) - 1 - (1 if mark_row else 0)  # the x axis row
    # y ticks and the label column
    ylo, yhi = yr
    n_yt = max(2, plot_h // 2)
    if chart.log_y:
        yt = log_ticks(ylo, yhi, n_yt)
        ylabels = [fmt_lr(v) for v in yt]
    else:
        yt = _dense_ticks(ylo, yhi, n_yt, plot_h)
        step = yt[1] - yt[0] if len(yt) > 1 else abs(yt[0]) or 1.0
        ylabels = [fmt_tick(v, step) for v in yt]
    lw = max(max((len(s) for s in ylabels), default=1), chart.y_width)
    right = chart.right_fmt is not None and any(ln.right for ln in lines)
    rr: tuple[float, float] | None = None
    rt: list[float] = []
    rlabels: list[str] = []
    if right:
        rvals = [y for ln in lines if ln.right for y in ln.ys]
        rr = chart.right_range or _y_range(rvals, False)
        if rr is not None:
            rt = _dense_ticks(rr[0], rr[1], max(2, plot_h // 2), plot_h)
            assert chart.right_fmt is not None
            rlabels = [chart.right_fmt(v) for v in rt]
    rw = max(max((len(s) for s in rlabels), default=0), chart.right_width - 1)
    plot_w = width - lw - 1 - (rw + 1 if rlabels else max(0, chart.right_width))
    if plot_w < 8 or plot_h < 2:
        rows.extend(_blank(width, chart.empty if i == 0 else "") for i in range(height - len(rows)))
        return rows
    canvas = _Canvas(plot_w, plot_h)
    dots_w, dots_h = 2 * plot_w, 4 * plot_h

    def fy(v: float, lo: float, hi: float, log: bool) -> int:
        if log:
            t = (math.log10(v) - math.log10(lo)) / (math.log10(hi) - math.log10(lo))
        else:
            t = (v - lo) / (hi - lo)
        return round((1 - t) * (dots_h - 1))

    def fx(v: float) -> int:
        return round((v - x0) / (x1 - x0) * (dots_w - 1))

    for ln in lines:
        lo, hi, log = (ylo, yhi, chart.log_y)
        if ln.right:
            if rr is None:
                continue
            lo, hi, log = rr[0], rr[1], False
        pts = reduce_points(ln.xs, ln.ys, x0, x1, dots_w)
        if log:
            pts = [(x, y) for x, y in pts if y > 0]
        if not pts:
            continue
        if ln.points:
            for x, y in pts:
                canvas.glyph(fy(y, lo, hi, log) >> 2, fx(x) >> 1, "●", ln.color)
            continue
        path = _dot_path(pts, x0, x1, lo, hi, log, dots_w, dots_h)
        canvas.dot(*path[0], ln.color)
        for a, b in zip(path, path[1:], strict=False):
            canvas.line(*a, *b, ln.color)
    # One rule per column (the newest change there): 500 changes cost what 80 do.
    by_col = {fx(m.x) >> 1: m for m in want_marks}
    want_marks = sorted(by_col.values(), key=lambda m: m.x)
    rules = {col: m.color for col, m in by_col.items()}
    if mark_row:
        rows.append(_marker_row(want_marks, fx, lw + 1, width))
    # y labels at their tick rows (each row shows at most one label)
    ytick_rows: dict[int, str] = {}
    for v, text in zip(yt, ylabels, strict=True):
        ytick_rows.setdefault(fy(v, ylo, yhi, chart.log_y) >> 2, text)
    rtick_rows: dict[int, str] = {}
    if rr is not None:
        for v, text in zip(rt, rlabels, strict=True):
            rtick_rows.setdefault(fy(v, rr[0], rr[1], False) >> 2, text)
    for r, body in enumerate(canvas.rows(rules)):
        label = ytick_rows.get(r)
        row: Row = [((label or "").rjust(lw), LABEL), ("┤" if label else "│", AXIS)]
        row.extend(body)
        if rlabels:
            rl = rtick_rows.get(r)
            row.append(("├" if rl else "│", AXIS))
            row.append(((rl or "").ljust(rw), LABEL))
        elif chart.right_width > 0:
            row.append((" " * chart.right_width, ""))
        rows.append(row)
    n_xt = max(1, plot_w // 12)
    if chart.log_x:
        xt = [(math.log10(t), fmt_lr(t)) for t in log_ticks(10**x0, 10**x1, n_xt)]
    else:
        xt = [(t, fmt_step(t)) for t in linear_ticks(x0, x1, n_xt) if t == int(t)]
    rows.append(_x_axis(xt, fx, lw, plot_w, width, bool(rlabels)))
    return rows


LIMIT = 1e150  # values beyond (a loss of 1e200) are drawn as gaps, like NaN: no overflow


def _with_points(ln: Line, pairs: list[tuple[float, float]]) -> Line:
    """``ln`` drawn through ``pairs`` (x, y) instead: its colour, label and kind kept."""
    return replace(ln, xs=tuple(x for x, _ in pairs), ys=tuple(y for _, y in pairs))


def _drawable(ln: Line, log: bool) -> Line:
    """Only the points that can be placed: finite, within LIMIT (and > 0 on a log scale)."""
    low = 1 / LIMIT if log else -LIMIT
    pairs = [
        (x, y)
        for x, y in zip(ln.xs, ln.ys, strict=False)
        if math.isfinite(x) and -LIMIT < x < LIMIT and low < y < LIMIT
    ]
    if len(pairs) == min(len(ln.xs), len(ln.ys)):
        return ln
    return _with_points(ln, pairs)


def _log_x(ln: Line) -> Line:
    pairs = [(math.log10(x), y) for x, y in zip(ln.xs, ln.ys, strict=False) if x > 0]
    return _with_points(ln, pairs)


def _dot_path(
    pts: list[tuple[float, float]],
    x0: float,
    x1: float,
    lo: float,
    hi: float,
    log: bool,
    dots_w: int,
    dots_h: int,
) -> list[tuple[int, int]]:
    """The points in dot coordinates (y from the top, clamped), without the ones that
    change nothing drawn: repeats, and the middle of a horizontal run (a constant lr
    of 256 points is two)."""
    sx = (dots_w - 1) / (x1 - x0)
    if log:
        lo, hi = math.log10(lo), math.log10(hi)
    sy = (dots_h - 1) / (hi - lo)
    top = dots_h - 1
    path: list[tuple[int, int]] = []
    for x, y in pts:
        dx = round((x - x0) * sx)
        dy = round((hi - (math.log10(y) if log else y)) * sy)
        dy = 0 if dy < 0 else top if dy > top else dy
        if path:
            px, py = path[-1]
            if (px, py) == (dx, dy):
                continue
            if py == dy and len(path) >= 2 and path[-2][1] == dy:
                path[-1] = (dx, dy)  # the run goes on
                continue
        path.append((dx, dy))
    return path


def _blank(width: int, text: str) -> Row:
    return [(text[:width].center(width) if text else " " * width, LABEL)]


def _legend(lines: tuple[Line, ...], width: int) -> Row:
    row: Row = []
    used = 0
    for ln in lines:
        if not ln.label:
            continue
        piece = f"■ {ln.label}  "
        if used + len(piece) > width:
            break
        row.append(("■ ", ln.color))
        row.append((f"{ln.label}  ", LABEL))
        used += len(piece)
    row.append((" " * (width - used), ""))
    return row


def _marker_row(marks: list[Marker], fx: Callable[[float], int], left: int, width: int) -> Row:
    """Labels above the plot (``marks`` in x order), each starting (or, at the right edge, ending) at its rule's
    column; one that would overlap the label before it is shortened by whole words, or
    left out."""
    cells = [(" ", "")] * width
    free_from = 0
    for m in marks:
        col = left + (fx(m.x) >> 1)
        text, start = f"▾{m.label}", col
        if start + len(text) > width:  # no room on the right: the label ends at its rule
            text = f"{m.label}▾"
            start = col - len(text) + 1
            if start < free_from:
                text, start = short_label(f"▾{m.label}", width - col) or "▾", col
        if start < free_from or start + len(text) > width:
            continue
        for i, ch in enumerate(text):
            cells[start + i] = (ch, m.color)
        free_from = start + len(text) + 1
    return _runs(cells)


def _x_axis(
    ticks: list[tuple[float, str]],
    fx: Callable[[float], int],
    lw: int,
    plot_w: int,
    width: int,
    right: bool,
) -> Row:
    """``└`` and the axis line with each tick's number written into it (whole, or not)."""
    cells = [(" ", "")] * lw + [("└", AXIS)] + [("─", AXIS)] * plot_w
    if right:
        cells.append(("┘", AXIS))
    cells.extend([(" ", "")] * (width - len(cells)))
    free_from = lw + 1
    for t, text in ticks:
        col = lw + 1 + (fx(t) >> 1)
        start = max(lw + 1, col - len(text) // 2)
        start = min(start, lw + 1 + plot_w - len(text))  # the last one ends at its tick
        end = start + len(text)
        if start < free_from or start > col:
            continue
        for i, ch in enumerate(text):
            cells[start + i] = (ch, LABEL)
        free_from = end + 1
    return _runs(cells)


def _runs(cells: list[tuple[str, str]]) -> Row:
    row: Row = []
    for ch, color in cells:
        if row and row[-1][1] == color:
            row[-1] = (row[-1][0] + ch, color)
        else:
            row.append((ch, color))
    return row


def plain(rows: list[Row]) -> list[str]:
    """The rows as text (tests read charts this way)."""
    return ["".join(t for t, _ in row) for row in rows]


class LineChart(Widget):
    """Set :attr:`chart` to redraw; drawn once per change or resize, as Strips."""

    DEFAULT_CSS = """
    LineChart {
        height: 1fr;
        min-height: 3;
    }
    """

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self._chart = Chart()
        self._strips: list[Strip] | None = None
        self._rows: list[Row] | None = None
        self._drawn_size: tuple[int, int] | None = None
        self._styles: dict[str, Style] = {}

    @property
    def chart(self) -> Chart:
        return self._chart

    @chart.setter
    def chart(self, chart: Chart) -> None:
        if chart == self._chart:
            return
        self._chart = chart
        self._rows = self._strips = None
        self.refresh()

    @property
    def rows(self) -> list[Row]:
        size = (self.size.width, self.size.height)
        if size != self._drawn_size or self._rows is None:
            self._drawn_size = size
            self._rows = render(self._chart, *size)
            self._strips = None
        return self._rows

    @property
    def text(self) -> str:
        """What the chart shows, as plain text (rows joined by newlines)."""
        return "\n".join(plain(self.rows))

    def notify_style_update(self) -> None:
        super().notify_style_update()
        self._strips = None  # the background (or the theme) changed
        self._styles = {}

    def _style(self, color: str) -> Style:
        """The widget's own style with ``color`` on top, parsed once per colour."""
        style = self._styles.get(color)
        if style is None:
            own = Style.parse(color) if color else Style()
            style = self._styles[color] = self.rich_style + own
        return style

    def render_line(self, y: int) -> Strip:
        rows = self.rows
        width = self.size.width
        if self._strips is None:
            style = self._style
            self._strips = [Strip([Segment(t, style(c)) for t, c in row], width) for row in rows]
        if y >= len(self._strips):
            return Strip.blank(width, self.rich_style)
        return self._strips[y]
