"""Small, pure text formatters used by several widgets (kept here so each is tested once)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from rich.cells import cell_len
from rich.text import Text

SPARK_CHARS = "▁▂▃▄▅▆▇█"


def fmt_lr(value: float | None) -> str:
    """A learning rate (or any small hyper-parameter) short: 0.1, 0.05, 1e-3, 3.16e-4, 5e-4."""
    if value is None:
        return "-"
    if not math.isfinite(value):
        return str(value)
    if value == 0:
        return "0"
    if 0.01 <= abs(value) < 1000:
        return f"{value:.3g}"
    mantissa, exponent = f"{value:.2e}".split("e")
    mantissa = mantissa.rstrip("0").rstrip(".")
    return f"{mantissa}e{int(exponent)}"


def fmt_float(value: float | None, digits: int = 4) -> str:
    if value is None:
        return "-"
    if not math.isfinite(value):
        return str(value)
    return f"{value:.{digits}g}"


def fmt_hparam(value: Any) -> str:
    """A group hyper-parameter: numbers short, tuples (betas) as ``0.9,0.999``."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, tuple | list):
        return ",".join(fmt_hparam(v) for v in value)
    if isinstance(value, int | float):
        return fmt_lr(float(value))
    return str(value)


def fmt_count(n: int) -> str:
    """A parameter count: 812, 23.5k, 1.2M."""
    if n < 1000:
        return str(n)
    if n < 1_000_000:
        return f"{n / 1000:.1f}k"
    if n < 1_000_000_000:
        return f"{n / 1_000_000:.1f}M"
    return f"{n / 1_000_000_000:.1f}G"


def fmt_si(value: float) -> str:
    """A rate short: 41.5, 812, 23.8k, 1.2M."""
    v = abs(value)
    if v < 100:
        return f"{value:.1f}"
    if v < 1000:
        return f"{value:.0f}"
    for div, unit in ((1e3, "k"), (1e6, "M"), (1e9, "G")):
        if v < div * 1000:
            return f"{value / div:.1f}{unit}"
    return f"{value / 1e12:.1f}T"


