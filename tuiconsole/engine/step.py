"""The training step GPU users run: mixed precision, gradient clipping, accumulation,
compile.

The plain step (``Trainer._one_step``: zero_grad, forward, backward, step) stays as it
is, and is the one the loop calls while none of this is on, so a plain run does no
more per-step work than before. Once any of these is on, the loop calls
:func:`take_step` instead (``Trainer._step_fn``), which does, per optimizer step:

1. ``zero_grad``; then for each of ``accumulate`` micro-batches: the forward and loss
   under ``torch.autocast`` (``amp``: bf16, or fp16 with a ``torch.amp.GradScaler``),
   ``backward`` of loss / N (scaled by the GradScaler under fp16). An epoch that ends
   inside a step ends that step early: its gradients are scaled back up to the mean of
   the micro-batches it had (N / k), and the epoch ends at the next step's first batch.
2. The loss recorded is the mean over the micro-batches, kept on the device. On CPU
   (``nan_check`` "step") it is read and checked once per optimizer step: a non-finite
   one skips the update (NAN-PAUSED as before). A step the GradScaler skips (inf/NaN
   gradients, the loss finite) is counted, never a NaN pause.
3. Clipping (``grad_clip``): the gradients are unscaled (``scaler.unscale_``), their
   total norm clipped with ``clip_grad_norm_``; the norm and the count of clipped steps
   stay on the device (no host sync), read when a snapshot is built (:meth:`view`).
4. ``optimizer.step()`` (``scaler.step`` under fp16, guarded by the undo of
   ops.guarded_step after optimizer commands), ``scaler.update()``, the scheduler.

``clip MAX_NORM`` / ``clip off`` and ``accumulate N`` are commands (journaled and
replayed as ``lr`` is); they change how the *next* optimizer step is taken, so they
cannot make ``optimizer.step()`` fail and the undo does not cover them. Their live
values, the GradScaler's state and the counts go into every checkpoint
(:meth:`Stepping.state`) and come back on resume, over the script's and run's options
(a resumed run goes on as the checkpointed one would have; change them live after).

``compile``: ``torch.compile`` of the model (not of the optimizer step: optimizer
commands never recompile). The first step compiles it: the log says so and the
snapshot shows "compiling" before, "compiled" after; should compiling fail, the
step is taken eagerly and the run goes on without it (the snapshot says why). ``eval``
uses the model itself (eager), under the same autocast.

A loop of its own (engine/ownloop.py) takes its own steps; it gets the live clip value
(``Steer.clip_gradients()`` clips for it) and its GradScaler's state in checkpoints.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, cast

import torch
from torch import nn

from tuiconsole.engine import commands as C
from tuiconsole.engine.data import END_OF_EPOCH, EpochData, to_device
from tuiconsole.engine.faults import Where, finite_on_cpu, one_line
from tuiconsole.engine.snapshot import RunState, StepView
from tuiconsole.errors import CommandError, TuiconsoleError

if TYPE_CHECKING:
    from tuiconsole.engine.config import RunConfig
    from tuiconsole.engine.record import RunRecord
    from tuiconsole.script import TrainingSpec

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
# The commands that change how steps are taken (handled here, not by ops.py / control.py)
COMMANDS = (C.Clip, C.Accumulate)


@dataclass(frozen=True)
class StepSettings:
    """What the run asked for: the script's names, overridden by ``run``'s options."""

    amp: str | None = None  # "bf16" | "fp16" | None
    grad_clip: float | None = None
    accumulate: int = 1
    compile: bool = False

    @classmethod
    def of(cls, spec: TrainingSpec, config: RunConfig) -> StepSettings:
        amp = config.amp if config.amp is not None else spec.amp
        clip = config.grad_clip if config.grad_clip is not None else spec.grad_clip
        return cls(
            amp=None if amp in (None, "off") else amp,
            grad_clip=None if clip in (None, "off") else float(clip),
            accumulate=config.accumulate or spec.accumulate or 1,
            compile=config.compile if config.compile is not None else spec.compile,
        )

    @property
    def plain(self) -> bool:
        return self == StepSettings()

    def record(self) -> dict[str, Any]:
        """For the journal's header."""
        return {
            "amp": self.amp,
            "grad_clip": self.grad_clip,
            "accumulate": self.accumulate,
            "compile": self.compile,
        }


