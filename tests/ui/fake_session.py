"""A frozen session for pinned screenshot tests only.

Behaviour tests use the real engine; this exists so the SVG snapshots are
byte-stable (no elapsed time, no steps/s jitter) and fast. The model tree, the
charts and the status numbers are made up, but what the run says is not: the
log, the evals, the groups' lrs and the error come from a real small Trainer
driven synchronously through the same steering as the pictures show (see
``engine_run``), so a change to the engine's log kinds or texts shows up here.
"""

from __future__ import annotations

import functools
import math
import tempfile
from concurrent.futures import Future
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn

from tests.ui.real_run import make_data, make_model
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
from tuiconsole.engine.trainer import RunConfig, Trainer
from tuiconsole.errors import CommandError
from tuiconsole.script import TrainingSpec, seed_everything

RUN_DIR = "runs/vgg-20250101-000000"
T0 = 1_735_689_600.0  # 2025-01-01 00:00 UTC


class _RunsOutOfMemory(nn.Module):
    """The real tiny net, whose forward raises a real ``torch.OutOfMemoryError`` once
    ``oom`` is set: the errored picture's error is the engine's own handling of one."""

    def __init__(self) -> None:
        super().__init__()
        net = make_model()
        self.features, self.classifier = net.features, net.classifier
        self.oom = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.oom:
            raise torch.OutOfMemoryError(
                "CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity "
                "of 7.79 GiB of which 1.25 GiB is free."
            )
        return self.classifier(self.features(x))


@dataclass(frozen=True)
class EngineRun:
    """What a real trainer said, normalised: a paused view and, one step on, an errored one."""

    paused_log: tuple[LogEntry, ...]
    error_log: tuple[LogEntry, ...]
    evals: tuple[EvalPoint, ...]
    lrs: dict[str, float]
    error: RunError


def _normalised(log: tuple[LogEntry, ...], run_dir: Path) -> tuple[LogEntry, ...]:
    """Only what differs between two runs is replaced: the wall-clock time of each entry
    (made one every 0.04 s of steps) and the temporary run dir in paths (RUN_DIR)."""
    return tuple(
        replace(e, time=T0 + e.step * 0.04, text=e.text.replace(str(run_dir), RUN_DIR)) for e in log
    )


@functools.cache
def engine_run() -> EngineRun:
    """Steer a real tiny features/classifier run the way the pictures' story goes: eval at
    500, decay the classifier at 800, eval at 1000, checkpoint at 1050, a refused command at
    1100, pause at 1200; then one more step runs out of memory. Deterministic (seeded, CPU,
    one thread); about a second, once per process."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    seed_everything(0)
    model = _RunsOutOfMemory()
    optimizer = torch.optim.SGD(
        [
            {"params": model.features.parameters(), "lr": 0.001},
            {"params": model.classifier.parameters()},
        ],
        lr=0.01,
        momentum=0.9,
        weight_decay=0.0005,
    )
    data = make_data()
    spec = TrainingSpec(
        model=model,
        optimizer=optimizer,
        criterion=nn.CrossEntropyLoss(),
        train_loader=data,
        eval_loader=data[:4],
        epochs=1000,
        path=Path("vgg.py"),
    )
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        trainer = Trainer(spec, RunConfig(run_dir=run_dir, log_every=0)).prepare()
        try:
            for step, command in [
                (500, "eval"),
                (800, "decay 0.1 classifier"),
                (1000, "eval"),
                (1050, "checkpoint"),
                (1100, "lr nosuch 1e-3"),
                (1200, "pause"),
            ]:
                assert trainer.step_now(step - trainer.step) == step
                trainer.apply_now(command, source="ui")
            paused = trainer.latest_snapshot()
            model.oom = True
            trainer.step_now(1)
            errored = trainer.latest_snapshot()
        finally:
            trainer.close()
            torch.set_num_threads(threads)
    assert paused.status.state == RunState.PAUSED and errored.status.error is not None
    return EngineRun(
        paused_log=_normalised(paused.log, run_dir),
        error_log=_normalised(errored.log, run_dir),
        evals=paused.evals,
        lrs={g.name: g.lr for g in paused.groups},
        error=errored.status.error,
    )


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


def frozen_snapshot(state: RunState = RunState.PAUSED) -> Snapshot:
    """A VGG run at step 1200 with fixed numbers everywhere (paused unless ``state`` says
    otherwise); ERROR is the same run one step on, with the engine's own error and log."""
    run = engine_run()
    error = run.error if state == RunState.ERROR else None
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
        last_eval=run.evals[-1],
        error=error,
        epochs=20,
    )
    groups = (
        GroupView(
            0,
            "features",
            run.lrs["features"],
            (("momentum", 0.9), ("dampening", 0.0), ("weight_decay", 0.0005), ("nesterov", False)),
            12,
            23808,
            tuple([0.001] * 30),
        ),
        GroupView(
            1,
            "classifier",
            run.lrs["classifier"],
            (("momentum", 0.9), ("dampening", 0.0), ("weight_decay", 0.0005), ("nesterov", False)),
            4,
            132490,
            tuple([0.01] * 20 + [0.001] * 10),
        ),
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
        evals=run.evals,
        log=run.error_log if state == RunState.ERROR else run.paused_log,
        run_dir=RUN_DIR,
        optimizer="SGD",
    )


