"""What runs in the process that trains: its front-end, and a library user's script.

A front-end here is what sits beside the training loop of ``tuiconsole run``'s
training process (:class:`ChildFront`: the socket server, the log, the owner pipe,
the linger) or of ``--headless`` (:class:`HeadlessFront`: progress lines, stdin
commands, a server for ``attach``). Each starts once the run exists
(:meth:`start`) and then runs the loop in this, the main, thread (:meth:`run`).

A contract script's run exists once the script is loaded; a script that calls
:func:`tuiconsole.steer` (or uses a framework callback) is the process's main
program instead (:func:`run_program`): its run exists once it calls ``steer``,
which starts the front-end from inside the script; after the script returns the
run goes on serving commands (eval, checkpoint...) until the front-end ends it.
"""

from __future__ import annotations

import contextlib
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from tuiconsole.errors import ScriptError, StopTraining, TuiconsoleError

if TYPE_CHECKING:
    from tuiconsole.engine.config import RunConfig
    from tuiconsole.remote.detach import OwnerLink, Serving
    from tuiconsole.remote.server import RemoteServer
    from tuiconsole.session import CatchSignals, LocalSession, StopOnSignals


def uses_library(path: Path) -> bool:
    """The script imports tuiconsole (its API or a framework callback): it is a program
    with a loop of its own, run as ``__main__``, not a contract script. False for a
    file that cannot be read or parsed (loading it says why)."""
    import ast

    try:
        tree = ast.parse(path.read_bytes(), filename=str(path))
    except (OSError, SyntaxError, ValueError):
        return False
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names = [node.module or ""]
        else:
            continue
        if any(name.split(".")[0] == "tuiconsole" for name in names):
            return True
    return False


class Front(Protocol):
    def start(self, session: LocalSession) -> None:
        """The run exists: serve it (threads beside the loop, signal handlers)."""
        ...

    def run(self, train: Callable[[], object]) -> int:
        """Run ``train`` (the loop) in this thread until it is time to leave; the exit code."""
        ...


def leave_script_threads(code: int) -> None:
    """Exit now, without the interpreter's finalization, if any other thread is left.

    A non-daemon thread the script started would keep the process alive (a run
    that has ended would never return the prompt). A daemon thread still inside
    torch code (the loop thread after a stop grace, a loader's thread) is killed
    by finalization mid-call, which aborts the process ("terminate called
    without an active exception", exit -6). The run's files are closed and
    flushed by now, so leaving at once loses nothing.
    """
    import logging
    import os
    import threading

    others = [t for t in threading.enumerate() if t is not threading.main_thread() and t.is_alive()]
    if not others:
        return
    alive = [t for t in others if not t.daemon]
    with contextlib.suppress(OSError, ValueError):
        sys.stdout.flush()
        if alive:
            names = ", ".join(repr(t.name) for t in alive)
            many = len(alive) > 1
            print(
                f"tuiconsole: the run has ended, but the script's thread{'s' if many else ''} "
                f"{names} {'are' if many else 'is'} still running; exiting without waiting "
                f"for {'them' if many else 'it'}",
                file=sys.stderr,
                flush=True,
            )
        sys.stderr.flush()
    logging.shutdown()  # the run dir's remote.log
    os._exit(code)  # the journal and metrics are closed; only those threads are left


def signal_exit(stops: CatchSignals, code: int) -> int:
    """Exit code after a front-end returned: 128+N if a signal stopped the run."""
    if stops.exit_code is None or code == 1:  # a training error wins: look at that
        return code
    unfinished = stops.unfinished
    what = (
        f"{unfinished}, so no final checkpoint was written; journal flushed"
        if unfinished
        else "final checkpoint written, journal and metrics flushed"
    )
    with contextlib.suppress(OSError, ValueError):  # SIGHUP: the terminal may be gone
        print(f"tuiconsole: stopped by {stops.name}; {what}", file=sys.stderr, flush=True)
    return stops.exit_code


