"""A run whose loop is the user's: the library API and the framework callbacks.

The user's code takes each step (forward, backward, ``optimizer.step()``, its
scheduler) in its own thread. :meth:`OwnLoop.boundary` is called there once per
step, after it: the loss is recorded (kept on the device, read when a snapshot
or log line is due), the commands queued from any front-end are applied and
journaled (fsynced) before it returns, and while the run is paused, done with a
``step N`` or NaN-paused it blocks there, serving commands. When the loop must
end (a ``stop``, ``--max-steps`` reached, ``--nan stop``) it raises
:class:`LoopEnds`; a stop has written the final checkpoint and end record by then.

What the trainer's own loop does (data, forward, backward, the scheduler) is the
user's here; the rest is :class:`Trainer`'s, unchanged: the same commands,
journal, checkpoints, replay and snapshots. Two differences follow from the
user's code holding the objects: ``rebuild`` changes the optimizer in place
(groups.become), and the model stays where the user put it (its device, its
train/eval mode).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import math
import numbers
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tuiconsole.engine import distributed as D
from tuiconsole.engine import faults
from tuiconsole.engine.config import RunConfig, stop_grace
from tuiconsole.engine.control import Stopped
from tuiconsole.engine.data import set_rng_state
from tuiconsole.engine.snapshot import EvalPoint, RunState
from tuiconsole.engine.step import Stepping, StepSettings
from tuiconsole.engine.trainer import Trainer
from tuiconsole.errors import CommandError, TuiconsoleError
from tuiconsole.script import TrainingSpec

# What an `evaluate` callable may return: the loss, or a dict with "loss" (and
# "accuracy"), as a number or a 0-d tensor.
Evaluate = Callable[[], Any]


class LoopEnds(Exception):  # noqa: N818 - an event, like StopIteration
    """The user's loop must end at this boundary; ``reason`` says why, in a line."""

    def __init__(self, reason: str, state: RunState) -> None:
        super().__init__(reason)
        self.reason = reason
        self.state = state


def _no_criterion(*_: Any) -> torch.Tensor:  # pragma: no cover - an own loop has no criterion
    raise TuiconsoleError("an own loop computes its loss itself")


def model_device(model: nn.Module) -> torch.device:
    for tensor in model.parameters():
        return tensor.device
    return torch.device("cpu")


def _number(value: Any, what: str) -> float:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise CommandError(f"eval: `evaluate` returned a {what} of shape {tuple(value.shape)}")
        return float(value.detach().float().item())
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    raise CommandError(
        f"eval: `evaluate` must return a number for {what}, got {type(value).__name__}"
    )


def eval_point(result: Any, step: int) -> EvalPoint:
    """An ``evaluate`` callable's result as an EvalPoint (CommandError if it is neither
    a number nor a dict with "loss")."""
    if isinstance(result, dict):
        if "loss" not in result:
            keys = ", ".join(map(str, result)) or "none"
            raise CommandError(f'eval: `evaluate` returned a dict without "loss" (keys: {keys})')
        accuracy = result.get("accuracy", result.get("acc"))
        return EvalPoint(
            step,
            _number(result["loss"], "loss"),
            None if accuracy is None else _number(accuracy, "accuracy"),
        )
    return EvalPoint(step, _number(result, "loss"), None)


