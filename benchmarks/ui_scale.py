"""Console scale: a 6,000-module tree, a 500-group optimizer, key press -> visible update.

    python -m benchmarks.ui_scale

Runs the real ConsoleApp in Textual's headless driver over a real trainer: in this
process, and (as `tuiconsole run` and `attach` do) over the socket of a training
process of its own. Also the size of the frames the socket carries at that scale.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import torch
from textual import events
from torch import nn

from benchmarks.common import Row, print_table, save
from tuiconsole.engine.trainer import RunConfig, Trainer
from tuiconsole.script import TrainingSpec
from tuiconsole.session import LocalSession
from tuiconsole.ui.app import ConsoleApp

if TYPE_CHECKING:
    from tuiconsole.remote.client import RemoteSession


def data() -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(16, 8, generator=g), torch.randint(0, 3, (16,), generator=g))] * 8


def deep_model(stages: int = 50, blocks: int = 25) -> nn.Module:
    def block() -> nn.Module:
        return nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8), nn.Dropout(0.0))

    body = nn.Sequential(*[nn.Sequential(*[block() for _ in range(blocks)]) for _ in range(stages)])
    return nn.Sequential(body, nn.Linear(8, 3))


def spec_for(model: nn.Module, groups: int = 1) -> TrainingSpec:
    params = list(model.parameters())
    if groups == 1:
        opt = torch.optim.SGD(params, lr=0.01, momentum=0.9)
    else:
        chunks = [params[i::groups] for i in range(groups)]
        opt = torch.optim.SGD([{"params": c} for c in chunks if c], lr=0.01, momentum=0.9)
    return TrainingSpec(
        model=model,
        optimizer=opt,
        criterion=nn.CrossEntropyLoss(),
        train_loader=data(),
        epochs=10**6,
    )


def visible(app: ConsoleApp, text: str) -> bool:
    strips = app.screen._compositor.render_strips()
    return any(text in strip.text for strip in strips[:2])


def visible_anywhere(app: ConsoleApp, text: str) -> bool:
    return any(text in strip.text for strip in app.screen._compositor.render_strips())


async def wait_visible(app: ConsoleApp, text: str, timeout: float = 10.0) -> float:
    t0 = time.perf_counter()
    while not visible(app, text):
        if time.perf_counter() - t0 > timeout:
            raise TimeoutError(f"{text!r} never appeared")
        await asyncio.sleep(0.001)
    return time.perf_counter() - t0


async def until(cond, timeout: float = 10.0) -> None:
    t0 = time.perf_counter()
    while not cond():
        if time.perf_counter() - t0 > timeout:
            raise TimeoutError("condition not met")
        await asyncio.sleep(0.0005)


def press(app: ConsoleApp, key: str) -> None:
    """What a terminal driver does with a key press (Pilot.press would also wait for the
    whole process to go idle, which a self-re-arming refresh timer never is)."""
    app.post_message(events.Key(key, None))


async def open_and_expand(spec: TrainingSpec, expand: bool = True) -> tuple[float, float, int]:
    """Seconds until the tree is on screen; ms to expand a not-yet-loaded 25-child node."""
    trainer = Trainer(spec, RunConfig(start_paused=True))
    session = LocalSession(trainer).start()
    app = ConsoleApp(session)
    t0 = time.perf_counter()
    async with app.run_test(size=(120, 40)):
        await wait_visible(app, "PAUSED")
        tree = app.layer_tree
        await until(lambda: len(tree._loaded) >= 3)
        opened = time.perf_counter() - t0
        n = len(app.snap.modules)
        if not expand:
            session.close()
            return opened, 0.0, n
        press(app, "down")  # the 50-stage body
        await asyncio.sleep(0.1)
        press(app, "right")
        await until(lambda: len(tree._loaded) >= 3 + 50)
        await asyncio.sleep(0.1)
        expands = []
        for _ in range(5):
            press(app, "down")  # the next stage, children not loaded yet
            await asyncio.sleep(0.1)
            before = len(tree._loaded)
            t1 = time.perf_counter()
            press(app, "right")
            await until(lambda before=before: len(tree._loaded) >= before + 25)
            await asyncio.sleep(0)  # let the refresh that shows them run
            expands.append((time.perf_counter() - t1) * 1000)
            press(app, "left")
            await asyncio.sleep(0.1)
        n = len(app.snap.modules)
    session.close()
    return opened, statistics.median(expands), n


async def key_latency(presses: int = 100) -> list[float]:
    """space -> the status bar shows PAUSED / RUNNING: ms, over `presses` presses."""
    from benchmarks.overhead import ROOT
    from tuiconsole.script import load_script

    spec = load_script(ROOT / "sample_models" / "mlp.py")
    session = LocalSession(Trainer(spec, RunConfig(log_every=50))).start()
    times = await space_latency(ConsoleApp(session), presses)
    session.close()
    return times


async def space_latency(app: ConsoleApp, presses: int) -> list[float]:
    """ms from each space press until the status bar shows PAUSED / RUNNING."""
    times = []
    async with app.run_test(size=(120, 40)):
        await wait_visible(app, "RUNNING")
        for i in range(presses):
            want = "PAUSED" if i % 2 == 0 else "RUNNING"
            t0 = time.perf_counter()
            # what a terminal driver does with a key press; Pilot.press would also
            # wait for the whole process (training included) to go idle first
            press(app, "space")
            await wait_visible(app, want)
            times.append((time.perf_counter() - t0) * 1000)
    return times


def frame_sizes() -> tuple[int, int, int]:
    """Bytes of the first frame a client gets (the tree) and of the frames after it
    (median, max over 20 steps) for a 6,000-module model in 500 param groups."""
    import tempfile

    from tuiconsole.remote import protocol as P

    with tempfile.TemporaryDirectory() as d:
        spec = spec_for(deep_model(), groups=500)
        trainer = Trainer(spec, RunConfig(run_dir=d, start_paused=True, log_every=1))
        trainer.prepare()
        encoder = P.SnapshotEncoder()
        snap = trainer._build_snapshot()
        sent: list[str] = []  # what the server keeps per client
        first = len(encoder.frame(snap, with_modules=True, log=snap.log, sent_groups=sent))
        last_log = snap.log[-1].seq if snap.log else 0
        sizes = []
        for _ in range(20):
            trainer.step_now(1)
            snap = trainer._build_snapshot()
            log = [e for e in snap.log if e.seq > last_log]
            last_log = log[-1].seq if log else last_log
            sizes.append(len(encoder.frame(snap, with_modules=False, log=log, sent_groups=sent)))
        trainer.close()
    return first, int(statistics.median(sizes)), max(sizes)


@asynccontextmanager
async def attached_mlp() -> AsyncIterator[RemoteSession]:
    """A session on the mlp sample training in a process of its own (--headless,
    attachable), the console a client of its socket, as `tuiconsole run` has it. The run
    is stopped when the block ends."""
    import os
    import subprocess
    import tempfile
    from pathlib import Path

    from benchmarks.overhead import ROOT
    from tuiconsole.remote.client import RemoteSession
    from tuiconsole.remote.registry import read_info

    with tempfile.TemporaryDirectory(dir="/tmp") as d:
        env = {**os.environ, "TUICONSOLE_RUNTIME_DIR": f"{d}/rt"}
        proc = subprocess.Popen(
            [sys.executable, "-m", "tuiconsole", "run", str(ROOT / "sample_models" / "mlp.py")]
            + ["--headless", "--run-dir", f"{d}/run"],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            await until(lambda: any(Path(f"{d}/rt").glob("*.json")), timeout=120)
            info = read_info(next(Path(f"{d}/rt").glob("*.json")))
            assert info is not None
            session = RemoteSession(info)
            yield session
            session.submit("stop").result(30)
            session.close()
            proc.wait(60)
        finally:
            if proc.poll() is None:
                proc.kill()


async def remote_key_latency(presses: int = 60) -> list[float]:
    """As key_latency, the run in a process of its own (``attached_mlp``)."""
    async with attached_mlp() as session:
        return await space_latency(ConsoleApp(session), presses)


def latency_row(name: str, lat: list[float]) -> Row:
    med = statistics.median(lat)
    q = statistics.quantiles(lat, n=10)
    return Row(
        f"{name} ({len(lat)} presses)",
        med,
        "ms",
        f"p10 {q[0]:.0f} .. p90 {q[-1]:.0f}",
        "median <= 50 ms",
        med <= 50,
    )


async def run() -> list[Row]:
    rows = []
    opened, expand_ms, n = await open_and_expand(spec_for(deep_model()))
    rows.append(Row(f"console ready, {n}-module model", opened, "s", "-", "<= 1 s", opened <= 1))
    rows.append(
        Row(
            "expand a node (25 children)",
            expand_ms,
            "ms",
            "median of 5",
            "<= 50 ms",
            expand_ms <= 50,
        )
    )
    opened500, _, _ = await open_and_expand(spec_for(deep_model(10, 10), groups=500), expand=False)
    rows.append(
        Row("console ready, 500 param groups", opened500, "s", "-", "<= 1 s", opened500 <= 1)
    )
    rows.append(latency_row("key press -> visible update, run in-process", await key_latency()))
    rows.append(
        latency_row(
            "key press -> visible update, run in its own process", await remote_key_latency()
        )
    )
    first, steady, biggest = frame_sizes()
    rows.append(Row("first frame (6,303 modules, 500 groups)", first / 1024, "KiB", "-", "-", None))
    rows.append(
        Row(
            "each frame after it (median of 20 steps)",
            steady / 1024,
            "KiB",
            f"max {biggest / 1024:.0f} KiB",
            "tree not resent: <= first / 4",
            steady <= first / 4,
        )
    )
    return rows


def main() -> int:
    torch.set_num_threads(1)
    rows = asyncio.run(run())
    print_table("Console scale", rows)
    save("ui_scale", rows)
    return 0 if all(r.passed is not False for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