class ChildFront:
    """The training process of ``tuiconsole run`` (remote/launch.py): serve, log, linger."""

    def __init__(
        self,
        script: Path,
        run_dir: Path,
        run_id: str | None,
        *,
        decay_factor: float,
        linger: float,
        owner: OwnerLink | None,
        owner_token: str | None,
    ) -> None:
        self.script, self.run_dir, self.run_id = script, run_dir, run_id
        self.decay_factor, self.linger = decay_factor, linger
        self.owner, self.owner_token = owner, owner_token
        self._exit = contextlib.ExitStack()
        self._serving: Serving | None = None

    def start(self, session: LocalSession) -> None:
        from tuiconsole.remote.detach import Serving, ignore_hangup, leave_abandoned, make_info
        from tuiconsole.remote.launch import LOG_NAME
        from tuiconsole.remote.registry import new_run_id
        from tuiconsole.remote.server import RemoteServer, setup_log_file
        from tuiconsole.session import StopOnSignals

        ignore_hangup()
        served: list[RemoteServer] = []  # told the end if a stuck step is abandoned

        def abandoned(stops: StopOnSignals) -> None:
            leave_abandoned(session, served[0] if served else None, stops.exit_code or 143)

        # SIGTERM/SIGINT stop the run (no SIGHUP: there is no terminal); with no one
        # at a terminal, a second Ctrl+C is ignored like any repeat
        stops = StopOnSignals(session, on_abandoned=abandoned, signals=("SIGINT", "SIGTERM"))
        stops.second_ctrl_c = None
        self._exit.enter_context(stops)
        setup_log_file(None)  # stderr is the run's log file here
        info = make_info(
            self.run_id or new_run_id(),
            self.script.resolve(),
            self.run_dir,
            detached=self.owner is None,
            decay_factor=self.decay_factor,
            log=self.run_dir.resolve() / LOG_NAME,
        )
        owner = self.owner
        token = self.owner_token if owner else None
        server = RemoteServer(session, info, owner_token=token).start()
        served.append(server)
        if owner is not None:
            owner.adopt(session, server)
        print(f"run {info.id} (pid {info.pid}) serving on {info.socket}", flush=True)
        self._serving = Serving(
            session, server, linger=self.linger, stop=stops, owner=owner, out=sys.stdout
        ).start()

    def run(self, train: Callable[[], object]) -> int:
        assert self._serving is not None, "start() first"
        with self._exit:
            return self._serving.run(train)


class RankFront:
    """A rank of a torchrun job other than 0: no socket, no files, no output unless it
    fails; it trains, and stops with the others. A signal here (torchrun passes SIGTERM
    on to every rank) asks for a stop, which every rank applies at the same tick."""

    def __init__(self) -> None:
        self._exit = contextlib.ExitStack()
        self._stops: StopOnSignals | None = None
        self._session: LocalSession | None = None

    def start(self, session: LocalSession) -> None:
        from tuiconsole.session import StopOnSignals

        stops = StopOnSignals(session, signals=("SIGINT", "SIGTERM"))
        stops.second_ctrl_c = None
        self._stops = self._exit.enter_context(stops)
        self._session = session

    def run(self, train: Callable[[], object]) -> int:
        assert self._stops is not None and self._session is not None, "start() first"
        with self._exit:
            train()
        status = self._session.snapshot().status
        if status.state.value == "ERROR" and status.error is not None:
            with contextlib.suppress(OSError, ValueError):
                print(f"tuiconsole: training failed: {status.error}", file=sys.stderr)
            return 1
        return self._stops.exit_code or 0  # rank 0 says how the run ended


