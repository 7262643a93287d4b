"""Responsiveness (issue 17): key press -> visible update, and what the console costs.

    python -m benchmarks.responsiveness [--presses 40] [--seconds 10] [--no-attached]

With the mlp sample *training*:

- local: the real ConsoleApp (Textual's headless driver) over a run in this process;
  ``space`` pressed as a terminal driver delivers it, timed until the status bar shows
  PAUSED / RUNNING (the command's round trip through the trainer, and the frame);
  ``:`` timed until the command line is on screen (the UI alone).
- attached: the same, the run in a training process of its own and the console a
  client of its socket (as `tuiconsole run` / `attach` have it).
- the mounted console's CPU: the CPU time of the thread running the app's event loop
  over a window of training, as a share of one core; and the run's steps/s with the
  console mounted vs headless, measured back to back.

Targets: <= 50 ms median local, <= 100 ms attached, <= 2% of a core. On a shared,
loaded machine the numbers are noise-dominated: read them next to the machine's load.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

from benchmarks.common import Row, print_table, save
from benchmarks.overhead import ROOT
from benchmarks.ui_scale import attached_mlp, press, until, wait_visible
from tuiconsole.engine.trainer import RunConfig, Trainer
from tuiconsole.script import load_script
from tuiconsole.session import LocalSession
from tuiconsole.ui.app import ConsoleApp

MLP = ROOT / "sample_models" / "mlp.py"
POLL_S = 0.002
# Between presses, as a person types. Keys within ~50 ms of a focus change (':' right
# after esc) wait for Textual's footer to recompose: ~30 ms more on a 2-core box.
GAP_S = 0.3


async def shown(app: ConsoleApp, cond, timeout: float = 10.0) -> None:
    """Until ``cond()`` holds of a widget's content, then one full render of the screen
    (what painting that frame costs). Cheaper than rendering the whole screen at every
    poll, which on a 2-core box was most of what the old measurement measured."""
    t0 = time.perf_counter()
    while not cond():
        if time.perf_counter() - t0 > timeout:
            raise TimeoutError("never shown")
        await asyncio.sleep(POLL_S)
    app.screen._compositor.render_strips()


def status_has(app: ConsoleApp, text: str):
    return lambda: text in app.status_bar.text.plain


async def space_presses(app: ConsoleApp, presses: int) -> list[float]:
    """ms from each space press until the status bar shows PAUSED / RUNNING."""
    times = []
    await wait_visible(app, "RUNNING", timeout=60)
    for i in range(presses):
        want = "PAUSED" if i % 2 == 0 else "RUNNING"
        await asyncio.sleep(GAP_S)
        t0 = time.perf_counter()
        press(app, "space")
        await shown(app, status_has(app, want))
        times.append((time.perf_counter() - t0) * 1000)
    return times


def mlp_session() -> LocalSession:
    return LocalSession(Trainer(load_script(MLP), RunConfig(log_every=50))).start()


async def local_latencies(presses: int) -> tuple[list[float], list[float]]:
    """(space -> PAUSED/RUNNING shown, ':' -> command line shown), ms each."""
    session = mlp_session()
    app = ConsoleApp(session)
    spaces: list[float] = []
    colons: list[float] = []
    try:
        async with app.run_test(size=(120, 40)):
            spaces = await space_presses(app, presses)
            if app.state is not None and app.state.value.startswith("PAUSED"):
                press(app, "space")
                await shown(app, status_has(app, "RUNNING"))
            for _ in range(presses // 2):
                await asyncio.sleep(GAP_S)
                t0 = time.perf_counter()
                press(app, "colon")
                await shown(app, lambda: app.command_line.is_open and app.command_line.region)
                colons.append((time.perf_counter() - t0) * 1000)
                press(app, "escape")
                await until(lambda: not app.command_line.is_open)
    finally:
        session.close()
    return spaces, colons


async def console_cpu(seconds: float) -> tuple[float, float, float]:
    """(console thread CPU as % of a core, steps/s mounted, steps/s headless)."""
    session = mlp_session()
    app = ConsoleApp(session)
    try:
        async with app.run_test(size=(120, 40)):
            await wait_visible(app, "RUNNING", timeout=60)
            await asyncio.sleep(1.0)  # past start-up, into the quiet-running refresh rate
            step0, cpu0, t0 = session.snapshot().status.step, time.thread_time(), time.monotonic()
            await asyncio.sleep(seconds)
            cpu = time.thread_time() - cpu0
            wall = time.monotonic() - t0
            mounted = (session.snapshot().status.step - step0) / wall
    finally:
        session.close()
    session = mlp_session()  # the same run with nobody drawing it
    try:
        await until(lambda: session.snapshot().status.step > 0, timeout=60)
        await asyncio.sleep(1.0)
        step0, t0 = session.snapshot().status.step, time.monotonic()
        await asyncio.sleep(seconds)
        headless = (session.snapshot().status.step - step0) / (time.monotonic() - t0)
    finally:
        session.close()
    return 100 * cpu / wall, mounted, headless


async def attached_latencies(presses: int) -> list[float]:
    """As local, the run in a training process of its own (mlp, --headless, attachable)
    and the console a client of its socket."""
    async with attached_mlp() as session:
        app = ConsoleApp(session)
        async with app.run_test(size=(120, 40)):
            return await space_presses(app, presses)


def latency_row(name: str, lat: list[float], target_ms: float) -> Row:
    med = statistics.median(lat)
    spread = f"min {min(lat):.0f} .. max {max(lat):.0f}"
    if len(lat) >= 10:
        q = statistics.quantiles(lat, n=10)
        spread = f"p10 {q[0]:.0f} .. p90 {q[-1]:.0f}"
    return Row(
        f"{name} ({len(lat)})", med, "ms", spread, f"median <= {target_ms:g} ms", med <= target_ms
    )


async def run(presses: int, seconds: float, attached: bool) -> list[Row]:
    spaces, colons = await local_latencies(presses)
    rows = [
        latency_row("space -> PAUSED/RUNNING shown, local, training", spaces, 50),
        latency_row("':' -> command line shown, local, training", colons, 50),
    ]
    if attached:
        remote = await attached_latencies(presses)
        rows.append(latency_row("space -> PAUSED/RUNNING shown, attached (socket)", remote, 100))
    share, mounted, headless = await console_cpu(seconds)
    rows.append(
        Row(
            "console thread CPU, mlp training",
            share,
            "% core",
            f"{seconds:g} s",
            "<= 2%",
            share <= 2,
        )
    )
    rows.append(
        Row(
            "steps/s mounted / headless (back to back)",
            mounted / headless if headless else 0.0,
            "x",
            f"{mounted:.0f} vs {headless:.0f} steps/s",
            "-",
            None,
        )
    )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presses", type=int, default=40)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--no-attached", action="store_true", help="skip the socket measurement")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)  # the console's thread competes with one training thread
    rows = asyncio.run(run(args.presses, args.seconds, not args.no_attached))
    print_table("responsiveness (mlp training; noisy on a loaded machine)", rows)
    save("responsiveness", rows)


if __name__ == "__main__":
    main()