def fmt_bytes(n: float) -> str:
    """Bytes in binary units: 512 B, 3.4 MiB, 1.2 GiB."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"  # unreachable


def fmt_elapsed(seconds: float) -> str:
    """Elapsed wall time as ``M:SS`` or ``H:MM:SS``."""
    s = max(0, int(seconds))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def spark_text(values: Sequence[float], width: int) -> str:
    """A one-line text sparkline of ``values`` squeezed (bucket means) into ``width`` cells.

    Used inside table cells, where a Sparkline widget cannot go. A constant series
    is drawn as a flat low line so "nothing changed" reads at a glance.
    """
    vals = [v for v in values if math.isfinite(v)]
    if not vals or width <= 0:
        return ""
    if len(vals) > width:
        step = len(vals) / width
        vals = [
            sum(v / len(chunk) for v in chunk)
            for i in range(width)
            if (chunk := vals[int(i * step) : max(int((i + 1) * step), int(i * step) + 1)])
        ]
    lo, hi = min(vals), max(vals)
    span = hi / 2 - lo / 2  # halves: no overflow across the float range
    if span <= 1e-12 * max(abs(hi), 1e-30):
        return SPARK_CHARS[0] * len(vals)
    top = len(SPARK_CHARS) - 1
    return "".join(SPARK_CHARS[round((v / 2 - lo / 2) / span * top)] for v in vals)


# -- fitting text to a width: a number is shown whole or not at all ---------------------------


def ellipsize(text: str, width: int, middle: bool = False) -> str:
    """``text`` in at most ``width`` cells, cut with ``…`` (names only, never numbers: a
    cut number reads as another number). ``middle``: keep both ends (``feat…_stage2``),
    for names that share a prefix and differ at the end, as split groups do."""
    if cell_len(text) <= width:
        return text
    if width <= 0:
        return ""
    if middle and width >= 5:
        tail = (width - 1) * 2 // 3
        return _head(text, width - 1 - tail) + "…" + _head(text[::-1], tail)[::-1]
    return _head(text, width - 1) + "…"


def _head(text: str, width: int) -> str:
    out = ""
    for ch in text:
        if cell_len(out + ch) > width:
            break
        out += ch
    return out


@dataclass(frozen=True)
class Piece:
    """One part of a line, with the shorter forms it may take when the line is too wide.

    ``options`` run from the richest to the shortest; a piece whose last option is an
    empty Text may disappear. ``ranks[i]`` orders the step from ``options[i]`` to
    ``options[i + 1]`` among every piece's steps (lowest first), so a line can drop the
    lr of a tag before the class of a module, and the class before the count. A
    ``name`` piece (only its last option) may instead be cut with an ellipsis, after
    every step was taken: names are cut, numbers never.
    """

    options: tuple[Text, ...]
    ranks: tuple[int, ...] = ()
    name: bool = False
    min_name: int = 1  # a name keeps at least this many cells before the ellipsis
    key: str = ""

    @classmethod
    def fixed(cls, text: Text | str, key: str = "") -> Piece:
        return cls((_text(text),), key=key)

    @classmethod
    def optional(cls, text: Text | str, rank: int, key: str = "") -> Piece:
        """Shown whole, or dropped (at ``rank``)."""
        return cls((_text(text), Text()), (rank,), key=key)


def _text(text: Text | str) -> Text:
    return text if isinstance(text, Text) else Text(text)


def fit_pieces(pieces: Sequence[Piece], width: int) -> list[Text]:
    """The form of each piece that makes the line fit in ``width`` cells.

    Steps are taken in rank order until the line fits; then names are cut with an
    ellipsis (never below their ``min_name``), then any piece not yet at its last form
    is dropped from the right. Every returned Text is one of the piece's own options or
    a name cut with ``…``: no number is ever cut.
    """
    choice = [0] * len(pieces)
    widths = [p.options[0].cell_len for p in pieces]
    total = sum(widths)
    if total <= width:
        return [p.options[0] for p in pieces]
    steps = sorted(
        (rank, i, step)
        for i, p in enumerate(pieces)
        for step, rank in enumerate(p.ranks[: len(p.options) - 1])
    )
    for _, i, step in steps:
        if total <= width:
            break
        if choice[i] != step:  # an earlier step of this piece was not taken (can't be)
            continue
        choice[i] = step + 1
        new = pieces[i].options[step + 1].cell_len
        total += new - widths[i]
        widths[i] = new
    out = [p.options[c] for p, c in zip(pieces, choice, strict=True)]
    if total <= width:
        return out
    for i, p in enumerate(pieces):
        if not p.name or total <= width:
            continue
        keep = max(p.min_name, widths[i] - (total - width))
        if keep < widths[i]:
            out[i] = _ellipsize_text(out[i], keep)
            total += out[i].cell_len - widths[i]
            widths[i] = out[i].cell_len
    for i in reversed(range(len(pieces))):
        if total <= width:
            break
        if widths[i] and not pieces[i].name:
            total -= widths[i]
            widths[i], out[i] = 0, Text()
    if total > width:  # only names left, still too wide: cut the last of them harder
        for i in reversed(range(len(pieces))):
            if widths[i] and total > width:
                keep = max(0, widths[i] - (total - width))
                out[i] = _ellipsize_text(out[i], keep) if keep else Text()
                total += out[i].cell_len - widths[i]
                widths[i] = out[i].cell_len
    return out


def _ellipsize_text(text: Text, width: int) -> Text:
    """A styled name cut with ``…``; leading spaces (the separator) are kept."""
    if text.cell_len <= width:
        return text
    if width <= 0:
        return Text()
    cut = text.copy()
    cut.truncate(width, overflow="ellipsis")
    return cut


def join_fitted(pieces: Sequence[Piece], width: int) -> Text:
    """The pieces fitted to ``width`` and joined into one Text."""
    line = Text(no_wrap=True, overflow="crop")
    for part in fit_pieces(pieces, width):
        line.append_text(part)
    return line


@dataclass(frozen=True)
class Column:
    """A table column: ``priority`` orders which go first when the table is too narrow
    (highest first); a ``flexible`` column (names) is cut with an ellipsis down to
    ``min_width`` instead of being dropped."""

    key: str
    label: str
    priority: int = 0
    flexible: bool = False
    min_width: int = 6


@dataclass(frozen=True)
class ColumnFit:
    keys: tuple[str, ...]  # the columns shown, in table order
    widths: tuple[int, ...]  # the content width of each (cells, without padding)
    dropped: tuple[str, ...] = ()

    def width_of(self, key: str) -> int:
        return self.widths[self.keys.index(key)]


def fit_columns(
    columns: Sequence[Column],
    cells: Mapping[str, Sequence[str]],
    width: int,
    padding: int = 1,
) -> ColumnFit:
    """Which columns fit in ``width`` cells, and how wide each is.

    A column is as wide as its label and its widest cell, plus ``padding`` cells on each
    side (DataTable's cell padding). Columns are dropped whole, highest ``priority``
    first (ties: the rightmost), until the rest fit with every flexible column at its
    ``min_width``; what is left over then goes to the flexible columns, up to their
    natural width. A shown cell is therefore never narrower than its text, except the
    flexible ones, which the caller cuts with :func:`ellipsize` to :meth:`ColumnFit.width_of`.
    """
    natural = {
        c.key: max([cell_len(c.label), *(cell_len(s) for s in cells.get(c.key, ()))])
        for c in columns
    }
    floor = {
        c.key: min(natural[c.key], c.min_width) if c.flexible else natural[c.key] for c in columns
    }
    kept = list(columns)

    def need() -> int:
        return sum(floor[c.key] + 2 * padding for c in kept)

    order = sorted(
        (c for c in columns if not c.flexible),
        key=lambda c: (-c.priority, -columns.index(c)),
    )
    dropped = []
    for col in order:
        if need() <= width:
            break
        kept.remove(col)
        dropped.append(col.key)
    spare = width - need()
    widths = []
    for c in kept:
        w = floor[c.key]
        if c.flexible and spare > 0:
            extra = min(spare, natural[c.key] - w)
            w, spare = w + extra, spare - extra
        widths.append(w)
    return ColumnFit(tuple(c.key for c in kept), tuple(widths), tuple(dropped))