class StepHost(Protocol):
    """What :func:`take_step` uses of the trainer whose step it takes (engine/trainer.py)."""

    epoch: int
    step: int
    model: nn.Module
    criterion: Any
    device: torch.device
    spec: TrainingSpec
    _data: EpochData
    _ddp: nn.Module | None
    _on_cpu: bool
    _nan_each_step: bool
    _undo: Any
    _stepping: Stepping
    _record: RunRecord

    @property
    def state(self) -> RunState: ...
    @property
    def optimizer(self) -> torch.optim.Optimizer: ...
    @property
    def scheduler(self) -> Any: ...
    def _end_epoch(self) -> None: ...
    def _scheduler_step(self) -> None: ...
    def _skip_nonfinite(self, finite: bool, loss: torch.Tensor) -> bool: ...
    def _guarded_step(
        self, undo: Any, take: Callable[[torch.optim.Optimizer], object] | None = None
    ) -> None: ...
    def _append_log(self, kind: str, text: str, ok: bool = True, source: str = "") -> None: ...
    def _publish(self) -> None: ...


class Stepping:
    """The step's settings as they are now, and what it keeps between steps: the
    GradScaler, the last grad norm and the counts (on the device), the compiled model."""

    def __init__(
        self,
        settings: StepSettings,
        model: nn.Module,
        device: torch.device,
        *,
        scaler: torch.amp.GradScaler | None = None,
    ) -> None:
        self.settings = settings
        self.device = device
        self.amp = settings.amp
        self.dtype = AMP_DTYPES[settings.amp] if settings.amp is not None else None
        self.notes: list[str] = []  # said in the log as the run starts
        if settings.amp == "bf16" and device.type == "cuda" and not _bf16_ok(device):
            raise TuiconsoleError(
                f"amp bf16: {torch.cuda.get_device_name(device)} has no bfloat16 support; "
                "use amp fp16 (with its GradScaler) or no amp"
            )
        if settings.amp == "fp16" and scaler is None:
            scaler = torch.amp.GradScaler(device.type)
            if device.type == "cpu":
                self.notes.append(
                    "amp fp16 on the CPU: torch's CPU float16 autocast and GradScaler are "
                    "used; they are slow on most CPUs, where amp bf16 needs no scaler"
                )
        self.scaler = scaler
        self.clip = settings.grad_clip
        self.accumulate = settings.accumulate
        self._params = list(model.parameters())  # those without a gradient are skipped
        self._norm: torch.Tensor | None = None  # the last total grad norm, on its device
        self._clipped: torch.Tensor | None = None  # steps clipped (norm > max), on the device
        self._skipped: torch.Tensor | None = None  # steps the scaler skipped, on the device
        self.clip_steps = 0  # steps taken with clipping on
        self.clip_used = False  # an own loop clipped through clip_gradients()
        self.compile_state = "pending" if settings.compile else ""
        self._compiled: tuple[nn.Module, nn.Module] | None = None  # (model, its compiled)
        self._counts = (0, 0)  # counts a checkpoint restored, added to the device ones
        self._norm_restored: float | None = None  # its last norm, until a step makes one
        self._was_on = not settings.plain

    @property
    def on(self) -> bool:
        """The featured step is needed (else the plain one is taken)."""
        return (
            self.amp is not None
            or self.clip is not None
            or self.accumulate > 1
            or bool(self.compile_state)
        )

    @property
    def shown(self) -> bool:
        """The snapshot has a StepView: a feature was on at some point, or a scaler given
        (a run that turned clipping off still shows its counts)."""
        return self._was_on or self.scaler is not None

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    # ------------------------------------------------------------------ per step

    def forward_model(self, model: nn.Module) -> nn.Module:
        """The model the forward runs through: its compiled form once compile is on."""
        if not self.compile_state or self.compile_state.startswith("failed"):
            return model
        if self._compiled is None or self._compiled[0] is not model:
            # compiles at its first call; an OptimizedModule, the same nn.Module
            self._compiled = (model, cast(nn.Module, torch.compile(model)))
        return self._compiled[1]

    def clip_now(self, params: Iterable[torch.Tensor] | None = None) -> torch.Tensor | None:
        """Clip the gradients' total norm to the live max norm (under a GradScaler, the
        caller has unscaled them); the norm, on the device, or None (clipping is off)."""
        if self.clip is None:
            return None
        norm = torch.nn.utils.clip_grad_norm_(self._params if params is None else params, self.clip)
        over = norm > self.clip
        if self._clipped is None or self._clipped.device != norm.device:
            self._clipped = torch.zeros((), dtype=torch.int64, device=norm.device)
        self._clipped.add_(over)
        self._norm = norm.detach()
        self.clip_steps += 1
        return norm

    def scale_grads(self, factor: float) -> None:
        grads = [p.grad for p in self._params if p.grad is not None]
        if grads:
            torch._foreach_mul_(grads, factor)

    def take(self, optimizer: torch.optim.Optimizer) -> None:
        """optimizer.step(), through the GradScaler under fp16."""
        if self.scaler is None:
            optimizer.step()
        else:
            self.scaler.step(optimizer)

    def updated(self) -> None:
        """After scaler.step(): update the scale; a step it skipped is counted."""
        scaler = self.scaler
        assert scaler is not None
        before = scaler._scale  # read on the device: no host sync
        before = before.clone() if before is not None else None
        scaler.update()
        after = scaler._scale
        if before is not None and after is not None:
            if self._skipped is None:
                self._skipped = torch.zeros((), dtype=torch.int64, device=after.device)
            self._skipped.add_(after < before)  # the scale backs off only when it skipped

    # ------------------------------------------------------------------ what is shown

    def view(self) -> StepView | None:
        """The snapshot's StepView: the device-side figures read now, in one read."""
        if not self.shown:
            return None
        scaler = self.scaler
        scale = scaler._scale if scaler is not None else None  # None before its first scale()
        kept = {
            name: t
            for name, t in (
                ("clipped", self._clipped),
                ("skipped", self._skipped),
                ("norm", self._norm),
                ("scale", scale),
            )
            if t is not None
        }
        read = dict(zip(kept, _read(list(kept.values())), strict=True))
        if scaler is not None and scale is None and scaler.is_enabled():
            read["scale"] = scaler.get_scale()  # its initial scale, not yet on a device
        return StepView(
            amp=self.amp or "",
            scale=read.get("scale"),
            scaler_skipped=int(read.get("skipped", 0)) + self._counts[1],
            grad_clip=self.clip,
            grad_norm=read.get("norm", self._norm_restored),
            clipped=int(read.get("clipped", 0)) + self._counts[0],
            clip_steps=self.clip_steps,
            accumulate=self.accumulate,
            compile=self.compile_state if self.compile_state != "pending" else "",
        )

    # ------------------------------------------------------------------ checkpoints

    def state(self) -> dict[str, Any]:
        """What a checkpoint keeps: the live values, the counts, the GradScaler's state."""
        view = self.view() or StepView()
        return {
            "amp": self.amp,
            "grad_clip": self.clip,
            "accumulate": self.accumulate,
            "clipped": view.clipped,
            "clip_steps": self.clip_steps,
            "scaler_skipped": view.scaler_skipped,
            "grad_norm": view.grad_norm,
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
        }

    def load(self, saved: dict[str, Any] | None) -> list[str]:
        """Resume a checkpoint's :meth:`state`: the live clip and accumulate come back,
        over the script's and run's options (as a hand-set lr comes back over the
        script's), and the GradScaler's state under fp16. Notes for the log."""
        if saved is None:
            return []
        notes = []
        for key, now in (("grad_clip", self.clip), ("accumulate", self.accumulate)):
            if saved[key] != now:
                notes.append(f"{key} {saved[key]} as in the checkpoint (the options say {now})")
        self.clip, self.accumulate = saved["grad_clip"], saved["accumulate"]
        if saved["amp"] != self.amp:
            notes.append(
                f"the checkpoint was trained with amp {saved['amp'] or 'off'} and this run "
                f"uses {self.amp or 'none'}: it does not continue exactly"
            )
        if self.scaler is not None and saved["scaler"]:  # {}: a disabled scaler's
            self.scaler.load_state_dict(saved["scaler"])
        self.clip_steps = saved["clip_steps"]
        self._counts = (saved["clipped"], saved["scaler_skipped"])
        self._norm_restored = saved["grad_norm"]
        self._was_on = self._was_on or self.on or bool(self.clip_steps)
        return notes

    # ------------------------------------------------------------------ commands

    def apply(self, cmd: C.Command, own_loop: bool) -> str:
        """``clip`` / ``accumulate``: the next optimizer step is taken so."""
        message = self._apply(cmd, own_loop)
        self._was_on = True
        return message

    def _apply(self, cmd: C.Command, own_loop: bool) -> str:
        if isinstance(cmd, C.Clip):
            before = "off" if self.clip is None else f"{self.clip:g}"
            self.clip = cmd.max_norm
            after = "off" if cmd.max_norm is None else f"{cmd.max_norm:g}"
            note = ""
            if own_loop and not self.clip_used:
                note = "; this loop clips only if it calls steer.clip_gradients() (it has not yet)"
            return f"grad clip {before}->{after} from the next optimizer step{note}"
        if isinstance(cmd, C.Accumulate):
            if own_loop:
                raise CommandError(
                    "accumulate: this loop is the script's own: it decides how many "
                    "micro-batches make an optimizer step"
                )
            was, self.accumulate = self.accumulate, cmd.n
            return (
                f"accumulate {was}->{cmd.n} micro-batch(es) per optimizer step, from the next step"
            )
        raise CommandError(f"unsupported command {cmd.text!r}")  # pragma: no cover


