"""The console's charts: one frame's drawing cost at step 1k and at step 10M.

    python -m benchmarks.plots [--rounds N]
    python -m benchmarks.plots --live 10     # + the charts' share of a live console's time

Builds the snapshot a run has at step 1k and at step 10M (the engine's downsampled
history: 1024 loss buckets, 256 lr buckets per group, 200 evals, 500 changes) and
times what a redraw of the loss pane and the plot view costs: the chart built from
the snapshot, then drawn at 80x24's, 120x40's and 160x50's chart sizes. Frame time
is flat in the run's length because the history is bounded and each chart reduces a
series to two points per dot column before drawing.

``--live S`` also trains sample_models/mlp.py for S seconds under the mounted console
(120x40, headless driver) and reports the time the loss pane's charts took per second
of training: building the charts from each snapshot and drawing them.

With textual-plotext installed (``pip install textual-plotext``, not a dependency) it
also times the same loss figure drawn the way its PlotextPlot widget draws it, which
was tried first (see tuiconsole/ui/widgets/line_chart.py for why it was not kept).
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Callable

from benchmarks.common import Row, print_table, save
from tuiconsole.engine.snapshot import (
    Change,
    EvalPoint,
    GroupLr,
    RunState,
    RunStatus,
    Series,
    Snapshot,
)
from tuiconsole.ui.widgets.line_chart import render
from tuiconsole.ui.widgets.plots import loss_chart, lr_chart

SIZES = ((38, 11), (72, 26), (156, 45))  # the loss pane at 80x24, 120x40; the plot view


def run_snapshot(steps: int) -> Snapshot:
    """What the engine keeps of a run of ``steps`` steps (history is downsampled)."""
    n = min(steps, 1024)
    hsteps = tuple(round((i + 1) * steps / n) for i in range(n))
    lsteps = hsteps[:: max(1, n // 256)]
    every = max(1, steps // 200)
    status = RunStatus("bench.py", RunState.RUNNING, 1, steps, 100.0, 60.0, "cpu")
    return Snapshot(
        seq=1,
        status=status,
        groups=(),
        modules=(),
        structure_version=1,
        loss_history=Series(hsteps, tuple(2 / (1 + i / 50) + 0.1 * math.sin(i) for i in range(n))),
        evals=tuple(EvalPoint(s, 1 / (1 + s / steps), 0.5) for s in range(every, steps + 1, every)),
        changes=tuple(
            Change(s, f"lr features {s}", "ui", ("features",), "lr")
            for s in range(max(1, steps // 500), steps + 1, max(1, steps // 500))
        )[-500:],
        lr_steps=(
            GroupLr("features", Series(lsteps, tuple(1e-3 for _ in lsteps))),
            GroupLr("head", Series(lsteps, tuple(1e-2 * 0.99**i for i in range(len(lsteps))))),
        ),
    )


def time_ms(fn: Callable[[], object], rounds: int) -> tuple[float, str]:
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times), f"{min(times):.3g}..{max(times):.3g}"


def plotext_frame(snap: Snapshot, w: int, h: int) -> Callable[[], object] | None:
    """The same loss figure as textual-plotext's PlotextPlot.render draws it: plotext's
    build() into ANSI, parsed into a rich Text (None when it is not installed)."""
    try:
        from rich.text import Text
        from textual_plotext.plot import Plot  # type: ignore[import-not-found]
    except ImportError:
        return None
    chart = loss_chart(snap)
    plt = Plot()

    def frame() -> object:
        plt.clear_figure()
        plt.plotsize(w, h)
        plt._set_size(w, h)
        for line in chart.lines:
            xs, ys = list(line.xs), list(line.ys)
            if line.points:
                plt.scatter(xs, ys, marker="dot", yside="right" if line.right else "left")
            else:
                plt.plot(xs, ys, marker="braille")
        for m in chart.markers[-20:]:
            plt.vline(m.x)
        return Text.from_ansi(plt.build())

    return frame


def live_chart_cost(seconds: float) -> Row:
    """ms per second of training spent in the loss pane's show() and its charts' draws."""
    import asyncio

    import torch

    from tuiconsole.engine.trainer import RunConfig, Trainer
    from tuiconsole.script import load_script
    from tuiconsole.session import LocalSession
    from tuiconsole.ui.app import ConsoleApp
    from tuiconsole.ui.widgets import charts, line_chart

    spent = [0.0]

    def timed(fn: Callable[..., object]) -> Callable[..., object]:
        def wrapper(*args: object, **kwargs: object) -> object:
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[0] += time.perf_counter() - t

        return wrapper

    charts.LossCharts.show = timed(charts.LossCharts.show)  # type: ignore[method-assign]
    line_chart.LineChart.render_line = timed(line_chart.LineChart.render_line)  # type: ignore[method-assign]
    torch.set_num_threads(1)
    spec = load_script("sample_models/mlp.py")
    trainer = Trainer(spec, RunConfig(log_every=0))
    session = LocalSession(trainer)

    async def run() -> float:
        app = ConsoleApp(session, refresh_hz=10.0, script_name="mlp.py")
        async with app.run_test(size=(120, 40)) as pilot:
            await pilot.pause()
            trainer.start()
            t0 = time.perf_counter()
            await asyncio.sleep(seconds)
            return time.perf_counter() - t0

    elapsed = asyncio.run(run())
    trainer.close()
    per_s = spent[0] / elapsed * 1000
    return Row(
        f"live: charts per s of training ({trainer.step:,} steps)", per_s, "ms/s", "", "", None
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--live", type=float, default=0.0, help="seconds of a live mlp run")
    args = ap.parse_args()
    rows = []
    for steps in (1000, 10_000_000):
        snap = run_snapshot(steps)
        for w, h in SIZES:

            def frame(w: int = w, h: int = h, snap: Snapshot = snap) -> object:
                render(loss_chart(snap), w, h)
                return render(lr_chart(snap), w, max(6, h // 2))

            ms, spread = time_ms(frame, args.rounds)
            rows.append(Row(f"loss+lr charts {w}x{h}, step {steps:,}", ms, "ms", spread, "", None))
        for w, h in SIZES:
            fn = plotext_frame(snap, w, h)
            if fn is not None:
                ms, spread = time_ms(fn, max(3, args.rounds // 4))
                rows.append(
                    Row(f"textual-plotext loss {w}x{h}, step {steps:,}", ms, "ms", spread, "", None)
                )
    if args.live:
        rows.append(live_chart_cost(args.live))
    print_table("Chart frames (ms per redraw; meaningless on a loaded box)", rows)
    save("plots", rows)


if __name__ == "__main__":
    main()
