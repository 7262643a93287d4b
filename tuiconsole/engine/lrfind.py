"""The lr range test: ``lrfind [TARGET] [from=V] [to=V] [steps=N]`` and ``lrfind cancel``.

With the run paused, the lr of TARGET's groups (a group, a module's groups, or all)
is swept exponentially, ``from * (to/from) ** (i / (steps-1))``, one real training
step per lr (engine/step.py's :func:`take_step`, so amp, clipping, accumulation and
compile apply as in the run), and the loss of each step is kept. Groups outside
TARGET keep their lr (and train at it). The sweep stops early once the smoothed loss
passes 4x its lowest, or a loss is not finite (the classic rule). Then the run is put
back exactly as it was, in place (the same tensor objects, their values copied back):

- the model's parameters and buffers (non-persistent ones too), their gradients, and
  each module's train/eval mode;
- the optimizer: every group's hyper-parameters, every state tensor (state the sweep
  created is dropped), the scheduler (never stepped by the sweep; its state is
  loaded back anyway);
- the step's own state (engine/step.py): the GradScaler, the last grad norm, the
  clipped/skipped counts;
- every RNG (torch, CUDA, Python, numpy, the loader's generators: data.rng_state);
- the data position: the sweep takes its batches from a pass of its own over
  train_loader (a fresh ``iter()``, a new one when it runs out), so the run's
  iterator is never touched and the run goes on with the very batch it would have
  taken next;
- the step counters, the losses, telemetry and the lr history are never touched (the
  sweep's steps are not the run's); the sweep's losses are only in the result.

The copies are kept on the CPU (no extra accelerator memory). The sweep runs in the
loop's thread, a slice of about CHUNK_S seconds per turn of the loop, so commands keep
being served: ``lrfind cancel`` (or ``stop``) puts the run back at once, ``pause`` is
fine, every other command is refused until it ends (they would change or read a model
that is about to be put back). Between slices the groups show their real lrs.

Refused (with the reason), because the run could not be put back exactly:

- a loop of its own (library ``steer()``, Lightning, HF): the user's code takes the
  steps; tuiconsole cannot take sweep steps there;
- torchrun: every rank would have to sweep and put back together;
- a train_loader that is an iterator (a generator): a second pass would take the run's
  own batches; a DataLoader over an IterableDataset (a second pass may read the same
  stream as the run's; tuiconsole cannot tell); a DataLoader with persistent workers
  (its worker pool serves the run's iterator, which a second ``iter()`` resets);
- a run that is not paused (``pause first``) or has ended. A NaN-paused run is
  allowed: its weights are as they were before the bad step (CPU), and a sweep is the
  way to pick the lower lr to resume with (if they are not finite, the sweep says so).

Not covered: state a forward keeps outside parameters and buffers (a Python attribute
a module changes), step hooks of the user's own on the optimizer (they run for sweep
steps), and a loader whose own code keeps a position across passes.

The result (every lr/loss point, the suggestion and its rule) goes into the journal as
an ``lrfind`` record (not a change: replay skips it, and the ``lrfind`` command is a
control command, never replayed) and into the snapshot (:class:`LrFindView`).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from tuiconsole.engine import commands as C
from tuiconsole.engine import groups as G
from tuiconsole.engine import journal as J
from tuiconsole.engine import optclass
from tuiconsole.engine.data import EpochData, rng_state, set_rng_state
from tuiconsole.engine.record import RunRecord
from tuiconsole.engine.snapshot import LrFindView, RunState
from tuiconsole.engine.step import Stepping, take_step
from tuiconsole.errors import CommandError
from tuiconsole.script import TrainingSpec

if TYPE_CHECKING:
    from tuiconsole.engine.trainer import Trainer

COMMANDS = (C.LrFind,)  # the commands handled here (Trainer._dispatch)
CHUNK_S = 0.1  # sweep steps per turn of the loop: about this long, then commands
VIEW_POINTS = 500  # points in the snapshot's LrFindView at most (the journal has all)
DIVERGE = 4.0  # stop once the smoothed loss passes this many times its lowest
_CPU = torch.device("cpu")
_PAUSED = (RunState.PAUSED, RunState.NAN_PAUSED)


# --------------------------------------------------------------------------- put back


class _Values:
    """Tensors to put back in place: each object kept, with a CPU copy of its value."""

    def __init__(self) -> None:
        self._kept: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def keep(self, t: torch.Tensor) -> torch.Tensor:
        if id(t) not in self._kept:
            self._kept[id(t)] = (t, t.detach().to(_CPU, copy=True))
        return t

    def value(self, v: Any) -> Any:
        """A value to put back: a tensor itself (its value kept), anything else a copy."""
        return self.keep(v) if isinstance(v, torch.Tensor) else copy.deepcopy(v)

    def put_back(self) -> None:
        with torch.no_grad():
            for t, saved in self._kept.values():
                t.copy_(saved)


class _Model:
    """Parameters and buffers (the objects, in their modules), gradients, train modes."""

    def __init__(self, model: nn.Module, values: _Values) -> None:
        self.slots: list[tuple[dict[str, Any], str, Any]] = []
        self.modes = [(m, m.training) for m in model.modules()]
        for m, _ in self.modes:
            for slots in (m._parameters, m._buffers):
                for name, t in slots.items():
                    self.slots.append((slots, name, t))
                    if t is not None:
                        values.keep(t)
        self.grads = [(p, p.grad) for p in model.parameters()]
        for _, g in self.grads:
            if g is not None:
                values.keep(g)

    def put_back(self) -> None:
        for slots, name, t in self.slots:  # a buffer the forward replaced: the original
            slots[name] = t
        for m, training in self.modes:
            m.training = training
        for p, g in self.grads:
            p.grad = g


class _Groups:
    """Every param group's hyper-parameters (cheap: put back after each slice too)."""

    def __init__(self, optimizer: torch.optim.Optimizer, values: _Values) -> None:
        self.optimizer = optimizer
        self.groups = list(optimizer.param_groups)
        self.saved = [
            {k: v if k == "params" else values.value(v) for k, v in g.items()} for g in self.groups
        ]

    def put_back(self) -> None:
        self.optimizer.param_groups[:] = self.groups
        for group, saved in zip(self.groups, self.saved, strict=True):
            group.clear()
            group.update(
                {
                    k: v if k == "params" or isinstance(v, torch.Tensor) else copy.deepcopy(v)
                    for k, v in saved.items()
                }
            )