def _read(tensors: list[torch.Tensor]) -> list[float]:
    """Scalars kept on their device, read with one transfer (float64: counts stay exact)."""
    if not tensors:
        return []
    device = tensors[0].device  # all on it but in a model split over devices
    wide = torch.float32 if device.type == "mps" else torch.float64
    values: list[float] = torch.stack([t.detach().to(device, wide) for t in tensors]).tolist()
    return values


def _bf16_ok(device: torch.device) -> bool:
    try:
        return bool(torch.cuda.is_bf16_supported())
    except Exception:  # pragma: no cover - an odd driver: let autocast decide
        return True


def take_step(host: StepHost, where: Where) -> torch.Tensor | float | None:
    """One optimizer step with the run's amp, clipping, accumulation and compile (the
    module docstring says what, in which order); returns the loss to record (the mean
    over its micro-batches), or None (the run finished, or a non-finite loss was
    handled), as Trainer._one_step does."""
    st = host._stepping
    data = host._data
    meter = host._record.meter
    timed = meter.sampled()  # one step in K is timed (engine/telemetry.py)
    while (batch := data.take(host.epoch)) is END_OF_EPOCH:
        host._end_epoch()
        if host.state == RunState.FINISHED:
            return None
    if timed:
        meter.took(batch)
    model = st.forward_model(host._ddp or host.model)
    optimizer = host.optimizer
    optimizer.zero_grad(set_to_none=True)
    if st.compile_state == "pending":
        st.compile_state = "compiling"
        host._append_log("info", "compiling the model (torch.compile); the first step waits")
        host._publish()
    started = time.monotonic()
    losses = _micro_batches(host, st, model, batch, where, timed)
    if st.compile_state == "compiling":
        st.compile_state = "compiled"
        took = time.monotonic() - started
        host._append_log("info", f"model compiled: the first step took {took:.1f} s")
    mean = losses[0] if len(losses) == 1 else torch.stack(losses).mean()
    value = None
    if host._nan_each_step:
        finite, value = finite_on_cpu(mean)
        if host._skip_nonfinite(finite, mean):
            return None
    where.phase = "optimizer"
    if st.clip is not None:
        if st.scaler is not None:
            st.scaler.unscale_(optimizer)
        st.clip_now()
    signals = host._record.signals
    measured = signals.before(optimizer)  # one step in K (engine/signals.py)
    if host._undo is None:
        st.take(optimizer)
    else:
        host._guarded_step(host._undo, _retaking(st))
    if measured:
        signals.after(host.optimizer, host.step + 1)
    if st.scaler is not None:
        st.updated()
    where.phase = "scheduler"
    if host.scheduler is not None and host.spec.scheduler_interval == "step":
        host._scheduler_step()
    if timed:
        meter.done()
    return mean if value is None else value


