"""A cheap multi-row sparkline: block characters in one style per row.

Why not ``textual.widgets.Sparkline``: it renders one differently-blended segment
per cell, which measured ~40 ms per frame for the two loss charts at 120x40 —
GIL time taken straight from the training thread. This draws the same bars as a
few plain strings (one segment per row) and only when the data or size changed.
Short series are stretched over the full width (Sparkline leaves gaps). The rows are
built column-wise from cached columns and turned into Strips once per change: a
Strip is costly to create, and the chart redraws every half second while training.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache

from rich.segment import Segment
from textual.strip import Strip
from textual.widget import Widget

LEVELS = " ▁▂▃▄▅▆▇█"


def resample(values: Sequence[float], width: int) -> list[float]:
    """``width`` points: bucket means when there are more values, repeats when fewer."""
    vals = [v for v in values if math.isfinite(v)]
    n = len(vals)
    if n == 0 or width <= 0:
        return []
    if n <= width:
        return [vals[i * n // width] for i in range(width)]
    out = []
    for i in range(width):
        lo, hi = i * n // width, max((i + 1) * n // width, i * n // width + 1)
        chunk = vals[lo:hi]
        out.append(sum(v / len(chunk) for v in chunk))  # divide first: no overflow
    return out


def bar_rows(values: Sequence[float], width: int, height: int) -> list[str]:
    """The chart as ``height`` strings of ``width`` block characters (top row first)."""
    pts = resample(values, width)
    if not pts or height <= 0:
        return [" " * max(width, 0)] * max(height, 0)
    lo, hi = min(pts), max(pts)
    span = hi / 2 - lo / 2  # halves: no overflow even across the whole float range
    eighths = height * 8
    # The minimum keeps a one-eighth stub so a flat or low series is still visible.
    levels = [1 + round((v / 2 - lo / 2) / span * (eighths - 1)) if span > 0 else 1 for v in pts]
    return ["".join(row) for row in zip(*(_column(lv, height) for lv in levels), strict=True)]


@lru_cache(maxsize=4096)
def _column(level: int, height: int) -> str:
    """One bar of ``level`` eighths as ``height`` characters, top first."""
    return "".join(LEVELS[min(8, max(0, level - (height - 1 - r) * 8))] for r in range(height))


class BlockChart(Widget):
    """Set :attr:`values` to a new sequence to redraw; colour comes from CSS ``color``.

    Uses the line API: each row is one cached string turned into a one-segment Strip.
    """

    DEFAULT_CSS = """
    BlockChart {
        height: 1fr;
        min-height: 1;
        color: $accent;
    }
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self._values: Sequence[float] = ()
        self._rows: list[str] | None = None
        self._strips: list[Strip] | None = None
        self._drawn_size: tuple[int, int] | None = None

    @property
    def values(self) -> Sequence[float]:
        return self._values

    @values.setter
    def values(self, values: Sequence[float]) -> None:
        self._values = values
        self._rows = self._strips = None
        self.refresh()

    def notify_style_update(self) -> None:
        super().notify_style_update()
        self._strips = None  # the colour (or the theme) changed

    def _check_size(self) -> tuple[int, int]:
        size = (self.size.width, self.size.height)
        if size != self._drawn_size:
            self._drawn_size = size
            self._rows = self._strips = None
        return size

    @property
    def rows(self) -> list[str]:
        width, height = self._check_size()
        if self._rows is None:
            self._rows = bar_rows(self._values, width, height)
        return self._rows

    def render_line(self, y: int) -> Strip:
        rows = self.rows
        if self._strips is None:
            style, width = self.rich_style, self.size.width
            self._strips = [Strip([Segment(row, style)], width) for row in rows]
        if y >= len(self._strips):
            return Strip.blank(self.size.width, self.rich_style)
        return self._strips[y]
