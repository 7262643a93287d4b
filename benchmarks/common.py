"""Interleaved A/B measurement and the result table every benchmark prints.

Timings on shared machines are noisy, so each variant is measured as a ratio
against a baseline run right next to it (A B A B ...), and we report the
median over rounds together with the spread (min..max of the ratios).
"""

from __future__ import annotations

import json
import statistics
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass
class Row:
    variant: str
    value: float  # the reported figure: a ratio or an absolute number
    unit: str  # "x bare", "ms", "MB", "s"
    spread: str  # e.g. "0.97..1.01"
    target: str
    passed: bool | None

    def cells(self) -> list[str]:
        v = f"{self.value:.3f}" if self.unit == "x bare" else f"{self.value:.3g}"
        status = "n/a" if self.passed is None else ("pass" if self.passed else "FAIL")
        return [self.variant, f"{v} {self.unit}", self.spread, self.target, status]


def interleaved_ratios(
    baseline: Callable[[], float],
    variants: dict[str, Callable[[], float]],
    rounds: int,
    warmup: int = 1,
) -> dict[str, list[float]]:
    """Run baseline, v1, baseline, v2, ... per round; each callable returns a rate.

    Returns, per variant, the list of ratios variant_rate / (mean of the
    baseline rates measured just before and just after it).
    """
    for _ in range(warmup):
        baseline()
        for fn in variants.values():
            fn()
    ratios: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        before = baseline()
        for name, fn in variants.items():
            rate = fn()
            after = baseline()
            ratios[name].append(rate / ((before + after) / 2))
            before = after
    return ratios


def summarize(ratios: list[float]) -> tuple[float, str]:
    return statistics.median(ratios), f"{min(ratios):.3f}..{max(ratios):.3f}"


def print_table(title: str, rows: list[Row], out=sys.stdout) -> None:
    header = ["variant", "result", "spread", "target", "status"]
    cells = [header] + [r.cells() for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(header))]
    print(f"\n## {title}\n", file=out)
    for n, row in enumerate(cells):
        print(
            "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |", file=out
        )
        if n == 0:
            print("|" + "|".join("-" * (w + 2) for w in widths) + "|", file=out)


def save(name: str, rows: list[Row], extra: dict | None = None) -> Path:
    path = Path("benchmarks") / "results" / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"rows": [asdict(r) for r in rows], **(extra or {})}, indent=1))
    return path
