"""Plain-text front-end: progress lines on stdout, commands from stdin lines.

A client of the Session like the console: it polls snapshots and prints the
log entries it has not printed yet, and submits each stdin line as a command
in the same grammar.
"""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Callable
from typing import TextIO

from tuiconsole.engine.snapshot import LogEntry, RunState, Snapshot
from tuiconsole.session import Session

POLL_SECONDS = 0.2


def _format(entry: LogEntry, snap: Snapshot) -> str:
    if entry.kind == "metrics":
        return f"{entry.text} | {snap.status.steps_per_sec:.1f} steps/s"
    if entry.kind == "command":
        tag = f"[{entry.source}] " if entry.source else ""
        return f"{tag}{entry.text}" if entry.ok else f"{tag}error: {entry.text}"
    if entry.kind == "error":
        return f"ERROR {entry.text}"
    return entry.text


def _say(text: str, out: TextIO) -> None:
    """Print, unless the terminal is gone (SIGHUP) or the stream closed: the run
    must still stop cleanly and write its checkpoint when nobody can read this."""
    with contextlib.suppress(OSError, ValueError):
        print(text, file=out, flush=True)


def _read_commands(session: Session, stream: TextIO) -> None:
    for line in stream:
        if line.strip() and not line.lstrip().startswith("#"):
            session.submit(line, source="stdin")


class HeadlessPrinter:
    def __init__(self, session: Session, out: TextIO = sys.stdout) -> None:
        self.session = session
        self.out = out
        self._last_seq = 0

    def finish(self) -> int:
        """The last log lines and the final line; the exit code (0 ok, 1 error)."""
        snap = self.print_new()
        _say(final_line(snap), self.out)
        return 1 if snap.status.state == RunState.ERROR else 0

    def print_new(self) -> Snapshot:
        snap = self.session.snapshot()
        for entry in snap.log:
            if entry.seq > self._last_seq:
                _say(_format(entry, snap), self.out)
                self._last_seq = entry.seq
        return snap


class HeadlessRun:
    """The threads beside a headless run's loop: the printer, and the stdin reader
    once the run has started (one that can't, for its run dir..., must not leave a
    thread behind that reads the terminal)."""

    def __init__(
        self,
        session: Session,
        *,
        stdin: TextIO | None = None,
        printer: HeadlessPrinter | None = None,
    ) -> None:
        self.session, self.stdin = session, stdin
        self.printer = printer or HeadlessPrinter(session)
        self._reading = False
        self._beside = threading.Thread(
            target=self._print_until_done, name="tuiconsole-print", daemon=True
        )

    def start(self) -> HeadlessRun:
        self._beside.start()
        return self

    def _read_once_started(self, snap: Snapshot) -> None:
        if self.stdin is not None and not self._reading and snap.status.state != RunState.STARTING:
            self._reading = True
            threading.Thread(
                target=_read_commands, args=(self.session, self.stdin), daemon=True
            ).start()

    def _print_until_done(self) -> None:
        self._read_once_started(self.printer.print_new())
        while not self.session.wait(POLL_SECONDS):
            self._read_once_started(self.printer.print_new())
        self.session.close()  # a finished run's loop idles until asked to stop

    def run(self, train: Callable[[], object]) -> int:
        """Run ``train`` (the loop) in this thread; the exit code (0 ok, 1 error)."""
        try:
            train()
        finally:
            self.session.close()  # stop (if still running), final checkpoint, files flushed
            self._beside.join(POLL_SECONDS * 5)
        return self.printer.finish()


def run_headless(
    session: Session,
    train: Callable[[], object],
    *,
    stdin: TextIO | None = None,
    printer: HeadlessPrinter | None = None,
) -> int:
    """Run ``train`` (the training loop) in this thread, the process's main thread,
    while a thread beside it prints progress and another reads commands from
    ``stdin``. Returns the process exit code (0 ok, 1 error)."""
    return HeadlessRun(session, stdin=stdin, printer=printer).start().run(train)


def final_line(snap: Snapshot) -> str:
    """The one line a run ends with (headless, and after the console closes)."""
    status = snap.status
    if status.state == RunState.ERROR and status.error is not None:
        return f"training failed: {status.error}"
    return (
        f"{status.state.value.lower()} at step {status.step}"
        + (f" (epoch {status.epoch})" if status.epoch else "")
        + (f", loss {snap.loss_last:.4g}" if snap.loss_last is not None else "")
        + (f"; run dir {snap.run_dir}" if snap.run_dir else "")
    )
