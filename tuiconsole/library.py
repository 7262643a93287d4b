"""The library API: steer a training loop of your own.

::

    import tuiconsole

    steer = tuiconsole.steer(model, optimizer, scheduler=sched, evaluate=my_eval)
    for batch in loader:
        loss = compute(model, batch)
        loss.backward()
        optimizer.step(); sched.step(); optimizer.zero_grad()
        steer.step(loss)  # the step boundary

``steer.step(loss)`` is the one call per step: the commands queued from any
front-end are applied there, in the loop's thread, and journaled before it
returns; the loss is recorded without a host sync. While the run is paused it
blocks there, serving commands. When the run ends (``stop``, ``--max-steps``,
``--nan stop``) it raises :class:`~tuiconsole.errors.StopTraining`, a
``SystemExit``: a plain loop ends there and ``python train.py`` exits without
a traceback (0, or 1 for a failed run), the final checkpoint and the journal's
end record written. ``with tuiconsole.steer(...) as steer:`` swallows it, so
code after the ``with`` block runs.

Run as ``python train.py``, the run is served on a private Unix socket (one
stderr line says how to attach). Under ``tuiconsole run train.py`` the script is
the training process's main program and the console opens on it; ``run``'s
options (``--run-dir``, ``--max-steps``, ``--nan``, ``--replay``, ``--resume``,
``--paused``) then apply, over the keyword arguments given here.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, ParamSpec, Protocol, TypeVar

import torch
from torch import nn

from tuiconsole.engine.config import DEFAULT_LOG_EVERY, DEFAULT_LOG_MIN_INTERVAL, RunConfig
from tuiconsole.engine.ownloop import Evaluate, LoopEnds, OwnLoop
from tuiconsole.engine.rundir import default_run_dir
from tuiconsole.engine.snapshot import RunState
from tuiconsole.errors import StopTraining, TuiconsoleError
from tuiconsole.script import check_optimizer, check_scheduler, max_norm
from tuiconsole.session import LocalSession, StopOnSignals

if TYPE_CHECKING:
    from tuiconsole.engine.snapshot import Snapshot
    from tuiconsole.remote.server import RemoteServer


class Host(Protocol):
    """What runs a library user's script as its main program (``tuiconsole run``)."""

    config: RunConfig
    script: Path

    def started(self, session: LocalSession) -> None:
        """The script began its run: serve it (called in the loop's thread)."""
        ...


@dataclass
class _Hosting:
    host: Host | None = None
    steers: list[Steer] = field(default_factory=list)


_hosting = _Hosting()
P = ParamSpec("P")
R = TypeVar("R")


@contextlib.contextmanager
def hosted(host: Host) -> Iterator[list[Steer]]:
    """While the block runs, :func:`steer` takes its run's options from ``host`` and
    tells it the run began; yields the runs begun (one, for a normal script)."""
    if _hosting.host is not None:
        raise RuntimeError("a host is in place already")
    _hosting.host, _hosting.steers = host, []
    try:
        yield _hosting.steers
    finally:
        _hosting.host = None


def _main_script() -> Path | None:
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    return Path(path).resolve() if path else None


def check_model(model: Any) -> None:
    if not isinstance(model, nn.Module):
        raise TuiconsoleError(
            f"tuiconsole.steer(model, ...): model must be an nn.Module, got {type(model).__name__}"
        )