class HeadlessFront:
    """``--headless``: progress lines, stdin commands, a server for ``attach``."""

    def __init__(self, script: Path, run_dir: Path | None, *, decay_factor: float, listen: bool):
        self.script, self.run_dir = script, run_dir
        self.decay_factor, self.listen = decay_factor, listen
        self._exit = contextlib.ExitStack()
        self._stops: StopOnSignals | None = None
        self._headless: object = None

    def start(self, session: LocalSession) -> None:
        from tuiconsole.headless import HeadlessPrinter, HeadlessRun
        from tuiconsole.session import StopOnSignals, hold_stop_signals, release_stop_signals

        hold_stop_signals()  # until the StopOnSignals is in: none is lost
        # on every way out: a blocked mask would outlive the run and pass to every child
        self._exit.callback(release_stop_signals)
        server = None
        if self.listen and self.run_dir is not None:
            from tuiconsole.remote.detach import serve_foreground

            server = serve_foreground(session, self.script, self.run_dir, self.decay_factor)
        if server is not None:
            print(
                f"tuiconsole: attach from another terminal: tuiconsole attach {server.info.id}",
                file=sys.stderr,
            )
            self._exit.callback(server.close, "the run has ended")
        stdin = None if sys.stdin is None or sys.stdin.closed else sys.stdin
        printer = HeadlessPrinter(session)

        def abandoned(stops: StopOnSignals) -> None:
            # this thread's stop gave up on a step stuck in the main thread: leave now
            import logging
            import os

            code = signal_exit(stops, printer.finish())
            logging.shutdown()
            os._exit(code)

        self._stops = self._exit.enter_context(StopOnSignals(session, on_abandoned=abandoned))
        self._headless = HeadlessRun(session, stdin=stdin, printer=printer).start()

    def run(self, train: Callable[[], object]) -> int:
        from tuiconsole.headless import HeadlessRun

        headless, stops = self._headless, self._stops
        assert isinstance(headless, HeadlessRun) and stops is not None, "start() first"
        with self._exit:
            code = headless.run(train)
        return signal_exit(stops, code)

    def abort(self) -> None:
        """The run could not start: undo what start() did."""
        self._exit.close()


# ----------------------------------------------------------------------------- own programs


class ProgramHost:
    """The host of a script that calls :func:`tuiconsole.steer` (library.Host)."""

    def __init__(self, config: RunConfig, script: Path, front: Front) -> None:
        self.config, self.script, self.front = config, script, front

    def started(self, session: LocalSession) -> None:
        self.front.start(session)


def run_program(script: Path, argv: Sequence[str], config: RunConfig, front: Front) -> int:
    """Run ``script`` as this process's main program (``__name__ == "__main__"``,
    ``sys.argv = [script, *argv]``); its :func:`tuiconsole.steer` run is served by
    ``front``. Returns the exit code. A script that fails before its run began is a
    ScriptError (one line), as for a contract script that fails to load."""
    from tuiconsole.library import hosted
    from tuiconsole.script import run_main

    host = ProgramHost(config, script, front)
    error: BaseException | None = None
    with hosted(host) as steers:
        try:
            run_main(script, argv, seed=config.seed)
        except StopTraining:
            pass
        except SystemExit as exc:
            if exc.code not in (None, 0) or not steers:
                error = exc
        except BaseException as exc:  # the script's own failure: the run's error
            error = exc
    if not steers:
        if isinstance(error, KeyboardInterrupt):
            raise error  # as a Ctrl+C while a contract script loads
        raise ScriptError(_never_steered(script, error))
    steer = steers[0]
    if error is not None and not isinstance(error, KeyboardInterrupt):
        with contextlib.suppress(OSError, ValueError):  # the run's log: the whole traceback
            traceback.print_exception(error, file=sys.stderr)
    steer.end(error)
    return front.run(steer.serve_rest)


def _never_steered(script: Path, error: BaseException | None) -> str:
    from tuiconsole.script import raised_at

    if error is None:
        return (
            f"{script}: the script imports tuiconsole but never called tuiconsole.steer() "
            "(nor started a fit with a tuiconsole callback), so there was no run to steer"
        )
    if isinstance(error, SystemExit):
        return f"{script}: the script called exit({error.code}) before its run began"
    if isinstance(error, TuiconsoleError):  # tuiconsole.steer() refused: its own line
        return f"{script}{raised_at(error, script.resolve())}: {error}"
    return (
        f"{script}{raised_at(error, script.resolve())}: the script raised "
        f"{type(error).__name__} before its run began: {error}"
    )
