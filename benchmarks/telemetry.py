"""What the snapshot's telemetry costs: the engine with it (default rate) vs with it off.

    python -m benchmarks.telemetry [--rounds 7] [--steps 60] [--pairs 30] [--chunk 6]
                                   [--threads default|1] [--device cpu] [--model vgg]

One process, the VGG-style CNN of sample_models/vgg.py with its DataLoader (``--model``:
another sample, e.g. mlp, whose 1 ms steps make K > 1). Each
timed run is a Trainer over the same model (``RunConfig(max_steps=N)``, no run dir)
trained in its loop thread while a reader thread asks for a snapshot 10 times a
second, as the console does; telemetry on (the default) and
``RunConfig(telemetry=False)`` alternate (A B A B ..., benchmarks/common.py), and the
figure is on's steps/s over off's. The same is measured within one run, telemetry
switched off and on every ``--chunk`` steps (``Meter.enabled``), which a machine whose
load drifts blurs less. Off still pays the hook's one call per step
(``Meter.sampled`` returning at once); what that costs is measured too.

Beside the ratio, which carries the machine's noise, the telemetry's own work is
timed directly on a real batch of the model: a timed step (``sampled``, ``took``, ``done``),
an untimed one (``sampled`` only), and a snapshot's ``view``; their share of a step
at the K the budget picks is the figure noise does not blur. Target: <= 1 %.
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
from tuiconsole.engine.snapshot import RunState
from tuiconsole.engine.telemetry import Meter, Progress
from tuiconsole.engine.trainer import Trainer
from tuiconsole.script import TrainingSpec, load_script

ROOT = Path(__file__).resolve().parent.parent


def engine_rate(spec: TrainingSpec, steps: int, telemetry: bool, device: str) -> tuple[float, int]:
    """steps/s of one run (and the K its meter ended with), a reader polling snapshots."""
    trainer = Trainer(spec, RunConfig(max_steps=steps, telemetry=telemetry, device=device))
    rate = whole_run_rate(trainer, device)
    every = trainer._record.meter.every
    trainer.close()
    return rate, every


def chunked(spec: TrainingSpec, pairs: int, chunk: int, device: str) -> list[float]:
    """One run, telemetry switched off and on every ``chunk`` steps (``Meter.enabled``)."""
    trainer = Trainer(spec, RunConfig(device=device, epochs=10**6)).prepare()
    meter = trainer._record.meter

    def switch(enabled: bool) -> None:
        meter.enabled = enabled

    return chunked_ratios(trainer, switch, pairs, chunk, device)


def per_call(fn, n: int) -> float:
    """Seconds per call of ``fn`` (median of 5 batches of ``n``)."""
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        times.append((time.perf_counter() - t0) / n)
    return statistics.median(times)


def own_costs(spec: TrainingSpec, device: str) -> dict[str, float]:
    """The meter's own work, per call, on a real batch of the sample."""
    batch = next(iter(spec.train_loader))
    if device.startswith("cuda"):
        batch = [b.to(device) for b in batch]
    timed = Meter(device)

    def timed_step() -> None:
        timed._countdown = 1  # every call is a timed step
        timed.sampled()
        timed.took(batch)
        timed.done()

    untimed = Meter(device)
    untimed._countdown = 10**12  # never a timed step: the countdown alone

    off = Meter(device, enabled=False)
    progress = Progress(RunState.RUNNING, 10, 1000, None, 0, 0, None)
    for _ in range(200):
        timed_step()
    costs = {
        "timed step (sampled + took + done)": per_call(timed_step, 2000),
        "untimed step (sampled)": per_call(untimed.sampled, 20000),
        "off (sampled, disabled)": per_call(off.sampled, 20000),
        "view (per snapshot)": per_call(lambda: timed.view(60.0, progress), 500),
    }
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return costs


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--steps", type=int, default=60, help="steps per timed run")
    ap.add_argument("--pairs", type=int, default=30, help="on/off pairs in the chunked run")
    ap.add_argument("--chunk", type=int, default=6, help="steps per chunk of the chunked run")
    ap.add_argument("--threads", choices=["default", "1"], default="default")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--model", default="vgg", help="a sample_models/ script (mlp: fast steps)")
    args = ap.parse_args(argv)
    if args.threads == "1":
        torch.set_num_threads(1)
    spec = load_script(ROOT / "sample_models" / f"{args.model}.py")
    device = args.device
    runs = on_off_runs(lambda on: engine_rate(spec, args.steps, on, device), args.rounds)
    n = torch.get_num_threads()
    label = f"{args.model}, {device}, {n} thread{'s' if n != 1 else ''}"
    rows = [
        ratio_row(f"{label}: engine steps/s, telemetry on / off (whole runs)", runs.ratios),
        ratio_row(
            f"{label}: steps/s, on / off every {args.chunk} steps of one run ({args.pairs} pairs)",
            chunked(spec, args.pairs, args.chunk, device),
        ),
    ]
    everies = runs.everies
    step_s = 1 / statistics.median(runs.off_rates)
    k = statistics.median(everies)
    costs = own_costs(spec, device)
    for name, seconds in costs.items():
        rows.append(Row(f"{label}: {name}", seconds * 1e6, "us", "median of 5", "", None))
    timed, untimed = costs["timed step (sampled + took + done)"], costs["untimed step (sampled)"]
    per_step = timed / k + untimed * (1 - 1 / k)
    per_step += costs["view (per snapshot)"] * READ_HZ * step_s  # snapshots during one step
    share = per_step / step_s
    rows += [
        Row(f"{label}: step (telemetry off)", step_s * 1000, "ms", "median", "", None),
        Row(
            f"{label}: K (one step in K timed)", k, "", f"{min(everies)}..{max(everies)}", "", None
        ),
        Row(
            f"{label}: telemetry's own work / step",
            100 * share,
            "%",
            f"K={k:g}",
            "<= 1%",
            share <= 0.01,
        ),
    ]
    print_table(
        f"telemetry on vs off (median of {args.rounds} interleaved rounds, {args.steps} steps "
        f"each, {os.cpu_count()} cores)",
        rows,
    )
    save("telemetry", rows, {"rounds": args.rounds, "steps": args.steps, "device": device})
    return 0 if all(r.passed is not False for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
