"""A real trainer over a real small torch model, for the console's behaviour tests.

The console only ever sees the Session; the tests also read the real optimizer,
but only while the run is paused and every command the console sent has been
answered (the trainer is then idle between steps, waiting on its queue).
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from concurrent.futures import Future
from pathlib import Path

import torch
from torch import nn

from tests.helpers import trainer_of
from tuiconsole.engine.commands import CommandResult
from tuiconsole.engine.snapshot import RunState
from tuiconsole.engine.trainer import RunConfig, Trainer
from tuiconsole.script import TrainingSpec, seed_everything
from tuiconsole.session import LocalSession


def make_model() -> nn.Module:
    """Seed-style: ``features`` and ``classifier`` (with Dropout); Linear layers at
    features.0/2 and classifier.0/3/5."""
    return nn.Sequential(
        OrderedDict(
            features=nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU()),
            classifier=nn.Sequential(
                nn.Linear(16, 16),
                nn.ReLU(),
                nn.Dropout(0.1),
                nn.Linear(16, 16),
                nn.ReLU(),
                nn.Linear(16, 3),
            ),
        )
    )


def make_data(n: int = 256, batch: int = 32) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 8, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()
    return [(x[i : i + batch], y[i : i + batch]) for i in range(0, n, batch)]


class SlowLoader:
    """The batches, with a fixed pause before each, like a loader waiting on I/O.

    Pilot waits after every key until the *process* is idle (CPU time vs wall time),
    which a trainer spinning at full speed never is: each key would cost ~2 s. With a
    few ms of sleep per batch the run still trains continuously but leaves the CPU idle
    most of the time, so keys land at once.
    """

    def __init__(self, batches, delay: float) -> None:
        self.batches, self.delay = batches, delay

    def __iter__(self):
        for batch in self.batches:
            time.sleep(self.delay)
            yield batch

    def __len__(self) -> int:
        return len(self.batches)


class Exploding(nn.Module):
    """Raises on its 4th forward: for the "run errored" view."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(8, 3)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls == 4:
            raise RuntimeError("boom: activations went sideways")
        return self.lin(x)


def make_spec(model: nn.Module | None = None, delay: float = 0.0) -> TrainingSpec:
    seed_everything(0)
    model = model or make_model()
    if hasattr(model, "features"):
        groups = [
            {"params": model.features.parameters()},
            {"params": model.classifier.parameters(), "lr": 0.1},
        ]
    else:
        groups = [{"params": model.parameters()}]
    opt = torch.optim.SGD(groups, lr=0.01, momentum=0.9)
    data = make_data()
    return TrainingSpec(
        model=model,
        optimizer=opt,
        criterion=nn.CrossEntropyLoss(),
        train_loader=SlowLoader(data, delay) if delay else data,
        eval_loader=data[:2],
        epochs=100_000,
        path=Path("tiny_net.py"),
    )


class RecordingSession(LocalSession):
    """The real LocalSession; it also keeps every future it handed out, so a test can wait
    until the trainer answered what the console sent."""

    def __init__(self, trainer: Trainer) -> None:
        super().__init__(trainer)
        self.sent: list[tuple[str, Future[CommandResult]]] = []

    def submit(self, command, source: str = "ui") -> Future[CommandResult]:
        future = super().submit(command, source)
        text = command if isinstance(command, str) else command.text
        self.sent.append((text, future))
        return future

    @property
    def texts(self) -> list[str]:
        return [t for t, _ in self.sent]

    async def settle(self, timeout: float = 20.0) -> list[CommandResult]:
        """Wait (without blocking the app's loop) for every command sent so far."""
        futures = [asyncio.wrap_future(f) for _, f in self.sent]
        return list(await asyncio.wait_for(asyncio.gather(*futures), timeout))

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        return trainer_of(self).optimizer


def start_run(
    tmp_path: Path, *, paused: bool = True, delay: float = 0.02, **config
) -> RecordingSession:
    """A started run; ``delay`` s of simulated loading per batch (see SlowLoader)."""
    spec = config.pop("spec", None) or make_spec(delay=delay)
    cfg = RunConfig(
        run_dir=tmp_path / "run",
        start_paused=paused,
        snapshot_interval=0.05,
        log_every=1000,
        **config,
    )
    return RecordingSession(Trainer(spec, cfg)).start()


async def wait_until(pilot, cond, timeout: float = 15.0, what: str = "condition") -> None:
    """Let the app run (its refresh interval keeps polling) until ``cond()`` holds."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await pilot.pause(0.02)


async def until_shown(pilot, app, cond, what: str = "view") -> None:
    """Wait until the *displayed* snapshot satisfies ``cond(snap)``."""
    await wait_until(pilot, lambda: app.snap is not None and cond(app.snap), what=what)


def paused_idle(session: RecordingSession) -> bool:
    t = trainer_of(session)
    return t.state == RunState.PAUSED  # a `step N` still running is STEPPING


def screen_text(app) -> str:
    """The active screen as plain text, exactly as the terminal shows it."""
    return "\n".join(strip.text for strip in app.screen._compositor.render_strips())


def footer_text(app) -> str:
    """The footer: the screen's last line."""
    return screen_text(app).splitlines()[-1]


def log_text(app) -> str:
    return "\n".join(app.run_log.lines_text)


def lrs(session: RecordingSession) -> list[float]:
    """The real optimizer's lr per group (read while the run is paused and settled)."""
    return [g["lr"] for g in session.optimizer.param_groups]
