"""The one seam between a run and its front-ends.

A front-end (the Textual console, the headless printer, ``attach``) uses only
what :class:`Session` lists. It never holds the model or the optimizer: the
thread that trains owns them. Three sessions implement it: LocalSession (the
run in this process: the headless front-end, tests, the library),
RemoteSession (``attach``: a run in another process, over its socket) and
LaunchSession (the console of ``tuiconsole run``: the run it started).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, Self

from tuiconsole.engine.commands import Command, CommandResult

if TYPE_CHECKING:
    from tuiconsole.engine.snapshot import Snapshot
    from tuiconsole.engine.trainer import RunConfig, Trainer


# What ConsoleApp.run() returns when the user detaches (ctrl+d): its caller then
# calls Session.detach() (the run goes on without this front-end).
DETACHED = "detach"


class Session(Protocol):
    owns_run: bool
    """Leaving this front-end stops the run (a console on the run it started);
    False for ``attach``, where quitting only detaches."""

    can_detach: bool
    """The run can go on without this front-end (:meth:`detach`)."""

    @property
    def disconnected(self) -> bool:
        """The run is out of reach (its process died, the connection was lost)."""
        ...

    @property
    def disconnect_reason(self) -> str | None:
        """Why it is, in a line a user reads (how it died, at which step, what is on disk)."""
        ...

    def snapshot(self) -> Snapshot:
        """The newest snapshot. Never blocks on the trainer; may be ~1 frame old."""
        ...

    def submit(self, command: str | Command, source: str = "ui") -> Future[CommandResult]:
        """Queue a command for the trainer. Parse errors resolve the future at once.

        The future resolves once the trainer applied the command at a step
        boundary (and journaled it). It never raises: errors are results.
        """
        ...

    def wait(self, timeout: float | None = None) -> bool:
        """Block up to ``timeout`` s until training ended (finished, stopped, error)."""
        ...

    def close(self) -> None:
        """Leave: stop the run cleanly if this front-end owns it (journal flushed)."""
        ...

    def detach(self) -> None:
        """Leave the run going (only where :attr:`can_detach`)."""
        ...


class LocalSession:
    """A session around a trainer in this process (its own thread, or this one)."""

    owns_run = True
    can_detach = False
    disconnected = False  # nothing between it and its run can break
    disconnect_reason: str | None = None

    def __init__(self, trainer: Trainer) -> None:
        self._trainer = trainer

    @classmethod
    def from_script(
        cls, path: str | Path, config: RunConfig | None = None, **options: Any
    ) -> LocalSession:
        """Load a training script and wrap a (not yet started) trainer around it.

        ``options`` are RunConfig fields, for callers that don't build a RunConfig.
        """
        from tuiconsole.engine.trainer import RunConfig, Trainer
        from tuiconsole.script import load_script

        config = config or RunConfig(**options)
        spec = load_script(path, seed=config.seed)
        return cls(Trainer(spec, config))

    def start(self) -> LocalSession:
        """Train in a thread of this process (tests, the library API)."""
        self._trainer.start()
        return self

    def run(self) -> None:
        """Train in the calling thread (a training process's main thread) until the end."""
        self._trainer.run()

    @property
    def unfinished(self) -> str | None:
        """Why the run stopped without its last step (a stuck step was abandoned)."""
        return self._trainer.unfinished

    def snapshot(self) -> Snapshot:
        return self._trainer.latest_snapshot()

    def submit(self, command: str | Command, source: str = "ui") -> Future[CommandResult]:
        return self._trainer.submit(command, source)

    def close(self) -> None:
        self._trainer.close()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until training ends (finished, stopped or error)."""
        return self._trainer.wait_done(timeout)

    def detach(self) -> None:
        raise RuntimeError("a run in this process cannot go on without it")


STOP_SIGNALS = ("SIGINT", "SIGTERM", "SIGHUP")


def _stop_signals() -> set[signal.Signals]:
    return {getattr(signal, n) for n in STOP_SIGNALS if hasattr(signal, n)}


def hold_stop_signals() -> None:
    """Hold stop signals (pending, not lost) until a :class:`StopOnSignals` is entered.

    Called before the trainer thread starts: a Ctrl+C in the gap before the
    front-end's handlers are in would raise KeyboardInterrupt in the main thread
    and exit while the trainer thread runs torch code (which can hang the exit,
    with no end record). Threads started meanwhile keep them blocked, so the
    signals always reach the main thread.
    """
    if hasattr(signal, "pthread_sigmask") and threading.current_thread() is threading.main_thread():
        signal.pthread_sigmask(signal.SIG_BLOCK, _stop_signals())


def release_stop_signals() -> None:
    """Undo :func:`hold_stop_signals` (idempotent): pending signals are delivered now."""
    if hasattr(signal, "pthread_sigmask") and threading.current_thread() is threading.main_thread():
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _stop_signals())


class CatchSignals:
    """SIGINT, SIGTERM and SIGHUP while a front-end runs, in the main thread.

    The first one is remembered (:attr:`signum`, :attr:`name`, :attr:`exit_code`
    = 128 + N) and handed to :meth:`fired`; a second Ctrl+C leaves at once with
    ``second_ctrl_c`` on stderr; other repeated signals are ignored, so a stop
    already under way can finish its checkpoint. ``on_signal(signum)`` lets the
    front-end leave its loop (the console exits its app). Stop signals held by
    :func:`hold_stop_signals` are delivered once the handlers are in.
    """

    # None: a second Ctrl+C is ignored like the other repeats (a run with no terminal)
    second_ctrl_c: bytes | None = b"tuiconsole: second Ctrl+C, exiting now (journal is on disk)\n"

    def __init__(
        self,
        on_signal: Callable[[int], None] | None = None,
        signals: tuple[str, ...] = STOP_SIGNALS,
    ) -> None:
        self.on_signal = on_signal
        self.signals = signals
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> Self:
        if threading.current_thread() is not threading.main_thread():
            return self  # Python only delivers signals to the main thread
        for name in self.signals:
            sig = getattr(signal, name, None)
            if sig is not None:
                self._previous[sig] = signal.signal(sig, self._handle)
        if hasattr(signal, "pthread_sigmask"):  # see hold_stop_signals: deliver what waited
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _stop_signals())
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            with contextlib.suppress(ValueError, TypeError):
                signal.signal(sig, handler)
        self._previous.clear()

    @property
    def unfinished(self) -> str | None:
        """Why the run stopped without its last step (a stuck step was abandoned)."""
        return None

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else ""

    @property
    def exit_code(self) -> int | None:
        return None if self.signum is None else 128 + self.signum

    def _handle(self, signum: int, frame: object) -> None:
        if self.signum is not None:
            if signum == signal.SIGINT and self.second_ctrl_c is not None:
                os.write(2, self.second_ctrl_c)
                os._exit(128 + signum)
            return
        self.signum = signum
        self.fired(signum)

    def fired(self, signum: int) -> None:
        """The first signal (in the handler: only queue, set, or hand to a loop)."""
        if self.on_signal is not None:
            self.on_signal(signum)


class StopOnSignals(CatchSignals):
    """Ctrl+C, SIGTERM and SIGHUP (the terminal or SSH connection went away) stop
    the run cleanly: the trainer stops at the next step boundary, writes a final
    checkpoint and flushes the journal and metrics; the process then exits with
    128 + the signal number (130, 143, 129). A second Ctrl+C while stopping exits
    at once (the journal is already on disk: it is fsynced per command).

    A step that never ends (a loader blocked forever) cannot reach the step
    boundary: a watcher thread closes the session, which waits the stop grace
    period (``TUICONSOLE_STOP_GRACE``, 30 s) and then ends the run's files
    without that step (:meth:`Trainer.abandon`), so the process can exit.
    """

    def __init__(
        self,
        session: Session,
        on_signal: Callable[[int], None] | None = None,
        on_abandoned: Callable[[StopOnSignals], None] | None = None,
        signals: tuple[str, ...] = STOP_SIGNALS,
    ) -> None:
        """``on_abandoned``: called (from the watcher thread) once a stuck step was
        given up on, for a front-end whose main thread is the one stuck in it."""
        super().__init__(on_signal, signals)
        self.session = session
        self.on_abandoned = on_abandoned
        self._fired = threading.Event()
        self._leaving = False

    def __enter__(self) -> Self:
        super().__enter__()
        if threading.current_thread() is threading.main_thread():
            # Started here, not in the handler: a signal handler only sets an Event.
            threading.Thread(target=self._watch, name="tuiconsole-stop-watch", daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        super().__exit__(*exc)
        self._leaving = True
        self._fired.set()

    def _watch(self) -> None:
        self._fired.wait()
        if not self._leaving:
            self.session.close()  # waits for the stop; gives up on a stuck step
            if self.unfinished is not None and self.on_abandoned is not None:
                self.on_abandoned(self)

    @property
    def unfinished(self) -> str | None:
        return getattr(self.session, "unfinished", None)

    def asked(self, timeout: float = 0.0) -> bool:
        """Has a signal asked to stop (waiting up to ``timeout`` s for one)?"""
        return self._fired.wait(timeout) and self.signum is not None

    def fired(self, signum: int) -> None:
        # Trainer.submit only parses and puts on a SimpleQueue: safe in a handler.
        self.session.submit("stop", source=f"signal:{signal.Signals(signum).name}")
        self._fired.set()
        super().fired(signum)
