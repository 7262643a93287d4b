"""The step boundary's cost: a bare loop vs the same loop calling ``steer.step(loss)``.

    python -m benchmarks.steer_overhead [--rounds 5] [--steps 40] [--threads both|default|1]

One process, one model (the VGG-style CNN of sample_models/vgg.py, its optimizer and
data), the user's own loop ``zero_grad; criterion(model(x), y).backward(); step``. Each
variant is timed right next to the bare loop (A B A B ..., benchmarks/common.py); the
figure is its steps/s over the bare loop's:

- steer.step, not served: ``tuiconsole.steer(..., listen=False)``, ``steer.step(loss)``
  after ``optimizer.step()``;
- steer.step, served: the default of ``python train.py`` (the socket is open, no
  client attached).

Beside the ratios, which carry the machine's noise, the time spent inside
``steer.step`` is measured directly (perf_counter around each call) and given as a
share of the bare step, and the calls that would be a host sync on an accelerator
(``Tensor.item``, ``float()``, ``.cpu()``, ``.tolist()``, ``bool()``...) made inside
``steer.step`` are counted per step: on CPU the loss is read from host memory for the
NaN check (no such call); ``nan_check="flush"``, what an accelerator gets, is counted
too (batched reads only). There is no device here to run CUDA's sync debug mode.
Target: the boundary costs <= 1% of a VGG step.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

import tuiconsole
from benchmarks.common import Row, interleaved_ratios, print_table, save, summarize
from tuiconsole.engine.config import RunConfig
from tuiconsole.engine.ownloop import OwnLoop
from tuiconsole.remote.registry import ENV_DIR
from tuiconsole.script import TrainingSpec, load_script

ROOT = Path(__file__).resolve().parent.parent
DEVNULL = open(os.devnull, "w")  # noqa: SIM115 - lives for the process: the runs' end lines
SYNC_METHODS = ("item", "cpu", "tolist", "numpy", "__float__", "__bool__", "__int__")


class Bench:
    """The model, optimizer and batches every variant trains (the model goes on training)."""

    def __init__(self, spec: TrainingSpec, work: Path, default_threads: int) -> None:
        self.spec = spec
        self.default_threads = default_threads
        self.batches = list(itertools.islice(iter(spec.train_loader), 16))
        self.work = work
        self.runs = itertools.count()
        self.boundary_s: list[float] = []  # time inside each steer.step, all rounds

    def step(self, batch: Any) -> torch.Tensor:
        model, opt, crit = self.spec.model, self.spec.optimizer, self.spec.criterion
        opt.zero_grad(set_to_none=True)
        inputs, targets = batch
        loss = crit(model(inputs), targets)
        loss.backward()
        opt.step()
        return loss

    def loop(self, steps: int, boundary: Callable[[torch.Tensor], None] | None) -> float:
        """steps/s of the user's loop, with ``boundary(loss)`` after each step."""
        batches = itertools.cycle(self.batches)
        t0 = time.perf_counter()
        for _ in range(steps):
            loss = self.step(next(batches))
            if boundary is not None:
                boundary(loss)
        return steps / (time.perf_counter() - t0)

    def bare(self, steps: int) -> float:
        return self.loop(steps, None)

    def steered(self, steps: int, listen: bool) -> float:
        """A run of its own per timed loop (made and closed outside the timing)."""
        run_dir = self.work / f"run{next(self.runs)}"
        inside = self.boundary_s
        with contextlib.redirect_stderr(DEVNULL):  # the run's first and last lines
            steer = tuiconsole.steer(
                self.spec.model, self.spec.optimizer, run_dir=run_dir, listen=listen
            )

            def boundary(loss: torch.Tensor) -> None:
                t = time.perf_counter()
                steer.step(loss)
                inside.append(time.perf_counter() - t)

            try:
                return self.loop(steps, boundary)
            finally:
                steer.close()


@contextlib.contextmanager
def counted_reads() -> Iterator[tuple[dict[str, int], list[bool]]]:
    """Count the Tensor methods that read a value to the host, while ``inside[0]``."""
    counts = dict.fromkeys(SYNC_METHODS, 0)
    inside = [False]
    originals = {name: getattr(torch.Tensor, name) for name in SYNC_METHODS}

    def counter(name: str) -> Callable[..., Any]:
        original = originals[name]

        def counted(self: torch.Tensor, *a: Any, **k: Any) -> Any:
            if inside[0]:
                counts[name] += 1
            return original(self, *a, **k)

        return counted

    for name in SYNC_METHODS:
        setattr(torch.Tensor, name, counter(name))
    try:
        yield counts, inside
    finally:
        for name, original in originals.items():
            setattr(torch.Tensor, name, original)