def _micro_batches(
    host: StepHost, st: Stepping, model: nn.Module, batch: Any, where: Where, timed: bool
) -> list[torch.Tensor]:
    """Forward and backward of the step's micro-batches, from ``batch`` on; their losses.

    Under torchrun (DDP) only the step's last backward all-reduces the gradients: the
    others run under ``no_sync()``, so the next micro-batch is taken before a backward
    (an epoch that ends there makes it the last). An epoch that runs out inside the
    step ends it: the gradients are brought to the mean of the micro-batches it had."""
    data, ddp, n, meter = host._data, host._ddp, st.accumulate, host._record.meter

    def take_next() -> Any:
        """The step's next micro-batch, or END_OF_EPOCH (the epoch's end held for the
        next step); its wait timed in a step the meter samples (engine/telemetry.py)."""
        where.phase, where.batch = "data", None
        if timed:
            meter.taking()
        got = data.take(host.epoch)
        if got is END_OF_EPOCH:
            data.hold_end()
        elif timed:
            meter.took(got)
        return got

    losses: list[torch.Tensor] = []
    while True:
        last = len(losses) + 1 >= n
        following: Any = None
        if ddp is not None and not last:
            following = take_next()
            last = following is END_OF_EPOCH
        where.phase, where.batch = "forward", batch
        if not host._on_cpu:
            batch = to_device(batch, host.device)
        with _no_sync(ddp, last):
            loss = _forward(host, st, model, batch)
            if loss is None:  # compiling failed at this first call: eager from now on
                model = st.forward_model(host._ddp or host.model)
                loss = _forward(host, st, model, batch)
                assert loss is not None  # eager: its errors are raised
            losses.append(loss.detach())
            part = loss / n if n > 1 else loss
            (st.scaler.scale(part) if st.scaler is not None else part).backward()
        if last:
            break
        if following is None:
            following = take_next()
            if following is END_OF_EPOCH:
                break
        batch = following
    if len(losses) < n:  # the epoch ended inside this step: a shorter one
        st.scale_grads(n / len(losses))
    return losses