class OwnLoop(Trainer):
    OWN_LOOP = True

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        *,
        scheduler: Any = None,
        evaluate: Evaluate | None = None,
        config: RunConfig | None = None,
        path: Path | None = None,
        scheduler_interval: str = "step",
        scaler: torch.amp.GradScaler | None = None,
        grad_clip: float | None = None,
    ) -> None:
        config = config or RunConfig()
        if config.epochs is not None:
            raise TuiconsoleError(
                "--epochs does not apply to a loop of its own: it counts its epochs; give "
                "the script an option of its own (after `--`), or use --max-steps"
            )
        if config.device is not None:
            raise TuiconsoleError(
                "--device does not apply to a loop of its own: the model stays on the device "
                "the script put it on"
            )
        for option, value in (
            ("--amp", config.amp),
            ("--accumulate", config.accumulate),
            ("--compile", config.compile),
        ):
            if value is not None:
                raise TuiconsoleError(
                    f"{option} does not apply to a loop of its own: the loop takes its steps "
                    "itself (--grad-clip does: steer.clip_gradients() clips to it)"
                )
        spec = TrainingSpec(
            model=model,
            optimizer=optimizer,
            criterion=_no_criterion,
            train_loader=(),
            scheduler=scheduler,
            scheduler_interval=scheduler_interval,
            device=str(model_device(model)),
            path=path,
            sha256=hashlib.sha256(path.read_bytes()).hexdigest() if path is not None else None,
        )
        self._user_evaluate = evaluate
        self._user_scaler, self._user_clip = scaler, grad_clip  # read by _make_stepping
        super().__init__(spec, config)
        self._thread: threading.Thread | None = None  # the thread that runs the loop
        self._optimizer_steps = 0  # optimizer.step() calls since the last boundary
        self._optimizer_began = 0  # ...and those begun (the weights may have changed)
        self._ever_stepped = False
        self._hooks = (
            optimizer.register_step_pre_hook(self._began_hook),
            optimizer.register_step_post_hook(self._stepped_hook),
        )
        self._ended = False  # the final checkpoint and end record are written
        self.start_step = self.step  # where a resumed run goes on (0 for a new one)

    def _make_stepping(self, spec: TrainingSpec) -> Stepping:
        """The loop takes its own steps: only the live clip value (``grad_clip=``, or
        run's --grad-clip) and the user's GradScaler, checkpointed and resumed."""
        clip = self.config.grad_clip if self.config.grad_clip is not None else self._user_clip
        settings = StepSettings(grad_clip=None if clip in (None, "off") else float(clip))
        return Stepping(settings, spec.model, self.device, scaler=self._user_scaler)

    def clip_gradients(self, parameters: Any = None) -> torch.Tensor | None:
        """Clip the gradients' total norm to the live max norm (``clip`` commands change
        it), counted and shown as the engine's own step does; None while clipping is off."""
        stepping = self._stepping
        stepping.clip_used = True
        return stepping.clip_now(None if parameters is None else list(parameters))

    @property
    def grad_clip(self) -> float | None:
        """The live max norm, for a loop that clips by itself (it reads it, so a ``clip``
        command is not told the loop ignores it)."""
        self._stepping.clip_used = True
        return self._stepping.clip

    @property
    def epoch_shown(self) -> int:
        """0: the loop counts its epochs itself (front-ends then show none)."""
        return 0

    def _began_hook(self, optimizer: torch.optim.Optimizer, *_: Any) -> None:
        self._optimizer_began += 1
        # one step in K is measured (engine/signals.py); after a closure's step too: the
        # gradients are read after it
        self._record.signals.before(optimizer)

    def _stepped_hook(self, optimizer: torch.optim.Optimizer, *_: Any) -> None:
        self._optimizer_steps += 1
        self._record.signals.after(optimizer, self.step + 1)

    # ------------------------------------------------------------------ the user's thread

    def open(self) -> None:
        """Open the run's files, in the loop's thread (TuiconsoleError: they can't be)."""
        if self._launched:
            raise RuntimeError("an own loop is opened once")
        self._thread = threading.current_thread()
        self._launch()

    def begin(self) -> None:
        """Start the run (resume, the replay's step-0 commands); a run started paused
        (--paused) waits here, serving commands, until resumed."""
        if self._thread is None:
            self.open()
        try:
            self._setup()
            self._serve_boundary()
        except BaseException as exc:
            self._leave(exc)

    def boundary(self, loss: Any, *, skipped: bool = False, batch: Any = None) -> None:
        """A step was taken: record ``loss``, apply commands, wait while paused.

        ``skipped``: the framework skipped this step's ``optimizer.step()`` on purpose
        (a GradScaler found inf gradients under fp16); the step counts all the same.
        ``batch``: the step's batch (or its inputs), for samples/s and tokens/s: only
        its shapes are read, on the steps telemetry picks (engine/telemetry.py).
        Raises LoopEnds when the loop must end (and TuiconsoleError for invalid use).
        """
        if self._ended or self.state in (RunState.FINISHED, RunState.ERROR):
            raise LoopEnds(self._end_reason(), self.state)
        if threading.current_thread() is not self._thread:
            raise TuiconsoleError(
                "steer.step() was called from another thread than the one that began the run"
            )
        loss = _loss_tensor(loss)
        if (
            self._optimizer_steps == 0
            and not self._ever_stepped
            and not skipped
            and not _skipped_for_inf(self.optimizer)
        ):
            raise TuiconsoleError(
                "steer.step() was called before optimizer.step() ever ran: call it once per "
                "step, after optimizer.step() (and your scheduler's step)"
            )
        self._ever_stepped = True
        self._optimizer_steps = self._optimizer_began = 0
        self._record.meter.counted(batch)
        self._undo = None  # the user's code takes the optimizer step: nothing to guard
        try:
            self._count_step(loss)
            self._sync_groups()
            self._serve_boundary()
        except BaseException as exc:
            self._leave(exc)

    def loop_returned(self, exc: BaseException | None = None) -> None:
        """The user's loop is over (``exc``: it raised). A loop that just ran out ends
        the run as FINISHED; one that raised, as ERROR (its last good step kept)."""
        if self._ended or not self._launched:
            return
        if self.state == RunState.STARTING:
            return
        if exc is None or isinstance(exc, LoopEnds):
            if not self.state.is_terminal:
                self._set_finished(f"the training loop ended at step {self.step}")
            return
        if self.state.is_terminal:
            return
        if isinstance(exc, KeyboardInterrupt):  # Ctrl+C in `python train.py`: a stop
            self._interrupted()
            return
        exc.__traceback__ = None  # its frames hold the step's activations
        phase = "optimizer" if self._optimizer_began else "forward"
        self._fail(exc, None, phase)

    def _interrupted(self) -> None:
        """Ctrl+C came in the user's code: the run stops (a final checkpoint unless
        optimizer.step() had begun since the last boundary: the weights are no longer
        those of the step reached)."""
        self._stopping.asked("KeyboardInterrupt")
        if self._dist is not None and self._dist.broken is None:  # this rank alone: no gather
            self._dist.broken = "interrupted (KeyboardInterrupt) on this rank"
        self._append_log("info", f"interrupted (KeyboardInterrupt) at step {self.step}; stopping")
        if self._optimizer_began:
            self.config = dataclasses.replace(self.config, final_checkpoint=False)
            self._append_log(
                "info",
                f"no final checkpoint: optimizer.step() of step {self.step + 1} had begun, "
                f"so the weights are not those of step {self.step}"
                + (f"; last checkpoint {self.last_checkpoint}" if self.last_checkpoint else ""),
                ok=False,
            )

    def serve_rest(self) -> None:
        """After the loop: serve commands (eval, checkpoint, lr...) until a stop, then end."""
        if self._ended:
            return
        try:
            self._loop(train=False)
        except BaseException as exc:
            self._ended_by(exc)
        self._finish()

    def close(self, timeout: float | None = None) -> None:
        """End the run: from the loop's thread (between steps, or after the loop) at once;
        from another thread by a stop its next boundary applies (see Trainer.close)."""
        if not self._launched:
            self._remove_hooks()
            self._record.close()
            return
        if threading.current_thread() is self._thread or not self._stopping.looping:
            self._finish()
            return
        super().close(stop_grace() if timeout is None else timeout)

    # ------------------------------------------------------------------ inside a boundary

    def _count_step(self, loss: torch.Tensor | float) -> None:
        self.step += 1
        record = self._record
        bad: float | None = None  # a non-finite loss found now
        if isinstance(loss, float):  # a number: nothing to read
            bad = None if math.isfinite(loss) else loss
        elif self._nan_each_step:
            finite, value = faults.finite_on_cpu(loss)
            if not finite:
                bad = value if value is not None else float(loss.float().mean().item())
            if value is not None:
                loss = value  # read once: the record needs no read later
        # Recorded first: the NaN event publishes, which reads it while NAN-PAUSED (a
        # loss recorded after it would be found again by the next read: a second pause).
        pending = record.losses.record(self.step, loss)
        if bad is not None:
            self._found_nonfinite(self.step, bad)
        self._after_step(pending)
        if self.max_steps is not None and self.step >= self.max_steps:
            self._set_finished(f"reached --max-steps {self.max_steps}")

    def _sync_groups(self) -> None:
        """Param groups the user's code added since the last boundary are steered too."""
        added = self._ops.sync_groups()
        if added:
            self._record.views.structure_version += 1
            self._append_log(
                "info",
                f"param group(s) {', '.join(added)} added by the training code at step "
                f"{self.step}; steered as the others",
            )
            self._publish()

    def _serve_boundary(self) -> None:
        """Commands due now; then, while no step may be taken, wait for more."""
        self._apply_pending()
        while not self._control.can_step:
            if self.state in (RunState.FINISHED, RunState.ERROR):
                raise LoopEnds(self._end_reason(), self.state)
            self._idle()
            if self._replay:
                self._apply_replay()

    def _leave(self, exc: BaseException) -> None:
        """A boundary ended by ``exc``: the run ends here (a stop, a journal that cannot
        be written, Ctrl+C while paused), then LoopEnds (KeyboardInterrupt) goes on."""
        if isinstance(exc, LoopEnds):
            raise exc
        self._ended_by(exc)
        self._finish()
        if isinstance(exc, KeyboardInterrupt):
            raise exc
        raise LoopEnds(self._end_reason(), self.state) from None

    def _finish(self) -> None:
        if self._ended:
            return
        self._ended = True
        self._remove_hooks()
        self._end()

    def _remove_hooks(self) -> None:
        for hook in self._hooks:
            hook.remove()

    def _end_reason(self) -> str:
        if self.state == RunState.ERROR and self.error is not None:
            return f"the run failed at step {self.error.step}: {self.error.message}"
        if self.state == RunState.FINISHED:
            last = self._record.tail()
            return last[-1].text if last else f"finished at step {self.step}"
        source = self._stopping.source
        by = f" (from {source})" if source else ""
        return f"stopped at step {self.step}{by}"

    # ------------------------------------------------------------------ what differs

    def _setup(self) -> None:
        # The model stays on its device and in its mode: the user's code owns both.
        self._open_run_files()
        if self._resumed is not None:
            set_rng_state(self._resumed.rng)
            self._append_log(
                "info",
                f"resumed from {self.config.resume} at step {self.step}; the loop "
                f"goes on from steer.start_step = {self.step}",
            )
        for text, ok in self._replay.notes(self.spec.sha256):
            self._append_log("info", text, ok=ok)
        self._record.started()
        self._control.begin()
        with contextlib.suppress(Stopped):
            self._apply_replay()
        self._publish()

    def _evaluate(self, step: int) -> EvalPoint:
        """The user's ``evaluate()`` under model.eval() and no_grad(), RNG forked, the
        model's mode put back; without one, eval is refused."""
        if self._user_evaluate is None:
            raise CommandError(
                "no evaluate= was given to tuiconsole.steer(): there is nothing to evaluate with"
            )
        model = self.model
        modes = [(m, m.training) for m in model.modules()]  # a frozen BatchNorm stays eval
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        point: EvalPoint | None = None
        error: str | None = None
        try:
            with torch.random.fork_rng(devices=devices), torch.no_grad():
                model.eval()
                result = self._user_evaluate()
            point = eval_point(result, step)
        except CommandError as exc:
            error = str(exc)
        except Exception as exc:
            error = f"eval failed: {type(exc).__name__}: {faults.one_line(str(exc), 200)}"
        finally:
            for module, training in modes:  # root first: each module's own mode wins
                if module.training != training:
                    module.train(training)
        d = self._dist
        if d is not None and d.broken is None:
            return D.mean_over_ranks(d, point, error, step)
        if error is not None:
            raise CommandError(error)
        assert point is not None
        return point

    def start(self) -> Trainer:
        raise RuntimeError("an own loop is driven by its boundary(), not start()")

    def run(self) -> Any:
        raise RuntimeError("an own loop is driven by its boundary(), not run()")


def _loss_tensor(loss: Any) -> torch.Tensor | float:
    if isinstance(loss, torch.Tensor):
        if loss.numel() != 1:
            raise TuiconsoleError(
                f"steer.step(loss): the loss must be one number, got a tensor of shape "
                f"{tuple(loss.shape)}"
            )
        return loss.detach()
    if not isinstance(loss, bool) and isinstance(loss, numbers.Real):  # numpy's too
        return float(loss)
    raise TuiconsoleError(
        f"steer.step(loss): the loss must be a tensor or a number, got {type(loss).__name__}"
    )


def _skipped_for_inf(optimizer: torch.optim.Optimizer) -> bool:
    """Did the step skip optimizer.step() for non-finite gradients (AMP's GradScaler
    does, often for the first steps)? Read once per run, at most: the first boundary."""
    grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
    if not grads:
        return False
    values = [g.coalesce().values() if g.is_sparse else g for g in grads]
    return not bool(torch.stack([torch.isfinite(v).all() for v in values]).all())