def reads_per_step(bench: Bench, steps: int, nan_check: str | None) -> float:
    """Host reads made inside the boundary per step: steer() as a user gets it on CPU
    (``nan_check`` None), or the OwnLoop with ``nan_check`` (what "auto" picks on an
    accelerator is "flush")."""
    run_dir = bench.work / f"run{next(bench.runs)}"
    spec = bench.spec
    if nan_check is None:
        with contextlib.redirect_stderr(DEVNULL):
            steer = tuiconsole.steer(spec.model, spec.optimizer, run_dir=run_dir, listen=False)
        boundary, close = steer.step, steer.close
    else:
        run = OwnLoop(
            spec.model, spec.optimizer, config=RunConfig(run_dir=run_dir, nan_check=nan_check)
        )
        run.open()
        run.begin()
        boundary, close = run.boundary, run.close
    batches = itertools.cycle(bench.batches)
    with counted_reads() as (counts, inside), contextlib.redirect_stderr(DEVNULL):
        for _ in range(steps):
            loss = bench.step(next(batches))
            inside[0] = True
            boundary(loss)
            inside[0] = False
        close()
    return sum(counts.values()) / steps


def measure(bench: Bench, steps: int, rounds: int, threads: str) -> list[Row]:
    torch.set_num_threads(bench.default_threads if threads == "default" else 1)
    n = torch.get_num_threads()
    label = f"vgg, {n} thread{'s' if n != 1 else ''}"
    bench.boundary_s.clear()
    variants = {
        "steer.step, not served": lambda: bench.steered(steps, listen=False),
        "steer.step, served (python train.py)": lambda: bench.steered(steps, listen=True),
    }
    step_rates: list[float] = []

    def bare() -> float:
        rate = bench.bare(steps)
        step_rates.append(rate)
        return rate

    ratios = interleaved_ratios(bare, variants, rounds)
    rows = []
    for name, rs in ratios.items():
        median, spread = summarize(rs)
        rows.append(Row(f"{label}: {name}", median, "x bare", spread, ">= 0.990", median >= 0.99))
    step_ms = 1000 / statistics.median(step_rates)
    boundary_ms = 1000 * statistics.median(bench.boundary_s)
    mean_ms = 1000 * statistics.fmean(bench.boundary_s)
    share = mean_ms / step_ms
    rows.append(Row(f"{label}: bare step", step_ms, "ms", "median", "", None))
    rows.append(
        Row(
            f"{label}: inside steer.step (median; mean {mean_ms * 1000:.0f} us)",
            boundary_ms,
            "ms",
            f"{len(bench.boundary_s)} calls",
            "",
            None,
        )
    )
    rows.append(
        Row(f"{label}: boundary / bare step (mean)", 100 * share, "%", "", "<= 1%", share <= 0.01)
    )
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=40, help="steps per timed loop")
    ap.add_argument("--threads", choices=["both", "default", "1"], default="both")
    args = ap.parse_args(argv)
    default_threads = torch.get_num_threads()
    spec = load_script(ROOT / "sample_models" / "vgg.py")
    spec.model.train()
    with tempfile.TemporaryDirectory(prefix="tcsteer-", dir="/tmp") as work:
        os.environ[ENV_DIR] = str(Path(work) / "rt")  # its own socket dir (short paths)
        bench = Bench(spec, Path(work), default_threads)
        rows: list[Row] = []
        for threads in ["default", "1"] if args.threads == "both" else [args.threads]:
            rows += measure(bench, args.steps, args.rounds, threads)
        torch.set_num_threads(1)
        for name, check in (("steer() on CPU", None), ('nan_check="flush"', "flush")):
            per_step = reads_per_step(bench, 200, check)
            target = "0" if check is None else "< 0.05 (batched)"
            ok = per_step == 0 if check is None else per_step < 0.05
            rows.append(
                Row(f"host reads per step inside steer.step, {name}", per_step, "", "", target, ok)
            )
    print_table(
        f"steer.step vs a bare loop (median of {args.rounds} interleaved rounds, "
        f"{args.steps} steps each, {os.cpu_count()} cores)",
        rows,
    )
    save("steer_overhead", rows, {"rounds": args.rounds, "steps": args.steps})
    return 0 if all(r.passed is not False for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
