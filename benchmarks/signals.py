"""What the per-group signals cost: the engine with them (K from the budget) vs off.

    python -m benchmarks.signals [--rounds 7] [--steps 60] [--pairs 30] [--chunk 6]
                                 [--threads default,1] [--device cpu] [--model vgg]

The vgg sample (sample_models/vgg.py: SGD with momentum, two groups) by default. As
benchmarks/telemetry.py does for the telemetry: whole Trainer runs with the signals on
(``RunConfig()``: K from the time budget) and off (``RunConfig(signal_every=0)``)
interleaved (A B A B ..., benchmarks/common.py), a reader thread asking for a snapshot
10 times a second; then one run with the signals switched off and on every ``--chunk``
steps (``Signals.enabled``), which a machine whose load drifts blurs less. Both as on's
steps/s over off's, for each thread count of ``--threads`` ("default": torch's).

Beside the ratios, which carry the machine's noise, one measurement is timed directly on
the model's real gradients (``Signals.before`` + ``optimizer.step()`` + ``Signals.after``
minus the same step unmeasured), with the snapshot's read; its share of a step at the K
the budget picked is the figure noise does not blur. Target: <= 1 %.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

from benchmarks.common import (
    READ_HZ,
    Row,
    chunked_ratios,
    on_off_runs,
    print_table,
    ratio_row,
    save,
    whole_run_rate,
)
from tuiconsole.engine.config import RunConfig
from tuiconsole.engine.signals import Signals
from tuiconsole.engine.trainer import Trainer
from tuiconsole.script import TrainingSpec, load_script

ROOT = Path(__file__).resolve().parent.parent


def engine_rate(spec: TrainingSpec, steps: int, on: bool, device: str) -> tuple[float, int]:
    """steps/s of one run (and the K it ended with), a reader polling snapshots."""
    cfg = RunConfig(max_steps=steps, device=device, signal_every=None if on else 0)
    trainer = Trainer(spec, cfg)
    rate = whole_run_rate(trainer, device)
    every = trainer._record.signals.every
    trainer.close()
    return rate, every


def chunked(spec: TrainingSpec, pairs: int, chunk: int, device: str) -> list[float]:
    """One run, the signals off and on every ``chunk`` steps (``Signals.enabled``)."""
    trainer = Trainer(spec, RunConfig(device=device, epochs=10**6)).prepare()
    signals = trainer._record.signals

    def switch(enabled: bool) -> None:
        signals.enabled = enabled

    return chunked_ratios(trainer, switch, pairs, chunk, device)


def measurement_cost(spec: TrainingSpec, device: str, n: int = 30) -> tuple[float, float]:
    """Seconds of one measurement (``before`` + ``after`` around a real optimizer step,
    the step itself not counted) and of one snapshot's read of it (``view``), medians of
    ``n``, on the sample's real gradients."""
    model, opt, crit = spec.model.to(device), spec.optimizer, spec.criterion
    inputs, targets = (t.to(device) for t in next(iter(spec.train_loader)))
    opt.zero_grad()
    crit(model(inputs), targets).backward()
    names = [str(g.get("name", i)) for i, g in enumerate(opt.param_groups)]
    signals = Signals(1)

    def now() -> float:
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter()

    costs, reads = [], []
    for step in range(n + 3):
        t0 = now()
        signals.before(opt)
        t1 = now()
        opt.step()
        t2 = now()
        signals.after(opt, step)
        t3 = now()
        signals.view(names)
        t4 = now()
        if step >= 3:  # warmed up
            costs.append(t1 - t0 + t3 - t2)
            reads.append(t4 - t3)
    return statistics.median(costs), statistics.median(reads)


def measure(args: argparse.Namespace, threads: str) -> list[Row]:
    torch.set_num_threads(1 if threads == "1" else DEFAULT_THREADS)
    n = torch.get_num_threads()
    label = f"{args.model}, {args.device}, {n} thread{'s' if n != 1 else ''}"
    spec = load_script(ROOT / "sample_models" / f"{args.model}.py")
    runs = on_off_runs(lambda on: engine_rate(spec, args.steps, on, args.device), args.rounds)
    rows = [
        ratio_row(f"{label}: steps/s, signals on / off (whole runs)", runs.ratios),
        ratio_row(
            f"{label}: steps/s, on / off every {args.chunk} steps of one run ({args.pairs} pairs)",
            chunked(spec, args.pairs, args.chunk, args.device),
        ),
    ]
    everies = runs.everies
    step_s = 1 / statistics.median(runs.off_rates)
    k = statistics.median(everies)
    cost, read = measurement_cost(spec, args.device)
    share = (cost / k + read * READ_HZ * step_s) / step_s
    rows += [
        Row(f"{label}: step (signals off)", step_s * 1000, "ms", "median", "", None),
        Row(f"{label}: one measurement", cost * 1e6, "us", "median of 30", "", None),
        Row(f"{label}: a snapshot's read", read * 1e6, "us", "median of 30", "", None),
        Row(f"{label}: K (one step in K measured)", k, "", f"{min(everies)}..{max(everies)}",
            "", None),
        Row(f"{label}: the signals' own work / step", 100 * share, "%", f"K={k:g}", "<= 1%",
            share <= 0.01),
    ]  # fmt: skip
    return rows


DEFAULT_THREADS = torch.get_num_threads()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--steps", type=int, default=60, help="steps per timed run")
    ap.add_argument("--pairs", type=int, default=30, help="on/off pairs in the chunked run")
    ap.add_argument("--chunk", type=int, default=6, help="steps per chunk of the chunked run")
    ap.add_argument("--threads", default="default,1", help="thread counts: default, 1 or both")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--model", default="vgg", help="a sample_models/ script")
    args = ap.parse_args(argv)
    rows: list[Row] = []
    for threads in args.threads.split(","):
        rows += measure(args, threads.strip())
    print_table(
        f"signals on vs off (median of {args.rounds} interleaved rounds, {args.steps} steps "
        f"each, {os.cpu_count()} cores)",
        rows,
    )
    save("signals", rows, {"rounds": args.rounds, "steps": args.steps, "device": args.device})
    return 0 if all(r.passed is not False for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