class _OptimizerState:
    """The optimizer's per-parameter state: the dicts and tensors in place; state the
    sweep created (a first step) is dropped."""

    def __init__(self, optimizer: torch.optim.Optimizer, values: _Values) -> None:
        self.state = optimizer.state
        self.saved = {
            p: (s, {k: values.value(v) for k, v in s.items()}) for p, s in self.state.items()
        }

    def put_back(self) -> None:
        for p in [p for p in self.state if p not in self.saved]:
            del self.state[p]
        for p, (s, saved) in self.saved.items():
            self.state[p] = s
            s.clear()
            s.update(saved)


class _Attrs:
    """Some attributes of an object (tensors in place), or all of them."""

    def __init__(self, obj: object, names: Sequence[str] | None, values: _Values) -> None:
        self.obj = obj
        attrs = vars(obj)
        keys = list(attrs) if names is None else [n for n in names if n in attrs]
        self.saved = {k: values.value(attrs[k]) for k in keys}
        self.all = names is None

    def put_back(self) -> None:
        attrs = vars(self.obj)
        if self.all:
            attrs.clear()
        attrs.update(self.saved)


class Saved:
    """Everything a sweep changes, as it was before it (see the module docstring)."""

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: Any,
        stepping: Stepping,
        generators: Sequence[torch.Generator],
    ) -> None:
        values = _Values()
        self._values = values
        self._model = _Model(model, values)
        self._state = _OptimizerState(optimizer, values)
        # its plain attributes (a scheduler's `_opt_called`, a custom class's counters)
        plain = [k for k, v in vars(optimizer).items() if isinstance(v, bool | int | float | str)]
        self._optimizer = _Attrs(optimizer, plain, values)
        self._scheduler = scheduler
        self._schedule = copy.deepcopy(scheduler.state_dict()) if scheduler is not None else None
        scaler = stepping.scaler
        self._scaler = _Attrs(scaler, None, values) if scaler is not None else None
        # What the snapshot shows between slices, put back after each (cheap): the
        # groups' hyper-parameters, the step's last norm and counts (engine/step.py).
        shown = _Values()
        self._shown = shown
        self._groups = _Groups(optimizer, shown)
        self._stepping = _Attrs(stepping, ("_norm", "_clipped", "_skipped", "clip_steps"), shown)
        self._generators = list(generators)
        self._rng = rng_state(self._generators)

    def show(self) -> None:
        """Between slices: the groups' own lrs and the step's counts, for the snapshot."""
        self._groups.put_back()
        self._stepping.put_back()
        self._shown.put_back()

    def put_back(self) -> None:
        """The run exactly as it was."""
        self._model.put_back()
        self._state.put_back()
        self._optimizer.put_back()
        if self._scaler is not None:
            self._scaler.put_back()
        self._values.put_back()
        self.show()
        if self._scheduler is not None:
            self._scheduler.load_state_dict(copy.deepcopy(self._schedule))
        set_rng_state(self._rng, self._generators)


