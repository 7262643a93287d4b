"""Runs that outlive the terminal.

``tuiconsole run SCRIPT --detach`` re-executes itself as a background process
(new session, no terminal, stdio to ``<run_dir>/tuiconsole.log``) that trains,
serves the run on its socket and ignores SIGHUP. The parent waits until that
process serves (so a script error is reported here, exit 2) and returns.

A foreground run can be detached too: :func:`continue_in_background` moves its
output to the log file, gives the shell its prompt back and keeps the process
serving after the console quits.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from tuiconsole.errors import TuiconsoleError
from tuiconsole.remote.registry import RunInfo, read_info, runtime_dir, socket_path, write_info

if TYPE_CHECKING:
    from tuiconsole.remote.server import RemoteServer
    from tuiconsole.session import LocalSession, Session

LOG_NAME = "tuiconsole.log"
REMOTE_LOG_NAME = "remote.log"
READY_TIMEOUT = 120.0  # loading a script may build a dataset
DEFAULT_LINGER = 300.0
PRINT_EVERY = 1.0  # seconds between log polls in a background run (no console to feed)


def spawn_detached(
    script: Path,
    run_dir: Path,
    run_id: str,
    options: Sequence[str],
    *,
    timeout: float = READY_TIMEOUT,
) -> RunInfo:
    """Start ``tuiconsole run SCRIPT --detached-child ...`` in the background; wait until it serves.

    Raises TuiconsoleError with the child's own message if it exits first
    (a script contract error, say).
    """
    from tuiconsole.engine.rundir import open_private, prepare_run_dir

    prepare_run_dir(run_dir)  # 0700, the user's own: the log holds what the script prints
    log_path = run_dir / LOG_NAME
    info_path = socket_path(run_id).with_suffix(".json")
    cmd = [
        sys.executable,
        "-m",
        "tuiconsole",
        "run",
        str(script),
        "--detached-child",
        "--run-id",
        run_id,
        "--run-dir",
        str(run_dir),
        *options,
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with os.fdopen(open_private(log_path, "the run log", os.O_WRONLY | os.O_APPEND), "ab") as log:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # no controlling terminal: a hangup can't reach it
            close_fds=True,
            env=env,
        )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = read_info(info_path) if info_path.exists() else None
        if info is not None and info.pid == proc.pid:
            return info
        code = proc.poll()
        if code is not None:
            raise TuiconsoleError(_failure(log_path, code))
        time.sleep(0.05)
    return RunInfo(
        id=run_id,
        pid=proc.pid,
        script=str(script),
        run_dir=str(run_dir),
        started=time.time(),
        socket=str(socket_path(run_id)),
        detached=True,
        log=str(log_path),
    )


def _failure(log_path: Path, code: int) -> str:
    """The child's one-line error (it prints `tuiconsole: ...`), else the log's tail."""
    try:
        lines = [ln for ln in log_path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        lines = []
    for line in reversed(lines[-50:]):
        if line.startswith("tuiconsole: "):
            return line.removeprefix("tuiconsole: ")
    tail = " | ".join(lines[-3:]) or "no output"
    return f"the background run exited with code {code}: {tail} (log: {log_path})"


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
    )


class StopRequest:
    """SIGTERM/SIGINT in a background run: stop training cleanly, then exit at once.

    The run gets a ``stop`` command journaled as ``signal:SIGTERM`` (like a
    foreground run); the process does not linger for attached clients.
    """

    def __init__(self, session: Session | None = None) -> None:
        self.session = session
        self.event = threading.Event()

    def install(self) -> StopRequest:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: object) -> None:
        if self.event.is_set():
            return
        self.event.set()
        if self.session is not None:  # submit only parses and queues: safe in a handler
            self.session.submit("stop", source=f"signal:{signal.Signals(signum).name}")

    def is_set(self) -> bool:
        return self.event.is_set()


def ignore_hangup() -> None:
    with contextlib.suppress(AttributeError, ValueError):
        signal.signal(signal.SIGHUP, signal.SIG_IGN)


def release_terminal_signals() -> None:
    """Drop the job-control handlers a console left behind.

    Textual installs SIGTSTP/SIGCONT handlers and does not remove them when the
    app exits; the SIGCONT that comes with a closing terminal would then call
    into a dead app and crash the process that is still training.
    """
    for name in ("SIGTSTP", "SIGCONT", "SIGWINCH", "SIGTTIN", "SIGTTOU"):
        sig = getattr(signal, name, None)
        if sig is not None:
            with contextlib.suppress(ValueError, OSError):
                signal.signal(sig, signal.SIG_DFL)


def serve_until_done(
    session: LocalSession,
    server: RemoteServer,
    *,
    linger: float,
    stop: StopRequest,
    out: TextIO | None = None,
) -> int:
    """Keep the run served until it ends, then while clients watch or ``linger`` s pass.

    A run that finished or failed stays attachable for ``linger`` seconds after
    the last client left (to look at the result); a stopped one leaves as soon
    as nobody is attached; SIGTERM/SIGINT leave at once.

    Prints the run's log lines to ``out`` (the log file). Returns the exit code:
    0, or 1 if training raised.
    """
    from tuiconsole.headless import HeadlessPrinter

    printer = HeadlessPrinter(session, out) if out is not None else None
    try:
        while not stop.is_set() and not session.wait(PRINT_EVERY):
            if printer is not None:
                printer.print_new()
        ended = time.monotonic()
        if session.snapshot().status.state.value == "STOPPED":
            linger = 0.0  # stopped on purpose: leave once nobody watches
        while not stop.is_set():
            if printer is not None:
                printer.print_new()
            quiet = time.monotonic() - max(ended, server.last_client_left)
            if server.clients == 0 and quiet >= linger:
                break
            stop.event.wait(0.2)
    finally:
        session.close()
        server.close("the run has ended" if session.wait(0) else "the run's process is exiting")
    snap = printer.print_new() if printer is not None else session.snapshot()
    if out is not None:
        print(f"{snap.status.state.value.lower()} at step {snap.status.step}", file=out, flush=True)
    return 1 if snap.status.state.value == "ERROR" else 0


def redirect_stdio(log_path: Path) -> None:
    """Point fds 0/1/2 away from the terminal (so a closed terminal can't break writes)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    devnull = os.open(os.devnull, os.O_RDONLY)
    log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(devnull, 0)
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    os.close(devnull)
    os.close(log_fd)


def continue_in_background(
    session: LocalSession, server: RemoteServer, *, linger: float = DEFAULT_LINGER
) -> int:
    """The console of a foreground run detached: keep training, serve, survive hangups.

    No longer needs the terminal: closing it or losing SSH does not stop the run. When
    it is an interactive shell's foreground job, the shell gets its prompt back (as after
    ctrl+z and ``bg``); otherwise the process simply goes on. Attach from anywhere.
    """
    log_path = Path(server.info.run_dir) / LOG_NAME
    info = server.info = replace(server.info, detached=True, log=str(log_path))
    with contextlib.suppress(OSError):
        write_info(info)  # `ls` now shows it as a background run
    release_terminal_signals()  # signals first: the terminal may close as soon as we say so
    ignore_hangup()
    stop = StopRequest(session).install()
    to_background = owns_the_terminal()
    how_to_stop = (
        "Your prompt is back (the shell may say 'Stopped': the run resumes at once). Stop "
        f"it with `tuiconsole attach {info.id}` then `:stop`, or `kill {os.getpid()}` (both "
        "write a final checkpoint)."
        if to_background
        else "You can close this terminal: the run ignores the hangup (Ctrl+C here stops it)."
    )
    with contextlib.suppress(OSError):
        print(
            f"detached: run {info.id} goes on in the background (pid {os.getpid()}).\n"
            f"  attach:  tuiconsole attach {info.id}\n"
            f"  output:  {log_path}\n{how_to_stop}",
            flush=True,
        )
    redirect_stdio(log_path)
    if to_background:
        hand_back_the_prompt()
    return serve_until_done(session, server, linger=linger, stop=stop, out=sys.stdout)


CONT_AFTER_S = 0.3  # how long the job stays stopped: the shell must see the stop first
_CONT_HELPER = (
    "import os, signal, sys, time; time.sleep(float(sys.argv[1])); "
    "os.killpg(int(sys.argv[2]), signal.SIGCONT)"
)


def owns_the_terminal() -> bool:
    """Is this process group the foreground job of the terminal on stdin?"""
    try:
        return os.isatty(0) and os.tcgetpgrp(0) == os.getpgrp()
    except OSError:
        return False


def hand_back_the_prompt() -> None:
    """Turn this foreground job into a running background job, as ctrl+z then ``bg`` do.

    A shell waits for its foreground job until the job exits or stops. So a helper in a
    session of its own waits CONT_AFTER_S and sends SIGCONT to this process group (our
    DataLoader workers included), and the group stops itself with SIGTSTP: the shell
    sees the stop and prints its prompt, the SIGCONT resumes the run, and the shell
    counts the job as running in the background. Where nobody does job control (the
    process group is orphaned), the kernel discards the SIGTSTP and nothing stops.
    If the helper cannot start, nothing is stopped (the job stays in the foreground).
    """
    pgid = os.getpgrp()
    try:
        helper = subprocess.Popen(
            [sys.executable, "-c", _CONT_HELPER, str(CONT_AFTER_S), str(pgid)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # not in our group: it must not stop with it
        )
    except OSError:
        return  # never stop without someone to continue us
    threading.Thread(target=helper.wait, name="tuiconsole-cont", daemon=True).start()
    os.killpg(pgid, signal.SIGTSTP)
