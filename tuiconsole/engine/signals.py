"""Per-group signals: which group's lr to change, measured on the device every K steps.

For each param group, at one optimizer step in K (:class:`Signals`):

- ``grad_norm``: the L2 norm of the group's gradients as ``optimizer.step()`` used
  them (read after the step, which torch's optimizers leave untouched: unscaled by the
  GradScaler, clipped where clipping is on);
- ``param_norm``: the L2 norm of the group's weights after the step;
- ``update_ratio``: ||w_after - w_before|| / ||w_after||, the classic per-layer lr
  health signal (about 1e-3 is the folk rule);
- ``adam_step`` (optimizers with ``exp_avg`` and ``exp_avg_sq`` state: Adam, AdamW,
  NAdam, RAdam; Adamax's ``exp_inf``; AMSGrad's ``max_exp_avg_sq``): the norm of
  ``lr * m_hat / (sqrt(v_hat) + eps)`` from the state the step left (for NAdam and
  RAdam, whose own steps differ, the Adam step of their moments).

Each is over the group's parameters that have a dense gradient at that step (those the
step updates): frozen parameters, parameters without a gradient and sparse gradients
are left out; a group with none of them has no signals (None). Everything is torch ops
on the device (``torch._foreach_norm``; a copy of the weights is kept only during a
measured step's ``optimizer.step()``, and turned into the update in place), kept as
0-dim tensors, and read with one transfer when a snapshot or a metrics line is built
(as the losses are, engine/metrics.py): no host sync per step.

K comes from a time budget, as telemetry's: a measurement is timed (host clock; on
CUDA, events read once they completed) and K is the smallest count that keeps its cost
under :data:`BUDGET` of the step time measured between measurements, within
[1, :data:`MAX_EVERY`], at most doubling from one measurement to the next (a slow first
one does not put the next off for long). ``RunConfig.signal_every`` fixes K (0: off).

The engine's steps call :meth:`Signals.before` and :meth:`Signals.after` around
``optimizer.step()`` (Trainer._one_step, engine/step.py's take_step); a loop of its own
(library, Lightning, HF) calls them from its optimizer's step hooks (engine/ownloop.py),
so they count optimizer steps (with accumulation, one per N micro-batches). Under
torchrun only rank 0 measures (its gradients are the all-reduced ones).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from tuiconsole.engine.metrics import DownsampledSeries
from tuiconsole.engine.snapshot import GroupSignals, Series

BUDGET = 0.005  # a measurement costs at most this share of the steps (half of the 1% allowed)
MAX_EVERY = 1000
HISTORY = 64  # buckets of each group's history (DownsampledSeries): every snapshot has them
# ...but a snapshot carries at most this many points of each kind over all groups (a
# 500-group optimizer: 8 a group), so its frames stay small 10 times a second
SHOWN_POINTS = 4096
MAX_PENDING = 256  # measurements kept unread on the device; then read at once
MAX_TIMING = 16  # CUDA: measurements whose events are not read yet, at most


@dataclass
class _Group:
    name: str
    params: list[torch.Tensor]
    copies: list[torch.Tensor] | None  # the weights before the step (None: not kept)


@dataclass
class _Measuring:
    """A measured step in flight: between before() and after()."""

    optimizer: torch.optim.Optimizer
    layout: list[int]  # tensors per group
    groups: list[_Group]
    host: float  # host seconds spent in before()
    events: tuple[Any, Any] | None  # CUDA events around before()'s work


@dataclass
class _Pending:
    """One measurement, unread: ``values`` (on the device) holds the present fields."""

    step: int
    names: list[str]
    present: list[tuple[bool, bool, bool, bool]]
    values: torch.Tensor | None


class Signals:
    """Measures every K optimizer steps; the snapshot's :class:`GroupSignals`."""

    def __init__(self, every: int | None = None, *, enabled: bool = True) -> None:
        self.fixed = every  # None: K from the budget; 0: off
        self.enabled = enabled and every != 0
        self.every = every or 1  # K
        self._countdown = 1  # the first optimizer step is measured
        self._measuring: _Measuring | None = None
        self._last_at: float | None = None  # when the last measurement began
        self._since = 0  # optimizer steps since then
        self._cost: float | None = None  # seconds one measurement takes
        self._timing: list[tuple[float, list[tuple[Any, Any]]]] = []  # CUDA: unread events
        self._pending: list[_Pending] = []
        self._latest: dict[str, GroupSignals] = {}
        self._grad_history: dict[str, DownsampledSeries] = {}
        self._ratio_history: dict[str, DownsampledSeries] = {}
        self.measured = 0  # measurements taken
        self._copy_failed = False  # out of memory for the copy once: no update ratio since
        self._shown: tuple[tuple[str, ...], int, tuple[GroupSignals, ...]] | None = None

    # ------------------------------------------------------------------ the step

    def before(self, optimizer: torch.optim.Optimizer) -> bool:
        """Called before each optimizer step: True if this one is measured (then
        :meth:`after` is due after it). The weights that may change are copied."""
        self._measuring = None
        if not self.enabled:
            return False
        self._since += 1
        self._countdown -= 1
        if self._countdown > 0:
            return False
        started = time.perf_counter()
        self._reschedule(started)
        events = _events_start(optimizer)
        groups = []
        with torch.no_grad():
            for i, g in enumerate(optimizer.param_groups):
                params = [p for p in g["params"] if p.requires_grad]
                groups.append(_Group(str(g.get("name", i)), params, self._copy(params)))
        self._measuring = _Measuring(
            optimizer,
            _layout(optimizer),
            groups,
            time.perf_counter() - started,
            _events_end(events),
        )
        return True

    def after(self, optimizer: torch.optim.Optimizer, step: int) -> None:
        """After a measured optimizer step (``step``: the step it made): the signals,
        as device tensors, kept for the next read."""
        m, self._measuring = self._measuring, None
        if m is None:
            return
        if optimizer is not m.optimizer or _layout(optimizer) != m.layout:
            return  # a failed step's commands were undone: other groups, or another optimizer
        started = time.perf_counter()
        events = _events_start(optimizer)
        present: list[tuple[bool, bool, bool, bool]] = []
        tensors: list[torch.Tensor] = []
        with torch.no_grad():
            for group, g in zip(m.groups, optimizer.param_groups, strict=False):
                found = _measure(group, g, optimizer.state)
                grad, param, ratio, adam = (v is not None for v in found)
                present.append((grad, param, ratio, adam))
                tensors += [v for v in found if v is not None]
        values = None
        if tensors:
            device = tensors[0].device
            values = torch.stack([t.to(device, torch.float32) for t in tensors])
        self._pending.append(_Pending(step, [gr.name for gr in m.groups], present, values))
        self.measured += 1
        host = m.host + time.perf_counter() - started
        if m.events is not None:
            self._timing.append((host, [m.events, _events_end(events)]))  # type: ignore[list-item]
            del self._timing[:-MAX_TIMING]  # a device that never completes them: the newest
        else:
            self._cost = host
        if len(self._pending) >= MAX_PENDING:
            self.flush()

    def _copy(self, params: list[torch.Tensor]) -> list[torch.Tensor] | None:
        if not params or self._copy_failed:
            return None
        try:
            return list(torch._foreach_mul(params, 1.0))
        except torch.OutOfMemoryError:  # no room for a copy of the weights: no update ratio
            self._copy_failed = True
            return None

    def _reschedule(self, now: float) -> None:
        """K from the step time since the last measurement and a measurement's cost."""
        if self.fixed is not None:
            self._countdown = self.fixed
            self._last_at, self._since = now, 0
            return
        self._poll()
        k = self.every
        if self._last_at is not None and self._since > 0:
            step_s = (now - self._last_at) / self._since
            if self._cost is None:  # not known yet (CUDA events pending): wait longer
                k = min(MAX_EVERY, 2 * k)
            elif step_s > 0:
                wanted = math.ceil(self._cost / (BUDGET * step_s))
                k = max(1, min(MAX_EVERY, wanted, 2 * k))
        self.every = self._countdown = k
        self._last_at, self._since = now, 0

    def _poll(self) -> None:
        """CUDA: the device time of the measurements whose events completed."""
        while self._timing and all(end.query() for _, end in self._timing[0][1]):
            host, pairs = self._timing.pop(0)
            device = sum(start.elapsed_time(end) for start, end in pairs) / 1000.0
            self._cost = max(host, device)

    # ------------------------------------------------------------------ reading

    def flush(self) -> None:
        """Read the pending measurements with one transfer; latest values and history."""
        pending, self._pending = self._pending, []
        stored = [p.values for p in pending if p.values is not None]
        if not stored:
            read: list[float] = []
        else:
            device = stored[0].device
            read = torch.cat([v.to(device, torch.float64) for v in stored]).tolist()
        it = iter(read)
        for p in pending:
            for name, present in zip(p.names, p.present, strict=True):
                vals = [next(it) if here else None for here in present]
                self._keep(p.step, name, vals)

    def _keep(self, step: int, name: str, vals: list[float | None]) -> None:
        grad, param, ratio, adam = vals
        grads = self._grad_history.setdefault(name, DownsampledSeries(HISTORY))
        ratios = self._ratio_history.setdefault(name, DownsampledSeries(HISTORY))
        if grad is not None and math.isfinite(grad):  # an inf (fp16 skip) would stay forever
            grads.add(step, grad)
        if ratio is not None and math.isfinite(ratio):
            ratios.add(step, ratio)
        self._latest[name] = GroupSignals(name, step, grad, param, ratio, adam)

    def view(self, names: list[str]) -> tuple[GroupSignals, ...]:
        """One per group (``names``: the current groups, in order), with the latest values
        measured under that name and their history; () while off."""
        if not self.enabled:
            return ()
        self.flush()
        shown = self._shown
        if shown is not None and shown[0] == tuple(names) and shown[1] == self.measured:
            return shown[2]  # nothing new: the same tuple (snapshots are built 10 times a second)
        out = []
        points = max(8, SHOWN_POINTS // max(1, len(names)))
        for name in names:
            last = self._latest.get(name) or GroupSignals(name)
            grads, ratios = self._grad_history.get(name), self._ratio_history.get(name)
            out.append(
                GroupSignals(
                    name=name,
                    step=last.step,
                    grad_norm=last.grad_norm,
                    param_norm=last.param_norm,
                    update_ratio=last.update_ratio,
                    adam_step=last.adam_step,
                    grad_norm_history=_thin(grads.series(), points) if grads else Series(),
                    update_ratio_history=_thin(ratios.series(), points) if ratios else Series(),
                )
            )
        self._shown = (tuple(names), self.measured, tuple(out))
        return self._shown[2]

    def latest(self, names: list[str]) -> dict[str, dict[str, float | None]] | None:
        """For a metrics.jsonl line: ``{"grad_norm": {group: v}, "update_ratio": {...}}``
        (the latest measurement of each current group; None: not measured yet); None
        while off."""
        if not self.enabled:
            return None
        self.flush()
        last = [self._latest.get(name) for name in names]
        return {
            "grad_norm": {n: s.grad_norm if s else None for n, s in zip(names, last, strict=True)},
            "update_ratio": {
                n: s.update_ratio if s else None for n, s in zip(names, last, strict=True)
            },
        }

    def reset(self) -> None:
        """Forget what was measured (a checkpoint loaded into the running trainer took the
        run back to an earlier step: its history would run backwards); K is kept."""
        self._measuring = None
        self._pending.clear()
        self._latest.clear()
        self._grad_history.clear()
        self._ratio_history.clear()
        self._shown = None

    @contextlib.contextmanager
    def suspended(self) -> Iterator[None]:
        """No measurement inside (steps that are not the run's: an lr range test's sweep,
        which the run is put back from); the countdown goes on where it was after."""
        enabled, self.enabled, self._measuring = self.enabled, False, None
        try:
            yield
        finally:
            self.enabled = enabled

    @property
    def every_shown(self) -> int:
        """Snapshot.signal_every: K, 0 while off or before the first measurement."""
        return self.every if self.enabled and (self.measured or self._latest) else 0


def _thin(series: Series, points: int) -> Series:
    """At most ``points`` of ``series``: adjacent buckets merged (means, the last step)."""
    n = len(series)
    if n <= points:
        return series
    width = math.ceil(n / points)
    steps, values = series.steps, series.values
    return Series(
        tuple(steps[min(i + width, n) - 1] for i in range(0, n, width)),
        tuple(sum(values[i : i + width]) / len(values[i : i + width]) for i in range(0, n, width)),
    )


def _measure(group: _Group, g: dict[str, Any], state: Any) -> list[torch.Tensor | None]:
    """grad norm, param norm, update ratio, adam step of one group (None: not known)."""
    kept = [
        i
        for i, p in enumerate(group.params)
        if p.grad is not None and not p.grad.is_sparse and p.grad.layout == torch.strided
    ]
    if not kept:
        return [None, None, None, None]
    originals = [group.params[i] for i in kept]  # the optimizer's state is keyed by these
    params = [p.detach() for p in originals]
    grads = [group.params[i].grad for i in kept]
    grad = _total(torch._foreach_norm(grads, 2, dtype=torch.float32))  # type: ignore[arg-type]
    weight = _total(torch._foreach_norm(params, 2, dtype=torch.float32))
    ratio = None
    if group.copies is not None:
        copies = [group.copies[i] for i in kept]
        torch._foreach_sub_(copies, params)  # before - after: the update, in place
        ratio = _total(torch._foreach_norm(copies, 2, dtype=torch.float32)) / weight
    return [grad, weight, ratio, _adam_step(originals, g, state)]


def _total(norms: list[torch.Tensor] | tuple[torch.Tensor, ...]) -> torch.Tensor:
    """The norm of the norms (a model split over devices: on the first one)."""
    device = norms[0].device
    total: torch.Tensor = torch.linalg.vector_norm(torch.stack([n.to(device) for n in norms]))
    return total


def _adam_step(params: list[torch.Tensor], g: dict[str, Any], state: Any) -> torch.Tensor | None:
    """||lr * m_hat / (sqrt(v_hat) + eps)|| over the group, from the optimizer's state
    after the step; None for an optimizer without Adam's moments."""
    betas, eps = g.get("betas"), g.get("eps")
    if not isinstance(betas, tuple | list) or len(betas) != 2 or eps is None:
        return None
    beta1, beta2 = float(betas[0]), float(betas[1])
    lr = g["lr"]
    parts = []
    device = params[0].device
    for p in params:
        s = state.get(p)
        if not s or "exp_avg" not in s or "step" not in s:
            continue
        m, step = s["exp_avg"], s["step"]
        if not isinstance(step, torch.Tensor):
            step = torch.tensor(float(step))
        bc1 = 1 - beta1**step
        if "exp_inf" in s:  # Adamax: lr / bc1 * m / u, u holding eps already
            norm = torch.linalg.vector_norm(m / s["exp_inf"], dtype=torch.float32)
        else:
            v = s.get("max_exp_avg_sq") if g.get("amsgrad") else None
            v = s.get("exp_avg_sq") if v is None else v
            if v is None:
                continue
            denom = v.sqrt().div_(torch.sqrt(1 - beta2**step).to(v.device)).add_(eps)
            norm = torch.linalg.vector_norm(m / denom, dtype=torch.float32)
        parts.append((norm * (lr / bc1).to(norm.device)).to(device))
    if not parts:
        return None
    total: torch.Tensor = torch.linalg.vector_norm(torch.stack(parts))
    return total


def _events_start(optimizer: torch.optim.Optimizer) -> Any:
    device = _device(optimizer)
    if device is None or device.type != "cuda":
        return None
    start = torch.cuda.Event(enable_timing=True)
    start.record(torch.cuda.current_stream(device))
    return (start, device)


def _events_end(started: Any) -> tuple[Any, Any] | None:
    if started is None:
        return None
    start, device = started
    end = torch.cuda.Event(enable_timing=True)
    end.record(torch.cuda.current_stream(device))
    return (start, end)


def _layout(optimizer: torch.optim.Optimizer) -> list[int]:
    return [len(g["params"]) for g in optimizer.param_groups]


def _device(optimizer: torch.optim.Optimizer) -> torch.device | None:
    for g in optimizer.param_groups:
        for p in g["params"]:
            return p.device  # type: ignore[no-any-return]
    return None