class FakeSession:
    """Returns a fixed snapshot; records submitted commands and answers them ok."""

    owns_run = True  # as the console of `tuiconsole run` (LaunchSession)
    can_detach = False
    disconnected = False
    disconnect_reason: str | None = None

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

    def detach(self) -> None:
        raise AssertionError("a console with can_detach=False must not detach")

    def wait(self, timeout: float | None = None) -> bool:
        return self.snap.status.state.is_terminal

    def set_state(self, state: RunState) -> None:
        self.snap = replace(
            self.snap, seq=self.snap.seq + 1, status=replace(self.snap.status, state=state)
        )


# -- a long-named, many-group run (issue 17: "never cut a number") ---------------------------

LONG_GROUPS = (
    ("features", 0.001),
    ("classifier", 0.01),
    ("features.block0_convolution_with_a_long_name", 9.63e-4),
    ("features.block1_batchnorm_statistics", 3.162e-4),
    ("features.block2_convolution_second_stage", 1.25e-5),
    ("features.block3_batchnorm_second_stage", 0.1),
    ("features.block4_convolution_third_stage", 2e-3),
    ("features.block5_batchnorm_third_stage", 0.05),
    ("classifier.hidden_projection_layer", 9.92e-5),
    ("classifier.output_head_with_a_very_long_name_indeed", 1e-6),
    ("classifier.bias_terms_without_weight_decay", 0.0316),
    ("embedding_table_for_auxiliary_tokens", 7.5e-7),
)
# features.0/1/4/5/8/9 and classifier.0/3 each hold one split group; the rest stay put.
_OWNER = {
    "features.0": 2,
    "features.1": 3,
    "features.4": 4,
    "features.5": 5,
    "features.8": 6,
    "features.9": 7,
    "classifier.0": 8,
    "classifier.3": 9,
}


def long_names_snapshot(state: RunState = RunState.RUNNING) -> Snapshot:
    """The frozen VGG run after many splits into long-named groups, training on two CUDA
    ranks under a scheduler with amp, clipping, accumulation and compile: every header
    field and a crowded group table, at fixed numbers."""
    from tuiconsole.engine.snapshot import (
        Change,
        GroupSignals,
        SchedulerView,
        StepView,
        Telemetry,
    )

    base = frozen_snapshot(state)
    hp = (("momentum", 0.9), ("dampening", 0.0), ("weight_decay", 0.0005), ("nesterov", False))
    groups = tuple(
        GroupView(
            i,
            name,
            lr,
            hp if i != 10 else (*hp[:2], ("weight_decay", 0.0), hp[3]),
            2 if i >= 2 else 4,
            [23808, 132490, 448, 32, 4640, 64, 18496, 128, 131200, 1290, 1290, 64000][i],
            tuple([lr] * 30),
            state_reset_step=None if i < 2 else 800 + 10 * i,
            state_tensors=2 if i >= 2 else 4,
            state_bytes=[23808, 132490, 448, 32, 4640, 64, 18496, 128, 131200, 1290, 1290, 64][i]
            * 4,
        )
        for i, (name, lr) in enumerate(LONG_GROUPS)
    )
    names = [g.name for g in groups]
    modules = []
    for m in base.modules:
        own = (names[_OWNER[m.path]],) if m.path in _OWNER else m.groups
        modules.append(replace(m, groups=own if m.n_params else ()))
    by_path = {m.path: m for m in modules}

    def subtree(path: str) -> tuple[str, ...]:
        node = by_path[path]
        found = list(node.groups)
        for child in node.children:
            found += [g for g in subtree(child) if g not in found]
        return tuple(found)

    modules = [replace(m, subtree_groups=subtree(m.path)) for m in modules]
    status = replace(
        base.status,
        script="vgg_with_a_long_script_name.py",
        device="cuda:0",
        world_size=2,
        steps_per_sec=41.5 if state == RunState.RUNNING else 0.0,
        max_steps=2000,
    )
    changes = tuple(
        [
            Change(500, "lr features 0.001", "ui", ("features",), "lr"),
            Change(800, "decay 0.1 classifier", "ui", ("classifier",), "decay"),
        ]
        + [
            Change(800 + 10 * i, f"split {n} m{i}", "remote:4242", (n, "features"), "split")
            for i, n in enumerate(names)
            if i >= 2
        ]
        + [
            Change(
                1100,
                "set features.block3_batchnorm_second_stage momentum=0.9",
                "stdin",
                ("features.block3_batchnorm_second_stage",),
                "set",
            ),
            Change(1150, "clip 1", "ui", (), "clip"),
        ]
    )
    signals = tuple(
        GroupSignals(g.name, 1190, 0.125 * (i + 1), 3.5 + i, 1.5e-3 / (i + 1), None)
        for i, g in enumerate(groups)
    )
    return replace(
        base,
        status=status,
        groups=groups,
        modules=tuple(modules),
        structure_version=2,
        scheduler=SchedulerView(
            "CosineAnnealingLR", 19, tuple(g.lr * 0.9 for g in groups), "epoch"
        ),
        telemetry=Telemetry(
            samples_per_sec=1328.0,
            batch_size=32.0,
            eta=754.0,
            sample_every=10,
            memory_allocated=1_288_490_189,
            memory_peak=2_147_483_648,
            gpu_utilization=87.0,
            gpu_memory_used=3_328_599_654,
            gpu_memory_total=85_899_345_920,
            gpu_power=312.0,
            gpu_temperature=64.0,
        ),
        step_view=StepView(
            amp="bf16",
            grad_clip=1.0,
            grad_norm=0.8312,
            clipped=37,
            clip_steps=1200,
            accumulate=4,
            compile="compiled",
        ),
        changes=changes,
        signals=signals,
        signal_every=10,
    )
