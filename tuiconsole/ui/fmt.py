"""Small, pure text formatters used by several widgets (kept here so each is tested once)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

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
