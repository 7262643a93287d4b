"""Runs that outlive the terminal.

``tuiconsole run SCRIPT --detach`` re-executes itself as a background process
(new session, no terminal, stdio to ``<run_dir>/tuiconsole.log``) that trains,
serves the run on its socket and ignores SIGHUP. The parent waits until that
process serves (so a script error is reported here, exit 2) and returns.

``tuiconsole run SCRIPT`` starts the same process with an owner (remote/launch.py):
detaching its console only tells that process to go on; the console process exits
and the shell's prompt comes back as after any command.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from tuiconsole.engine.journal import world_size_now
from tuiconsole.errors import TuiconsoleError
from tuiconsole.remote.launch import TrainingProcess
from tuiconsole.remote.registry import RunInfo, runtime_dir, socket_path, write_info

if TYPE_CHECKING:
    from tuiconsole.remote.server import RemoteServer
    from tuiconsole.session import LocalSession, StopOnSignals

REMOTE_LOG_NAME = "remote.log"
READY_TIMEOUT = 120.0  # loading a script may build a dataset
DEFAULT_LINGER = 300.0
PRINT_EVERY = 1.0  # seconds between log polls in a background run (no console to feed)


def spawn_detached(
    script: Path,
    run_dir: Path,
    run_id: str,
    options: Sequence[str],
    script_args: Sequence[str] = (),
    *,
    timeout: float = READY_TIMEOUT,
    nproc: int | None = None,
) -> RunInfo:
    """Start the training process of ``run --detach`` (no owner); wait until it serves.

    Raises TuiconsoleError with the child's own message if it exits first
    (a script contract error, say).
    """
    training = TrainingProcess.start(
        script, run_dir, run_id, options, script_args, owner=False, nproc=nproc
    )
    info = training.wait_serving(timeout)
    if info is not None:
        return info
    # still loading after `timeout`: it goes on; report what it will be
    return RunInfo(
        id=run_id,
        pid=training.pid,
        script=str(script),
        run_dir=str(run_dir),
        started=time.time(),
        socket=str(socket_path(run_id)),
        detached=True,
        log=str(training.log_path),
    )


def make_info(
    run_id: str,
    script: Path,
    run_dir: Path,
    *,
    detached: bool,
    decay_factor: float,
    log: Path | None = None,
) -> RunInfo:
    return RunInfo(
        id=run_id,
        pid=os.getpid(),
        script=str(script),
        run_dir=str(run_dir.resolve()),
        started=time.time(),
        socket=str(socket_path(run_id, runtime_dir())),
        detached=detached,
        decay_factor=decay_factor,
        log=str(log) if log else "",
        world_size=world_size_now(),
        launcher=os.getppid() if "TORCHELASTIC_RUN_ID" in os.environ else 0,
    )


def serve_foreground(
    session: LocalSession, script: Path, run_dir: Path, decay_factor: float
) -> RemoteServer | None:
    """Serve a run that trains in a terminal (``--headless``, ``python train.py``) on its
    socket, so ``attach`` reaches it; a failure here never stops the run: it is said on
    stderr in one line and None returned."""
    from tuiconsole.remote.registry import new_run_id
    from tuiconsole.remote.server import RemoteServer, setup_log_file

    try:
        setup_log_file(run_dir / REMOTE_LOG_NAME)
        info = make_info(
            new_run_id(), script.resolve(), run_dir, detached=False, decay_factor=decay_factor
        )
        return RemoteServer(session, info).start()
    except (OSError, TuiconsoleError) as exc:
        with contextlib.suppress(OSError, ValueError):
            print(f"tuiconsole: not attachable from other terminals: {exc}", file=sys.stderr)
        return None


def leave_abandoned(session: LocalSession, server: RemoteServer | None, code: int) -> None:
    """A stop gave up on a step stuck in the main thread: say so and leave now.

    The run's files are ended (``Trainer.abandon``); clients get the final view
    (STOPPED, with what did not finish) and a goodbye; the stuck thread is left
    behind with the process.
    """
    if server is not None:
        server.close(f"the run stopped without its last step: {session.unfinished}")
    with contextlib.suppress(OSError, ValueError):
        print(f"stopped: {session.unfinished}; journal flushed", flush=True)
    logging.shutdown()
    os._exit(code)


def ignore_hangup() -> None:
    with contextlib.suppress(AttributeError, ValueError):
        signal.signal(signal.SIGHUP, signal.SIG_IGN)


class OwnerLink:
    """The training process's end of the owner pipe (see remote/launch.py).

    A thread reads it: ``detach`` marks the run detached (``ls`` shows it as a
    background run from then on); the pipe closing without it means the
    console is gone (it quit, crashed, was killed, or its terminal hung up):
    the run stops cleanly with its final checkpoint, source ``console``. Gone
    while the script still loads, the process leaves as a Ctrl+C would.
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.detached = False
        self.gone = threading.Event()
        self._session: LocalSession | None = None
        self._server: RemoteServer | None = None
        self._lock = threading.Lock()

    def start(self) -> OwnerLink:
        threading.Thread(target=self._read, name="tuiconsole-owner", daemon=True).start()
        return self

    @property
    def attached(self) -> bool:
        """The console that started the run is still there, watching it."""
        return not self.detached and not self.gone.is_set()

    def adopt(self, session: LocalSession, server: RemoteServer) -> None:
        """The run is loaded and served: from now on a gone console stops it."""
        with self._lock:
            self._session, self._server = session, server
            gone = self.gone.is_set() and not self.detached
        if gone:
            session.submit("stop", source="console")  # the loop stops at its first boundary

    def _read(self) -> None:
        buf = b""
        while True:
            try:
                data = os.read(self.fd, 64)
            except InterruptedError:
                continue
            except OSError:
                data = b""
            if not data:
                break
            buf += data
            if b"detach" in buf and not self.detached:
                self._detach()
        with contextlib.suppress(OSError):
            os.close(self.fd)
        with self._lock:
            self.gone.set()
            session = self._session
        if self.detached:
            return
        if session is None:  # still loading the script: leave as Ctrl+C would
            os.kill(os.getpid(), signal.SIGINT)
            return
        session.submit("stop", source="console")
        session.close()  # waits for the stop; gives up on a stuck step (stop grace)
        if session.unfinished is not None:
            leave_abandoned(session, self._server, 1)

    def _detach(self) -> None:
        with self._lock:
            self.detached = True
            server = self._server
        if server is not None:
            info = server.info = replace(server.info, detached=True)
            with contextlib.suppress(OSError):
                write_info(info)  # `ls` now shows it as a background run


