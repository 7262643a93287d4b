"""A hand-made, frozen session for pinned screenshot tests only.

Behaviour tests use the real engine; this exists so the SVG snapshots are
byte-stable (no elapsed time, no steps/s jitter) and fast.
"""

from __future__ import annotations

import math
from concurrent.futures import Future
from dataclasses import replace

from tuiconsole.engine.commands import CommandResult, parse
from tuiconsole.engine.snapshot import (
    EvalPoint,
    GroupView,
    LogEntry,
    ModuleNode,
    RunError,
    RunState,
    RunStatus,
    Series,
    Snapshot,
)
from tuiconsole.errors import CommandError


def _vgg_modules() -> tuple[ModuleNode, ...]:
    feats = [
        ("0", "Conv2d", 448),
        ("1", "BatchNorm2d", 32),
        ("2", "ReLU", 0),
        ("3", "MaxPool2d", 0),
        ("4", "Conv2d", 4640),
        ("5", "BatchNorm2d", 64),
        ("6", "ReLU", 0),
        ("7", "MaxPool2d", 0),
        ("8", "Conv2d", 18496),
        ("9", "BatchNorm2d", 128),
        ("10", "ReLU", 0),
        ("11", "MaxPool2d", 0),
    ]
    clf = [
        ("0", "Linear", 131200),
        ("1", "ReLU", 0),
        ("2", "Dropout", 0),
        ("3", "Linear", 1290),
    ]
    nf = sum(n for _, _, n in feats)
    nc = sum(n for _, _, n in clf)
    mods = [
        ModuleNode(
            "",
            "SmallVGG",
            0,
            nf + nc,
            (),
            ("features", "classifier"),
            children=("features", "classifier"),
        ),
        ModuleNode(
            "features",
            "Sequential",
            0,
            nf,
            (),
            ("features",),
            children=tuple(f"features.{i}" for i, _, _ in feats),
        ),
    ]
    for i, cls, n in feats:
        g = ("features",) if n else ()
        mods.append(ModuleNode(f"features.{i}", cls, n, n, g, g))
    mods.append(
        ModuleNode(
            "classifier",
            "Sequential",
            0,
            nc,
            (),
            ("classifier",),
            children=tuple(f"classifier.{i}" for i, _, _ in clf),
        )
    )
    for i, cls, n in clf:
        g = ("classifier",) if n else ()
        mods.append(ModuleNode(f"classifier.{i}", cls, n, n, g, g))
    return tuple(mods)


def frozen_snapshot(state: RunState = RunState.PAUSED, error: RunError | None = None) -> Snapshot:
    """A paused VGG run at step 1200 with fixed numbers everywhere."""
    steps = tuple(range(700, 1200, 10))
    recent = tuple(1.2 * math.exp(-s / 900) + 0.05 * math.sin(s / 7) + 0.2 for s in steps)
    hsteps = tuple(range(0, 1200, 25))
    history = tuple(2.3 * math.exp(-s / 500) + 0.25 for s in hsteps)
    status = RunStatus(
        script="vgg.py",
        state=state,
        epoch=19,
        step=1200,
        steps_per_sec=0.0 if state != RunState.RUNNING else 41.5,
        elapsed=83.0,
        device="cpu",
        last_eval=EvalPoint(1000, 0.6123, 0.812),
        error=error,
        epochs=20,
    )
    groups = (
        GroupView(
            0,
            "features",
            0.001,
            (("momentum", 0.9), ("dampening", 0.0), ("weight_decay", 0.0005), ("nesterov", False)),
            12,
            23808,
            tuple([0.001] * 30),
        ),
        GroupView(
            1,
            "classifier",
            0.01,
            (("momentum", 0.9), ("dampening", 0.0), ("weight_decay", 0.0005), ("nesterov", False)),
            4,
            132490,
            tuple([0.01] * 20 + [0.001] * 10),
        ),
    )
    log = (
        LogEntry(1, 0, 0.0, "info", "started SmallVGG · SGD · 2 groups · cpu", source="run"),
        LogEntry(2, 500, 20.0, "eval", "eval loss 1.2040 acc 55.1%", source="run"),
        LogEntry(
            3,
            800,
            31.0,
            "command",
            "decay 0.1 classifier → classifier lr 0.01 → 0.001 (state kept)",
            source="ui",
        ),
        LogEntry(4, 1000, 40.0, "eval", "eval loss 0.6123 acc 81.2%", source="run"),
        LogEntry(5, 1100, 44.0, "error", "lr features -1: lr must be > 0", ok=False, source="ui"),
        LogEntry(6, 1200, 48.0, "command", "pause → paused at step 1200", source="ui"),
    )
    return Snapshot(
        seq=100,
        status=status,
        groups=groups,
        modules=_vgg_modules(),
        structure_version=1,
        loss_recent=Series(steps, recent),
        loss_history=Series(hsteps, history),
        loss_min=min(recent),
        loss_last=recent[-1],
        evals=(EvalPoint(500, 1.204, 0.551), EvalPoint(1000, 0.6123, 0.812)),
        log=log,
        run_dir="runs/vgg-20250101-000000",
        optimizer="SGD",
    )


class FakeSession:
    """Returns a fixed snapshot; records submitted commands and answers them ok."""

    def __init__(self, snap: Snapshot | None = None) -> None:
        self.snap = snap or frozen_snapshot()
        self.submitted: list[tuple[str, str]] = []
        self.closed = False

    def snapshot(self) -> Snapshot:
        return self.snap

    def submit(self, command, source: str = "ui") -> Future[CommandResult]:
        text = command if isinstance(command, str) else command.text
        self.submitted.append((text, source))
        future: Future[CommandResult] = Future()
        try:
            cmd = parse(text)
        except CommandError as exc:
            future.set_result(CommandResult(False, str(exc), text))
            return future
        future.set_result(CommandResult(True, f"ok: {cmd.text}", cmd.text))
        return future

    def close(self) -> None:
        self.closed = True

    def wait(self, timeout: float | None = None) -> bool:
        return self.snap.status.state.is_terminal

    def set_state(self, state: RunState) -> None:
        self.snap = replace(
            self.snap, seq=self.snap.seq + 1, status=replace(self.snap.status, state=state)
        )