# --------------------------------------------------------------------------- the steps


class _Host:
    """What take_step is given for a sweep step: the trainer's model, optimizer and step
    settings, and the sweep's own data; no scheduler step, no NaN pause (a non-finite
    loss skips the update and ends the sweep), no telemetry, no signals (the run's are not fed: its record is not the run's), no undo."""

    def __init__(self, t: Trainer, data: EpochData) -> None:
        self._t = t
        self.epoch = t.epoch
        self.step = t.step
        self.model: nn.Module = t.model
        self.criterion: Any = t.criterion
        self.device: torch.device = t.device
        self.spec: TrainingSpec = t.spec
        self._data = data
        self._ddp: nn.Module | None = None
        self._on_cpu: bool = t._on_cpu
        self._nan_each_step = True  # read every loss: the sweep needs each one
        self._undo: Any = None
        self._stepping: Stepping = t._stepping
        shape = dataclasses.replace(t._record.shape, telemetry=False, run_dir=None, signal_every=0)
        self._record = RunRecord(shape)  # its meter times nothing
        self.nonfinite = False

    @property
    def state(self) -> RunState:
        return RunState.PAUSED

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        return self._t.optimizer

    @property
    def scheduler(self) -> Any:
        return None  # the sweep sets each lr itself

    def _end_epoch(self) -> None:
        """The sweep's pass ran out: the next take starts another (the run's epoch is
        not the sweep's)."""

    def _scheduler_step(self) -> None:  # pragma: no cover - scheduler is None
        pass

    def _skip_nonfinite(self, finite: bool, loss: torch.Tensor) -> bool:
        self.nonfinite = not finite
        return not finite

    def _guarded_step(
        self, undo: Any, take: Callable[[torch.optim.Optimizer], object] | None = None
    ) -> None:  # pragma: no cover - _undo is None
        raise AssertionError("a sweep step is never guarded")

    def _append_log(self, kind: str, text: str, ok: bool = True, source: str = "") -> None:
        self._t._append_log(kind, text, ok, source)

    def _publish(self) -> None:
        """A compile note mid-slice: shown with the next snapshot."""


def planned_lrs(lr_from: float, lr_to: float, steps: int) -> list[float]:
    """``from * (to/from) ** (i / (steps-1))``: exponential, ``from`` first, ``to`` last."""
    ratio = lr_to / lr_from
    return [lr_from * ratio ** (i / (steps - 1)) for i in range(steps - 1)] + [lr_to]


