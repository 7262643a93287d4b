"""Scale: bounded history, command latency on a 500-group optimizer, start-up time.

    python -m benchmarks.scale

The console-side figures (5,000-module tree, key press -> visible update) are
in ``benchmarks.ui_scale``.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
import tracemalloc

import torch
from torch import nn

from benchmarks.common import Row, print_table, save
from tuiconsole.engine import commands as C
from tuiconsole.engine.metrics import LossTracker
from tuiconsole.engine.trainer import RunConfig, Trainer
from tuiconsole.script import TrainingSpec


def history_memory(steps: int) -> tuple[float, float]:
    """MB held by the loss history after `steps` values, and the per-frame read cost (ms)."""
    tracemalloc.start()
    tracker = LossTracker()
    chunk = torch.rand(4096)
    done = 0
    while done < steps:
        n = min(4096, steps - done)
        # feed values the way the trainer does: pending device tensors, one batched read
        for i in range(n):
            tracker._pending.append(chunk[i])
        tracker._first_pending_step = done + 1
        tracker.flush()
        done += n
    current, _peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    t0 = time.perf_counter()
    for _ in range(100):
        tracker.recent_series()
        tracker.history.series()
    frame_ms = (time.perf_counter() - t0) * 1000 / 100
    return current / 2**20, frame_ms


def wide_spec(n_groups: int) -> TrainingSpec:
    # two layers per group, so a split can take one layer out of a group
    model = nn.Sequential(*[nn.Linear(4, 4) for _ in range(2 * n_groups)])
    opt = torch.optim.SGD(
        [
            {"params": [*model[2 * i].parameters(), *model[2 * i + 1].parameters()]}
            for i in range(n_groups)
        ],
        lr=1e-3,
        momentum=0.9,
    )
    data = [(torch.randn(2, 4), torch.randn(2, 4))]
    return TrainingSpec(
        model=model, optimizer=opt, criterion=nn.MSELoss(), train_loader=data, epochs=10**6
    )


def command_ms(text_for: callable, n_groups: int = 500, repeats: int = 20) -> list[float]:
    """Time applying a command inside the trainer thread (queue wait excluded)."""
    trainer = Trainer(wide_spec(n_groups), RunConfig(start_paused=True))
    trainer.start()
    trainer.submit("step 2").result()
    times = []
    for i in range(repeats):
        cmd = C.parse(text_for(i))
        t0 = time.perf_counter()
        trainer._dispatch(cmd)  # the call the trainer makes; we are its only user while paused
        times.append((time.perf_counter() - t0) * 1000)
    trainer.close()
    return times


def startup_ratio(rounds: int = 7) -> tuple[float, float, str]:
    def wall(args: list[str]) -> float:
        t0 = time.perf_counter()
        subprocess.run(args, check=True, capture_output=True)
        return time.perf_counter() - t0

    ours, base = [], []
    for _ in range(rounds):
        base.append(wall([sys.executable, "-c", "pass"]))
        ours.append(wall([sys.executable, "-m", "tuiconsole", "--help"]))
    return statistics.median(ours), statistics.median(base), f"{min(ours):.3f}..{max(ours):.3f}"


def main() -> int:
    rows: list[Row] = []
    mb_10m, frame_10m = history_memory(10_000_000)
    _, frame_10k = history_memory(10_000)
    rows.append(Row("loss history, 10M steps", mb_10m, "MB", "-", "<= 64 MB", mb_10m <= 64))
    rows.append(Row("chart data per frame, 10k steps", frame_10k, "ms", "-", "same as 10M", None))
    rows.append(
        Row(
            "chart data per frame, 10M steps",
            frame_10m,
            "ms",
            "-",
            f"~ 10k ({frame_10k:.3f} ms)",
            frame_10m <= 2 * frame_10k + 0.05,
        )
    )
    decay = command_ms(lambda i: "decay 0.9")
    split = command_ms(lambda i: f"split g{i} {2 * i}")
    for name, ts in (("decay on 500 groups", decay), ("split on 500 groups", split)):
        med = statistics.median(ts)
        rows.append(Row(name, med, "ms", f"{min(ts):.2f}..{max(ts):.2f}", "<= 10 ms", med <= 10))
    ours, base, spread = startup_ratio()
    rows.append(
        Row(
            "tuiconsole --help wall",
            ours,
            "s",
            spread,
            f"<= 0.3 s (python -c pass: {base:.3f} s)",
            ours <= 0.3,
        )
    )
    print_table("Scale", rows)
    save("scale", rows)
    return 0 if all(r.passed is not False for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
