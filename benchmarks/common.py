"""Interleaved A/B measurement and the result table every benchmark prints.

Timings on shared machines are noisy, so each variant is measured as a ratio
against a baseline run right next to it (A B A B ...), and we report the
median over rounds together with the spread (min..max of the ratios).
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from tuiconsole.engine.trainer import Trainer

READ_HZ = 10.0  # how often the console asks for a snapshot


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


def ratio_row(variant: str, ratios: list[float], floor: float = 0.99) -> Row:
    """The median of on/off ratios as a row that passes at ``floor`` (1 % slower)."""
    median, spread = summarize(ratios)
    return Row(variant, median, "x bare", spread, f">= {floor:.3f}", median >= floor)


@contextmanager
def snapshot_reader(trainer: Trainer, hz: float = READ_HZ) -> Iterator[None]:
    """A reader thread asking ``trainer`` for a snapshot ``hz`` times a second while the
    block runs, as the console does."""
    done = threading.Event()

    def read() -> None:
        while not done.wait(1 / hz):
            trainer.latest_snapshot()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        yield
    finally:
        done.set()
        reader.join()


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def whole_run_rate(trainer: Trainer, device: str) -> float:
    """steps/s of one whole run of ``trainer`` in its loop thread (the run stays served,
    as benchmarks/overhead.py), a reader polling snapshots."""
    with snapshot_reader(trainer):
        t0 = time.perf_counter()
        trainer.start()
        trainer.wait_done()
        _sync(device)
        return trainer.step / (time.perf_counter() - t0)


def chunked_ratios(
    trainer: Trainer, switch: Callable[[bool], None], pairs: int, chunk: int, device: str
) -> list[float]:
    """One prepared run, a feature switched (``switch(on)``) off and on every ``chunk``
    steps (off on off on ...): each on chunk's steps/s over the mean of the off chunks
    beside it. Interleaved this finely, a machine whose load drifts over seconds blurs
    the ratio less. Closes ``trainer``."""

    def rate(enabled: bool) -> float:
        switch(enabled)
        t0 = time.perf_counter()
        trainer.step_now(chunk)
        _sync(device)
        return chunk / (time.perf_counter() - t0)

    with snapshot_reader(trainer):
        rate(True)  # warm-up
        ratios = interleaved_ratios(lambda: rate(False), {"on": lambda: rate(True)}, pairs, 0)
    trainer.close()
    return ratios["on"]


@dataclass
class OnOff:
    """Whole runs with a feature on and off, interleaved (``interleaved_ratios``)."""

    ratios: list[float]  # on's steps/s over off's, one per round
    off_rates: list[float] = field(default_factory=list)  # steps/s of each off run
    everies: list[int] = field(default_factory=list)  # the K each on run ended with


def on_off_runs(run: Callable[[bool], tuple[float, int]], rounds: int) -> OnOff:
    """``run(on)`` is one whole run's steps/s and the K it ended with."""
    result = OnOff([])

    def one(on: bool) -> float:
        rate, every = run(on)
        if on:
            result.everies.append(every)
        else:
            result.off_rates.append(rate)
        return rate

    result.ratios = interleaved_ratios(lambda: one(False), {"on": lambda: one(True)}, rounds)["on"]
    return result


def ddp_steps(trainer: Trainer, batches: list) -> tuple[Callable[[], None], Callable[[], None]]:
    """(bare, engine): one step of a bare DDP loop over ``batches`` on the prepared
    trainer's own wrapped model, optimizer and criterion, and one step of the engine
    (its pending commands / tick, then its training step). For torchrun benchmarks."""
    ddp, opt, crit = trainer._ddp, trainer.optimizer, trainer.criterion
    assert ddp is not None, "run it under torchrun with 2 ranks"
    taken = [0]

    def bare_step() -> None:
        x, y = batches[taken[0] % len(batches)]
        taken[0] += 1
        opt.zero_grad(set_to_none=True)
        crit(ddp(x), y).backward()
        opt.step()

    def engine_step() -> None:
        trainer._apply_pending()  # the ticks: one all_gather_object every K steps
        trainer._train_step()

    return bare_step, engine_step


def endless(loader: Any) -> Iterator[Any]:
    """A script's train_loader, pass after pass (a hand-written loop's batches)."""
    while True:
        yield from loader


def headless_rate(trainer: Trainer) -> float:
    """steps/s of ``trainer`` run as `--headless` runs it: its thread, and the headless
    printer polling snapshots (output thrown away). Closes the trainer."""
    from tuiconsole.headless import HeadlessPrinter
    from tuiconsole.session import LocalSession

    with open(os.devnull, "w") as devnull:
        printer = HeadlessPrinter(LocalSession(trainer), devnull)
        t0 = time.perf_counter()
        trainer.start()
        while not trainer.wait_done(0.2):
            printer.print_new()
        rate = trainer.step / (time.perf_counter() - t0)
    trainer.close()
    return rate