def smoothing(steps: int) -> float:
    """The EMA's beta: about steps/10 points averaged (at least 2)."""
    return 1.0 - 1.0 / max(2, steps // 10)


def smoothed(losses: Sequence[float], beta: float) -> list[float]:
    """The bias-corrected EMA of ``losses`` (fastai's)."""
    out, avg = [], 0.0
    for i, loss in enumerate(losses, 1):
        avg = beta * avg + (1 - beta) * loss
        out.append(avg / (1 - beta**i))
    return out


def suggest(lrs: Sequence[float], losses: Sequence[float], beta: float) -> tuple[float | None, str]:
    """The suggested lr and the rule, in words: where the smoothed loss falls fastest
    against log(lr), before its lowest point; else a tenth of the lr at the lowest."""
    if len(losses) < 3:
        return None, "no suggestion: fewer than 3 points"
    s = smoothed(losses, beta)
    lowest = min(range(len(s)), key=s.__getitem__)
    logs = [math.log(lr) for lr in lrs]
    slopes = [
        ((s[i + 1] - s[i - 1]) / (logs[i + 1] - logs[i - 1]), i)
        for i in range(1, min(lowest, len(s) - 2) + 1)
    ]
    if slopes:
        slope, i = min(slopes)
        if slope < 0:
            return lrs[i], (
                f"steepest descent of the smoothed loss (EMA beta {beta:g}) against log lr, "
                "before its lowest point"
            )
    return lrs[lowest] / 10, f"a tenth of the lr of the lowest smoothed loss (EMA beta {beta:g})"


@dataclasses.dataclass
class _Sweep:
    cmd: C.LrFind
    indices: list[int]
    lrs: list[float]  # planned
    at_step: int
    saved: Saved
    host: _Host
    beta: float
    points: list[tuple[float, float]] = dataclasses.field(default_factory=list)
    taken: int = 0
    smooth: float = 0.0
    best: float = math.inf


def _set_lr(group: dict[str, Any], lr: float) -> None:
    if isinstance(group["lr"], torch.Tensor):
        group["lr"].fill_(lr)
    else:
        group["lr"] = lr


def _loader_refusal(loader: object) -> str | None:
    """Why a second pass over train_loader would disturb the run's, or None."""
    if isinstance(loader, Iterator):
        return (
            "train_loader is an iterator (a generator?): a second pass would take the "
            "run's own batches; use a list or a DataLoader"
        )
    from torch.utils.data import DataLoader, IterableDataset

    if isinstance(loader, DataLoader):
        if isinstance(loader.dataset, IterableDataset):
            return (
                "train_loader reads an IterableDataset: a second pass may read the run's "
                "own stream (tuiconsole cannot tell), so the run could not be put back"
            )
        if loader.persistent_workers and loader.num_workers > 0:
            return (
                "train_loader has persistent workers: a second iter() resets the run's "
                "own iterator; use persistent_workers=False for an lr range test"
            )
    return None


class LrFinder:
    """The trainer's lr range tests: the one running (a slice per turn of the loop)
    and the result of the last, shown in the snapshot."""

    def __init__(self, trainer: Trainer) -> None:
        self._t = trainer
        self._sweep: _Sweep | None = None

    @property
    def running(self) -> bool:
        return self._sweep is not None

    # ------------------------------------------------------------------ commands

    def apply(self, cmd: C.LrFind) -> str:
        """Start a sweep (or cancel the running one); its result line, or a
        CommandError having changed nothing. A trainer driven synchronously
        (prepare/apply_now) sweeps to the end here."""
        if cmd.cancel:
            if self._sweep is None:
                raise CommandError("no lr range test is running")
            return self._end("cancelled", self._cancelled("by `lrfind cancel`"))
        if self._sweep is not None:
            raise CommandError(self._busy())
        self._sweep = self._plan(cmd)
        self._show()
        t = self._t
        if not t._launched:
            while self.running:
                self.slice()
            view = t._record.lrfind
            assert view is not None
            return result_text(view)
        return (
            f"lr range test of {cmd.target}: {cmd.steps} steps, lr {cmd.lr_from:g} to "
            f"{cmd.lr_to:g}; the run is put back at step {t.step} after it"
        )

    def before(self, cmd: C.Command) -> None:
        """Another command while a sweep runs: ``stop`` puts the run back first, ``pause``
        passes, the rest are refused (CommandError)."""
        if self._sweep is None or isinstance(cmd, C.Pause):
            return
        if isinstance(cmd, C.Stop):
            self._end("cancelled", self._cancelled("by `stop`"))
            return
        raise CommandError(self._busy())

    def _busy(self) -> str:
        s = self._sweep
        assert s is not None
        return (
            f"an lr range test is running ({s.taken}/{len(s.lrs)} steps): wait for it, "
            "or `lrfind cancel`"
        )

    def _cancelled(self, how: str) -> str:
        s = self._sweep
        assert s is not None
        return f"cancelled {how} after {s.taken} of {len(s.lrs)} steps"

    def _plan(self, cmd: C.LrFind) -> _Sweep:
        """Check everything, then keep the run as it is now (nothing is changed yet)."""
        t = self._t
        if t.OWN_LOOP:
            raise CommandError(
                "lrfind: this loop is the script's own (library, Lightning, HF): its code "
                "takes the steps, so tuiconsole cannot take the sweep's and put them back"
            )
        if t._dist is not None:
            raise CommandError(
                "lrfind: not under torchrun: every rank would have to sweep and be put "
                "back together"
            )
        if t.state in (RunState.RUNNING, RunState.STEPPING):
            raise CommandError("lrfind: pause first (the sweep runs on a paused run)")
        if t.state not in _PAUSED:
            raise CommandError(f"lrfind: the run is {t.state.value}; lrfind needs a paused run")
        why = _loader_refusal(t._data.loader)
        if why is not None:
            raise CommandError(f"lrfind: {why}")
        opt = t.optimizer
        indices = G.resolve_target(cmd.target, t.model, opt)
        names = G.group_names(opt)
        for i in indices:
            for lr in (cmd.lr_from, cmd.lr_to):
                optclass.check_lr_range(lr, opt.param_groups[i]["params"], names[i])
        saved = Saved(t.model, opt, t.scheduler, t._stepping, t._data.generators)
        return _Sweep(
            cmd=cmd,
            indices=indices,
            lrs=planned_lrs(cmd.lr_from, cmd.lr_to, cmd.steps),
            at_step=t.step,
            saved=saved,
            host=_Host(t, EpochData(t._data.loader)),
            beta=smoothing(cmd.steps),
        )

    # ------------------------------------------------------------------ the sweep

    def slice(self) -> None:
        """Sweep steps for about CHUNK_S seconds (the loop's thread), then show the
        progress; the end puts the run back. A step that raises ends the sweep
        (failed), the run put back; an interrupt is raised again after that."""
        s = self._sweep
        assert s is not None
        started = time.monotonic()
        end: tuple[str, str] | None = None
        try:
            while end is None and s.taken < len(s.lrs):
                end = self._one(s)
                if time.monotonic() - started > CHUNK_S:
                    break
        except BaseException as exc:
            exc.__traceback__ = None  # the frames hold the step's activations
            self._end("failed", f"step {s.taken + 1} raised {type(exc).__name__}: {exc}")
            if not isinstance(exc, Exception):
                raise
            return
        if end is None and s.taken == len(s.lrs):
            end = ("done", f"all {len(s.lrs)} steps taken")
        if end is not None:
            self._end(*end)
            return
        s.saved.show()
        self._show()
        t = self._t
        if t._record.due(t.config.snapshot_interval):
            t._publish()

    def _one(self, s: _Sweep) -> tuple[str, str] | None:
        """One sweep step at the next lr; why the sweep ends after it, or None."""
        lr = s.lrs[s.taken]
        groups = s.host.optimizer.param_groups
        for i in s.indices:
            _set_lr(groups[i], lr)
        loss = take_step(s.host, self._t._where)  # where a stuck step is, for a stop
        s.taken += 1
        if loss is None or s.host.nonfinite:
            return "done", f"stopped at lr {lr:.3g}: the loss is not finite"
        value = float(loss)
        s.points.append((lr, value))
        n = len(s.points)
        s.smooth = s.beta * s.smooth + (1 - s.beta) * value
        smooth = s.smooth / (1 - s.beta**n)
        s.best = min(s.best, smooth)
        if n > 1 and smooth > DIVERGE * s.best:
            return (
                "done",
                f"stopped at lr {lr:.3g}: the smoothed loss passed {DIVERGE:g}x its lowest",
            )
        return None

    def _show(self, state: str = "running", message: str = "") -> LrFindView:
        s = self._sweep
        assert s is not None
        points = _downsampled(s.points, VIEW_POINTS)
        suggestion, rule = (None, "")
        if state != "running":
            suggestion, rule = suggest([p[0] for p in s.points], [p[1] for p in s.points], s.beta)
        view = LrFindView(
            state=state,
            target=s.cmd.target,
            lr_from=s.cmd.lr_from,
            lr_to=s.cmd.lr_to,
            steps=len(s.lrs),
            taken=s.taken,
            lrs=tuple(p[0] for p in points),
            losses=tuple(p[1] for p in points),
            suggestion=suggestion,
            rule=rule,
            at_step=s.at_step,
            message=message,
        )
        self._t._record.lrfind = view
        return view

    def _end(self, state: str, message: str) -> str:
        """Put the run back, keep the result (snapshot, journal, log); its line."""
        s = self._sweep
        assert s is not None
        t = self._t
        try:
            s.saved.put_back()
        finally:
            t._record.views.state_version += 1  # the state the sweep made is gone again
            view = self._show(state, message)
            self._sweep = None
        text = result_text(view)
        t._append_log("info", text, ok=state == "done")
        t._record.write(
            J.lrfind_record(
                step=s.at_step,
                state=state,
                target=view.target,
                lr_from=view.lr_from,
                lr_to=view.lr_to,
                steps=view.steps,
                points=s.points,
                suggestion=view.suggestion,
                rule=view.rule,
                message=message,
            )
        )
        t._publish()
        return text


def _downsampled(points: list[tuple[float, float]], most: int) -> list[tuple[float, float]]:
    """At most ``most`` points, evenly spread, the first and last kept."""
    n = len(points)
    if n <= most:
        return list(points)
    return [points[round(i * (n - 1) / (most - 1))] for i in range(most)]


def result_text(view: LrFindView) -> str:
    """The log line (and a synchronous command's result) of a sweep that ended."""
    head = f"lrfind {view.target}: {view.state}, {view.taken}/{view.steps} steps"
    if view.message:
        head += f" ({view.message})"
    if view.suggestion is not None:
        head += f"; suggested lr {view.suggestion:.3g}: {view.rule}"
    elif view.rule:
        head += f"; {view.rule}"
    return f"{head}; the run is back at step {view.at_step} as it was"
