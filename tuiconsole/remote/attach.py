"""`tuiconsole attach` and `tuiconsole ls`: front-ends over a RemoteSession.

The console is the same ConsoleApp `tuiconsole run` shows (the CLI passes it
in); it only sees a Session. Without a terminal (or with --headless) the run's
log is streamed as text and stdin lines are sent as commands. Either way,
leaving only detaches.
"""

from __future__ import annotations

import dataclasses
import os
import stat
import sys
import threading
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TextIO

from tuiconsole.remote.client import AttachError, RemoteSession
from tuiconsole.remote.registry import RunEntry, RunInfo, live_runs, resolve_run

BACKLOG = 20  # log lines shown when a text stream attaches
POLL = 0.2


def attach(
    query: str | None,
    *,
    console: Callable[[RemoteSession, RunInfo], object] | None = None,
    refresh_hz: float = 10.0,
    stdin: TextIO | None = None,
    out: TextIO = sys.stdout,
    read_only: bool = False,
) -> int:
    """Attach to a run (id, id prefix, run dir, socket path; None: the newest).

    ``console(session, info)`` runs a console on it (the CLI picks it); without
    one the log is streamed as text. A socket path is for a socket forwarded
    from another host (``ssh -L /tmp/run.sock:/tmp/tuiconsole-<uid>/<id>.sock
    host``). ``read_only``: watch only; the run's server refuses this client's
    commands. Returns the exit code.
    """
    if query and _is_socket(query):
        session = RemoteSession(query, rate=refresh_hz, read_only=read_only)
        info = RunInfo.from_dict({**session.run, "socket": query})
    else:
        info = resolve_run(query)
        session = RemoteSession(info, rate=refresh_hz, read_only=read_only)
    try:
        if console is not None:
            console(session, info)
        else:
            stream(session, stdin=stdin, out=out)
    except KeyboardInterrupt:
        pass
    finally:
        session.close()
    print(_goodbye(session, info), file=sys.stderr, flush=True)
    lost = session.disconnected and not session.snapshot().status.state.is_terminal
    return 1 if lost else 0


def _is_socket(path: str) -> bool:
    try:
        return stat.S_ISSOCK(os.stat(path).st_mode)
    except OSError:
        return False


def _goodbye(session: RemoteSession, info: RunInfo) -> str:
    state = session.snapshot().status.state
    if session.disconnected and not state.is_terminal:
        return f"lost the connection to run {info.id}: {session.disconnect_reason}"
    if state.is_terminal:
        return f"run {info.id} is {state.value.lower()}; detached"
    return f"detached from run {info.id}; it goes on (tuiconsole attach {info.id})"


def stream(session: RemoteSession, *, stdin: TextIO | None = None, out: TextIO) -> None:
    """Print the run's log as it grows; send stdin lines as commands; until it ends."""
    if stdin is not None and not session.read_only:
        threading.Thread(target=_send_lines, args=(session, stdin, out), daemon=True).start()
    snap = session.snapshot()
    how = "read-only" if session.read_only else "commands on stdin"
    print(
        f"attached to run {session.run_id} ({snap.status.script}, {snap.status.state.value}, "
        f"step {snap.status.step}); {how}, ctrl+c detaches",
        file=out,
        flush=True,
    )
    last = snap.log[-BACKLOG - 1].seq if len(snap.log) > BACKLOG else 0
    while True:
        ended = session.wait(POLL)
        snap = session.snapshot()
        for entry in snap.log:
            if entry.seq > last:
                print(format_entry(entry.kind, entry.text, entry.ok, entry.source), file=out)
                last = entry.seq
        out.flush()
        if ended:
            return


def format_entry(kind: str, text: str, ok: bool, source: str) -> str:
    if kind == "command":
        tag = f"[{source}] " if source else ""
        return f"{tag}{text}" if ok else f"{tag}error: {text}"
    if kind == "error":
        return f"ERROR {text}"
    return text


def _send_lines(session: RemoteSession, stdin: TextIO, out: TextIO) -> None:
    for line in stdin:
        if line.strip() and not line.lstrip().startswith("#"):
            session.submit(line.strip(), source="stdin")


# ---------------------------------------------------------------------- ls


def probe(info: RunInfo, timeout: float = 2.0) -> RunEntry:
    """Ask a run's server for its state, step and loss (one lite snapshot)."""
    try:
        session = RemoteSession(info, timeout=timeout, lite=True)
    except AttachError as exc:
        return RunEntry(info, error=str(exc))
    try:
        snap = session.snapshot()
        clients = session.run.get("clients")
        return RunEntry(
            info,
            state=snap.status.state.value,
            step=snap.status.step,
            loss=snap.loss_last,
            clients=clients if isinstance(clients, int) else None,
            optimizer=snap.optimizer_state(),
            telemetry=dataclasses.asdict(snap.telemetry),
            step_view=dataclasses.asdict(snap.step_view) if snap.step_view else None,
            signals=[
                {k: v for k, v in dataclasses.asdict(s).items() if not k.endswith("_history")}
                for s in snap.signals
            ],
            signal_every=snap.signal_every,
        )
    finally:
        session.close()


def list_runs() -> list[RunEntry]:
    return [probe(info) for info in live_runs()]


def format_table(entries: list[RunEntry]) -> str:
    if not entries:
        return "no live runs (start one with `tuiconsole run SCRIPT --detach`)"
    rows = [("ID", "SCRIPT", "STATE", "STEP", "LOSS", "ATTACHED", "STARTED", "PID", "RUN DIR")]
    for e in entries:
        i = e.info
        rows.append(
            (
                i.id,
                Path(i.script).name,
                e.state if not e.error else "UNREACHABLE",
                "" if e.step is None else str(e.step),
                "" if e.loss is None else f"{e.loss:.4g}",
                "" if e.clients is None else str(e.clients),
                datetime.fromtimestamp(i.started).strftime("%Y-%m-%d %H:%M:%S"),
                str(i.pid) + ("" if i.detached else "*"),
                i.run_dir,
            )
        )
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows
    ]
    if any(not e.info.detached for e in entries):
        lines.append(
            "* a foreground run: its process runs in a terminal (console, --headless, python)"
        )
    return "\n".join(lines)