class Serving:
    """The training process's threads beside the loop: the log printer and the one
    that decides when the run leaves; :meth:`run` trains in the main thread.

    Once the run ended it stays attachable: while the console that started it
    watches, or (detached) for ``linger`` seconds after the last client left,
    to look at the result; a stopped run leaves as soon as nobody is attached;
    SIGTERM/SIGINT leave at once. The run's log lines go to ``out`` (the log
    file) from a thread.
    """

    def __init__(
        self,
        session: LocalSession,
        server: RemoteServer,
        *,
        linger: float,
        stop: StopOnSignals,
        owner: OwnerLink | None = None,
        out: TextIO | None = None,
    ) -> None:
        from tuiconsole.headless import HeadlessPrinter

        self.session, self.server, self.linger, self.stop = session, server, linger, stop
        self.owner, self.out = owner, out
        self.printer = HeadlessPrinter(session, out) if out is not None else None
        self._leaving = threading.Thread(
            target=self._linger_then_leave, name="tuiconsole-linger", daemon=True
        )

    def start(self) -> Serving:
        threading.Thread(target=self._print_log, name="tuiconsole-log", daemon=True).start()
        self._leaving.start()
        return self

    def _print_log(self) -> None:
        while self.printer is not None and not self.session.wait(PRINT_EVERY):
            self.printer.print_new()

    def _linger_then_leave(self) -> None:
        # A finished (or failed) run's loop idles, still serving eval, checkpoint...:
        # this thread decides when it is time to go, then stops it.
        session, server, owner, stop = self.session, self.server, self.owner, self.stop
        session.wait()
        ended = time.monotonic()
        wait = 0.0 if session.snapshot().status.state.value == "STOPPED" else self.linger
        while not stop.asked():
            if self.printer is not None:
                self.printer.print_new()
            if owner is not None and not owner.detached:
                if owner.gone.is_set():
                    break  # its console left (it waits for our goodbye): so do we
                owner.gone.wait(0.2)  # the console shows the end until its user quits
                continue
            quiet = time.monotonic() - max(ended, server.last_client_left)
            if server.clients == 0 and quiet >= wait:
                break
            stop.asked(0.2)
        session.close()

    def run(self, train: Callable[[], object]) -> int:
        """Train (``train``, in this thread) until the run ends and it is time to leave;
        returns the exit code: 0, 1 if training raised, 128 + N if signal N stopped it."""
        session, server, out = self.session, self.server, self.out
        try:
            train()
            while self._leaving.is_alive():  # in steps: a signal handler must get to run here
                self._leaving.join(0.2)
        finally:
            session.close()
            server.close("the run has ended" if session.wait(0) else "the run's process is exiting")
        snap = self.printer.print_new() if self.printer is not None else session.snapshot()
        if out is not None:
            state = snap.status.state.value.lower()
            print(f"{state} at step {snap.status.step}", file=out, flush=True)
        if snap.status.state.value == "ERROR":
            return 1
        return self.stop.exit_code or 0