def _no_sync(ddp: nn.Module | None, last: bool) -> contextlib.AbstractContextManager[Any]:
    """DDP's ``no_sync()`` for a micro-batch that is not its step's last."""
    if ddp is None or last:
        return contextlib.nullcontext()
    no_sync = cast(Callable[[], contextlib.AbstractContextManager[Any]], ddp.no_sync)
    return no_sync()


def _retaking(st: Stepping) -> Callable[[torch.optim.Optimizer], object]:
    """The step function for ops.guarded_step. Its retry after a failed ``rebuild`` is on
    another optimizer object (the one put back), whose gradients the GradScaler already
    unscaled for the first: the scaler's record of that (torch keeps it per optimizer
    id) goes with them, so they are not unscaled twice."""
    tried: list[torch.optim.Optimizer] = []

    def take(optimizer: torch.optim.Optimizer) -> None:
        states = getattr(st.scaler, "_per_optimizer_states", None)
        if tried and tried[-1] is not optimizer and isinstance(states, dict):
            states[id(optimizer)] = states[id(tried[-1])]
        tried.append(optimizer)
        st.take(optimizer)

    return take


def loss_of(
    training_step: Callable[..., Any] | None, criterion: Any, model: nn.Module, batch: Any
) -> torch.Tensor:
    """The forward pass of one (micro-)batch, as the script defines it: its
    ``training_step(model, batch, criterion)``, else ``criterion(model(inputs), targets)``.
    The plain step (Trainer._one_step) and this module's both take it."""
    if training_step is not None:
        loss = training_step(model, batch, criterion)
        if not isinstance(loss, torch.Tensor):
            raise TypeError(
                f"training_step must return the loss as a tensor, got {type(loss).__name__}"
            )
        return loss
    inputs, targets = batch
    return criterion(model(inputs), targets)  # type: ignore[no-any-return]


def _forward(host: StepHost, st: Stepping, model: nn.Module, batch: Any) -> torch.Tensor | None:
    """The loss of one micro-batch under autocast. None: compiling the model failed at
    this first call (the snapshot and the log say why; the caller goes on eagerly)."""
    try:
        with st.autocast():
            loss = loss_of(host.spec.training_step, host.criterion, model, batch)
    except Exception as exc:
        if st.compile_state != "compiling" or not _compile_error(exc):
            raise
        why = one_line(f"{type(exc).__name__}: {exc}", 200)
        st.compile_state = f"failed: {why} (eager)"
        host._append_log("info", f"torch.compile failed ({why}); training without it", ok=False)
        return None
    return loss


def _compile_error(exc: BaseException) -> bool:
    """An error of torch.compile itself (dynamo, inductor, a missing C compiler), not
    of the model's own code (that is raised again when the step is taken eagerly)."""
    module = type(exc).__module__
    return module.startswith(("torch._dynamo", "torch._inductor")) or "Compil" in type(exc).__name__