def _at_caller(fn: Callable[P, R]) -> Callable[P, R]:
    """Invalid use (a TuiconsoleError) is raised at the caller's line: one error, not a
    traceback through tuiconsole's frames."""

    @functools.wraps(fn)
    def at_caller(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except TuiconsoleError as exc:
            raise exc.with_traceback(None) from None

    return at_caller


class Steer:
    """A run steered at the step boundaries of the caller's own loop."""

    def __init__(self, run: OwnLoop, session: LocalSession, hosted: bool) -> None:
        self._run = run
        self.session = session  # the run's Session: for tests and tools (snapshot, submit)
        self._hosted = hosted
        self._server: RemoteServer | None = None
        self._closed = False
        self.ended: StopTraining | None = None  # why the loop must end, once it must
        self._signals: StopOnSignals | None = None  # python train.py: Ctrl+C stops cleanly

    # ------------------------------------------------------------------ the loop's calls

    def step(self, loss: torch.Tensor | float, *, batch: Any = None) -> None:
        """The step boundary: call it once per step, after ``optimizer.step()``.

        ``batch``: the step's batch or its inputs (a tensor, a tuple/list whose first
        tensor is the inputs, a dict with ``input_ids``), for samples/s (its dim 0) and
        tokens/s (integer inputs of 2+ dims); only shapes are read, on a few steps.
        Raises StopTraining once the run has ended (a stop, --max-steps, --nan stop).
        """
        if not self.boundary(loss, batch=batch):
            assert self.ended is not None
            raise self.ended

    @_at_caller
    def boundary(
        self, loss: torch.Tensor | float, *, skipped: bool = False, batch: Any = None
    ) -> bool:
        """The step boundary for a framework's callback: as :meth:`step`, but returns
        False (and sets :attr:`ended`) where ``step`` raises: the loop must end.
        ``skipped``: the framework skipped this step's ``optimizer.step()`` (an fp16
        overflow); without it a first step skipped so is refused as a misuse."""
        try:
            self._run.boundary(loss, skipped=skipped, batch=batch)
        except LoopEnds as ends:
            self.ended = StopTraining(ends.reason, self._exit_code(ends.state))
            return False
        return True

    def _exit_code(self, state: RunState) -> int:
        if state == RunState.ERROR:
            return 1
        stops = self._signals
        return stops.exit_code if stops is not None and stops.exit_code is not None else 0

    def end(self, error: BaseException | None = None) -> None:
        """The loop is over (``error``: it raised that): a loop that ran out ends the
        run as FINISHED, one that raised as ERROR; then, outside ``tuiconsole run``,
        the run is closed (final checkpoint, end record)."""
        self._run.loop_returned(None if isinstance(error, StopTraining) else error)
        self.close()

    def close(self) -> None:
        """End the run now (final checkpoint, the journal's end record), if it has not."""
        if self._closed:
            return
        self._closed = True
        if self._hosted:
            return  # the host serves the run after the script and ends it
        atexit.unregister(self._at_exit)  # it holds the model: let a closed run go
        self._run.close()
        if self._server is not None:
            self._server.close("the run has ended")
        if self._signals is not None:
            self._signals.__exit__(None, None, None)
        if self._run.leads:  # other ranks of a torchrun job print nothing unless they fail
            _say(_ended_line(self._run))

    def leave_if_not_clean(self) -> None:
        """For a framework's callback once its loop is over: a failed run (1) or one a
        signal stopped (130 / 143) leaves with that StopTraining (a SystemExit: that exit
        code, no traceback), as a steered loop of one's own does, not on into the code
        after the framework's call; a clean stop goes on there."""
        if self.ended is not None and self.ended.code != 0:
            raise self.ended

    def serve_rest(self) -> None:
        """After the loop (for a host): serve commands until a front-end ends the run."""
        self._run.serve_rest()

    def _at_exit(self) -> None:
        """``python train.py`` ends (its loop returned, raised, or StopTraining left it)."""
        if not self._closed:
            self.end(getattr(sys, "last_value", None))

    def __enter__(self) -> Steer:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        self.end(exc)
        # A stop goes on after the block; a failed run (1) or a signal's stop (130,
        # 143) leaves with its exit code, as the process would without the block.
        return isinstance(exc, StopTraining) and exc.code == 0

    # ------------------------------------------------------------------ what the loop reads

    @property
    def steps(self) -> int:
        """Steps taken: the step numbers of the journal and the console."""
        return self._run.step

    @property
    def start_step(self) -> int:
        """Where the run goes on: the checkpoint's step after --resume, else 0. A loop
        that resumes skips this many steps (its data) before its first."""
        return self._run.start_step

    @property
    def stopped(self) -> bool:
        """The run has ended (stopped, finished or failed): no more steps."""
        return self._run.state.is_terminal

    @property
    def run_dir(self) -> Path | None:
        return self._run.run_dir

    @property
    def last_checkpoint(self) -> str:
        """The path of the last checkpoint written ("" before the first): a framework's
        callback compares it across a boundary to see that one was written there."""
        return self._run.last_checkpoint

    def clip_gradients(self, parameters: Any = None) -> torch.Tensor | None:
        """Clip the gradients' total norm (``torch.nn.utils.clip_grad_norm_``) to the
        run's live max norm: ``grad_clip=``, changed by ``clip MAX_NORM`` / ``clip off``
        from any front-end. Call it after ``backward()`` (after ``scaler.unscale_(optimizer)``
        under a GradScaler), before ``optimizer.step()``. ``parameters``: default the
        model's. Returns the norm (a tensor on the device: no host sync), or None while
        clipping is off; the snapshot shows it and how often steps were clipped."""
        return self._run.clip_gradients(parameters)

    @property
    def grad_clip(self) -> float | None:
        """The live max norm (None: off), for a loop that clips by itself."""
        return self._run.grad_clip

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        """The optimizer (the object given: ``rebuild`` changes it in place)."""
        return self._run.optimizer

    def snapshot(self) -> Snapshot:
        return self.session.snapshot()


@_at_caller
def steer(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    *,
    scheduler: Any = None,
    evaluate: Evaluate | None = None,
    scheduler_interval: str = "step",
    run_dir: str | Path | None = None,
    max_steps: int | None = None,
    nan: str | None = None,
    paused: bool = False,
    resume: str | Path | None = None,
    replay: str | Path | None = None,
    log_every: int | None = None,
    listen: bool = True,
    scaler: torch.amp.GradScaler | None = None,
    grad_clip: float | None = None,
    signal_every: int | None = None,
) -> Steer:
    """Steer ``optimizer`` (over ``model``'s parameters) from the console, at ``step()``.

    ``scheduler``: an lr scheduler on ``optimizer`` the loop steps itself (lr
    commands keep it in step: its base lrs scale with them); ``scheduler_interval``
    says how often ("step" or "epoch"), for the console's "next lr".
    ``evaluate``: a callable with no arguments returning the eval loss (or a dict
    with "loss" and "accuracy"); ``eval`` runs it under ``model.eval()`` and
    ``torch.no_grad()``, the RNG forked. Without it, ``eval`` is refused.
    The rest are ``tuiconsole run``'s options; under ``tuiconsole run`` its own
    command line decides them. ``listen``: serve the run for ``tuiconsole attach``.
    ``scaler``: the loop's ``torch.amp.GradScaler`` (fp16): its state goes into every
    checkpoint and comes back on ``--resume``, its scale is in the snapshot.
    ``grad_clip``: the max norm :meth:`Steer.clip_gradients` clips to (None: off until a
    ``clip`` command; ``--grad-clip`` under ``tuiconsole run`` wins).
    ``signal_every``: measure the per-group signals (grad norm, update ratio...) every N
    optimizer steps; None: K from a time budget; 0: off (engine/signals.py).
    """
    check_model(model)
    check_optimizer(optimizer, model, "tuiconsole.steer(model, optimizer)")
    check_scheduler(scheduler, optimizer, "tuiconsole.steer(..., scheduler=)")
    if evaluate is not None and not callable(evaluate):
        raise TuiconsoleError(
            f"tuiconsole.steer(..., evaluate=): must be a callable, got {type(evaluate).__name__}"
        )
    if scaler is not None and not isinstance(scaler, torch.amp.GradScaler):
        raise TuiconsoleError(
            "tuiconsole.steer(..., scaler=): must be a torch.amp.GradScaler, got "
            f"{type(scaler).__name__}"
        )
    if grad_clip is not None:
        grad_clip = max_norm("tuiconsole.steer(..., grad_clip=)", grad_clip, TuiconsoleError)
    if scheduler_interval not in ("step", "epoch"):
        raise TuiconsoleError(
            'tuiconsole.steer(..., scheduler_interval=): must be "step" or "epoch", got '
            f"{scheduler_interval!r}"
        )
    host = _hosting.host
    if host is not None:
        if _hosting.steers:
            raise TuiconsoleError(
                "tuiconsole.steer() was called a second time: one run per process"
            )
        config = host.config
        script: Path | None = host.script
    else:
        script = _main_script()
        if paused and not listen:
            raise TuiconsoleError(
                "tuiconsole.steer(..., paused=True, listen=False): nothing could resume "
                "the run (no front-end can reach it before steer() returns); serve it "
                "(listen=True) or start it unpaused"
            )
        config = RunConfig(
            # absolute: the journal names its checkpoints by path, wherever it is read
            run_dir=(
                Path(run_dir)
                if run_dir is not None
                else default_run_dir(script.stem if script else "steer")
            ).absolute(),
            max_steps=max_steps,
            log_every=DEFAULT_LOG_EVERY if log_every is None else log_every,
            log_min_interval=DEFAULT_LOG_MIN_INTERVAL if log_every is None else 0.0,
            # A NaN pause waits for a front-end's `resume`: without a socket, only code
            # in this process could send it, so by default such a run stops instead.
            nan=nan or ("pause" if listen else "stop"),
            start_paused=paused,
            resume=Path(resume) if resume is not None else None,
            replay=Path(replay) if replay is not None else None,
            signal_every=signal_every,
        )
    run = OwnLoop(
        model,
        optimizer,
        scheduler=scheduler,
        evaluate=evaluate,
        config=config,
        path=script if script is not None and script.is_file() else None,
        scheduler_interval=scheduler_interval,
        scaler=scaler,
        grad_clip=grad_clip,
    )
    session = LocalSession(run)
    handle = Steer(run, session, hosted=host is not None)
    run.open()  # the run dir first: one that cannot be written ends here, before serving
    if host is not None:
        _hosting.steers.append(handle)
        host.started(session)
    else:
        if listen and run.leads:  # under torchrun, rank 0 is the run: it alone serves
            from tuiconsole.remote.detach import serve_foreground

            assert config.run_dir is not None
            server = serve_foreground(session, script or Path("<steer>"), config.run_dir, 0.1)
            if server is not None:
                _say(
                    f"steering this run (journal in {config.run_dir}); attach: "
                    f"tuiconsole attach {server.info.id}"
                )
            handle._server = server
        handle._signals = _stop_on_signals(session)
        atexit.register(handle._at_exit)
    try:
        run.begin()
    except LoopEnds as ends:  # stopped while it waited to start (--paused)
        raise StopTraining(ends.reason, handle._exit_code(ends.state)) from None
    return handle


def _stop_on_signals(session: LocalSession) -> StopOnSignals | None:
    """``python train.py``: Ctrl+C and SIGTERM stop the run at its next step boundary
    (final checkpoint; exit 130 / 143), a second Ctrl+C leaves at once, as under
    ``tuiconsole run``. Not where the script set handlers of its own, nor off the
    main thread (Python delivers signals there only)."""
    import signal

    if threading.current_thread() is not threading.main_thread():
        return None
    defaults = {"SIGINT": signal.default_int_handler, "SIGTERM": signal.SIG_DFL}
    ours = tuple(
        name for name, h in defaults.items() if signal.getsignal(getattr(signal, name)) is h
    )
    if not ours:
        return None

    def abandoned(stops: StopOnSignals) -> None:  # a step stuck past the stop grace
        import logging
        import os

        _say(f"stopped by {stops.name}: {session.unfinished}; journal flushed")
        logging.shutdown()
        os._exit(stops.exit_code or 1)

    return StopOnSignals(session, on_abandoned=abandoned, signals=ours).__enter__()


def _say(text: str) -> None:
    with contextlib.suppress(OSError, ValueError):
        print(f"tuiconsole: {text}", file=sys.stderr, flush=True)


def _ended_line(run: OwnLoop) -> str:
    where = f"; last checkpoint {run.last_checkpoint}" if run.last_checkpoint else ""
    return f"{run.state.value.lower()} at step {run.step}{where}"


def steered() -> list[Steer]:
    """The runs :func:`steer` began under the current host (for the host)."""
    return list(_hosting.steers)


__all__ = ["Host", "Steer", "StopTraining", "hosted", "steer", "steered"]
