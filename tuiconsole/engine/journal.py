"""journal.jsonl and metrics.jsonl: what happened, in order, on disk.

The journal gets a header line and then one line per command, written and
fsynced before the next training step, so even ``kill -9`` leaves valid JSONL
up to the last applied command. Replay reads it back.

This module is the one place that defines both files' records: the builders
below (``header_record`` ... ``end_record``; ``train_metrics`` ...) are the only
code that makes them, and the reader (:func:`read_sessions`) sits beside them.
Each record is a flat JSON object whose ``type`` says which kind it is.

journal.jsonl, in order: one ``header`` per process that wrote to it (a resumed
run appends a new one), then ``command``, ``undo`` and ``nan`` records as they
happen, ``lrfind`` records (an lr range test's result: not a change, never
replayed), at most one ``error``, and one ``end``. metrics.jsonl: ``train``,
``eval`` and ``nan`` records.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from tuiconsole.engine.rundir import StorageError, open_private, prepare_run_dir, storage_error
from tuiconsole.engine.snapshot import NanEvent
from tuiconsole.errors import TuiconsoleError

JOURNAL_VERSION = 1

Record = dict[str, Any]

# The record types (each record's "type").
HEADER, COMMAND, UNDO, NAN, ERROR, END = "header", "command", "undo", "nan", "error", "end"
LRFIND = "lrfind"  # an lr range test's result (engine/lrfind.py); replay skips it
TRAIN, EVAL = "train", "eval"  # metrics.jsonl (and NAN)


# --------------------------------------------------------------------------- records


def header_record(
    *,
    script: str | None,
    sha256: str | None,
    seed: int,
    torch_version: str,
    device: str,
    optimizer: str,
    scheduler: str | None,
    groups: list[Record],
    optimizer_state: Any,
    nan: str,
    resumed_from: str | None = None,
    resumed_step: int | None = None,
    world_size: int = 1,
    step: Record | None = None,
) -> Record:
    """A session's first line: what ran, where, and the whole optimizer at its start
    (``step``: how steps are taken, engine/step.py, when more than plain)."""
    record: Record = {
        "type": HEADER,
        "version": JOURNAL_VERSION,
        "time": time.time(),
        "script": script,
        "sha256": sha256,
        "seed": seed,
        "torch": torch_version,
        "device": device,
        "optimizer": optimizer,
        "scheduler": scheduler,
        "groups": groups,
        # The same whole-optimizer view as the snapshot and `ls --json`: every
        # hyper-parameter, each group's state, the scheduler's step and next lrs.
        "optimizer_state": optimizer_state,
        "nan": nan,
    }
    if world_size > 1:  # torchrun: the ranks that trained it (rank 0 journals)
        record["world_size"] = world_size
    if step is not None:  # amp, grad_clip, accumulate, compile as the session began
        record["step"] = step
    if resumed_from is not None:
        record |= {"resumed_from": resumed_from, "resumed_step": resumed_step}
    return record


def command_record(
    *, step: int, source: str, cmd: str, ok: bool, result: str, groups: list[Record]
) -> Record:
    """A command as applied (or refused) at ``step``, and every group after it."""
    return {
        "type": COMMAND,
        "step": step,
        "time": time.time(),
        "source": source,
        "cmd": cmd,
        "ok": ok,
        "result": result,
        "groups": groups,
    }


def undo_record(*, step: int, commands: Sequence[str], error: str, groups: list[Record]) -> Record:
    """Commands taken back because the first optimizer.step() after them failed cleanly."""
    return {
        "type": UNDO,
        "step": step,
        "time": time.time(),
        "commands": list(commands),
        "error": error,
        "groups": groups,
    }


def nan_record(event: NanEvent, action: str) -> Record:
    """A non-finite loss: the step, its value (as repr: JSON has no NaN), what was done
    (``--nan``), and the lrs it happened at."""
    record: Record = {
        "type": NAN,
        "step": event.step,
        "time": time.time(),
        "loss": repr(event.loss),
        "action": action,
        "skipped": event.skipped,
        "detected_at": event.detected_at,
        "lrs": dict(event.lrs),
    }
    if event.rank is not None:  # torchrun: whose loss it was
        record["rank"] = event.rank
    return record


def lrfind_record(
    *,
    step: int,
    state: str,
    target: str,
    lr_from: float,
    lr_to: float,
    steps: int,
    points: Sequence[tuple[float, float]],
    suggestion: float | None,
    rule: str,
    message: str,
) -> Record:
    """An lr range test at ``step`` (state: done, cancelled, failed): every (lr, loss)
    point, the suggested lr and its rule. The run was put back as it was, so this is
    not a change and a replay skips it."""
    return {
        "type": LRFIND,
        "step": step,
        "time": time.time(),
        "state": state,
        "target": target,
        "from": lr_from,
        "to": lr_to,
        "steps": steps,
        "lrs": [lr for lr, _ in points],
        "losses": [loss for _, loss in points],
        "suggestion": suggestion,
        "rule": rule,
        "message": message,
    }


def error_record(
    *, step: int, error: str, message: str, phase: str | None, checkpoint: str | None
) -> Record:
    """The run failed at ``step`` (``phase``: how far that step got)."""
    return {
        "type": ERROR,
        "step": step,
        "time": time.time(),
        "error": error,
        "message": message,
        "phase": phase,
        "checkpoint": checkpoint,
    }


def end_record(
    *,
    step: int,
    state: str,
    checkpoint: str | None,
    unfinished_step: int | None = None,
    unfinished_phase: str | None = None,
) -> Record:
    """A session's last line. ``unfinished_*``: a stop that gave up on a stuck step
    (or a slow final checkpoint: step None)."""
    record: Record = {
        "type": END,
        "step": step,
        "time": time.time(),
        "state": state,
        "checkpoint": checkpoint,
    }
    if unfinished_phase is not None:
        record["unfinished"] = {"step": unfinished_step, "phase": unfinished_phase}
    return record


def train_metrics(
    *,
    step: int,
    epoch: int,
    loss: float,
    loss_mean: float,
    lr: Mapping[str, float],
    time: float,
    grad_norm: Mapping[str, float | None] | None = None,
    update_ratio: Mapping[str, float | None] | None = None,
) -> Record:
    """metrics.jsonl: the loss at ``step``, the mean since the last record, each group's
    lr, and the wall-clock time (s since the epoch) the record was made: rates per step.
    With the signals on (engine/signals.py), each group's latest ``grad_norm`` and
    ``update_ratio`` too, shaped as ``lr`` (null: not measured yet)."""
    record: Record = {
        "type": TRAIN,
        "step": step,
        "epoch": epoch,
        "loss": loss,
        "loss_mean": loss_mean,
        "lr": dict(lr),
        "time": time,
    }
    if grad_norm is not None:
        record["grad_norm"] = dict(grad_norm)
    if update_ratio is not None:
        record["update_ratio"] = dict(update_ratio)
    return record


def eval_metrics(*, step: int, loss: float, accuracy: float | None) -> Record:
    return {"type": EVAL, "step": step, "loss": loss, "accuracy": accuracy}


def nan_metrics(*, step: int, loss: float) -> Record:
    return {"type": NAN, "step": step, "loss": loss}


# --------------------------------------------------------------------------- writers


class JsonlWriter:
    """Append-only JSONL, one ``os.write`` per record (no Python buffer to flush twice).

    The file is opened 0600 without following a symlink (see rundir.open_private).
    A failed write (disk full, read-only, I/O error) cuts the file back to its last
    whole line, closes it and raises a StorageError once; later writes do nothing,
    so the failure and finish paths can still run.
    """

    what = "the file"

    def __init__(self, path: Path, *, fsync: bool) -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise storage_error(self.what, path.parent, exc) from None
        self.path = path
        self._fsync = fsync
        self.failed: StorageError | None = None
        self._fd: int | None = open_private(path, self.what, os.O_WRONLY | os.O_APPEND)
        self._size = os.fstat(self._fd).st_size
        # The loop thread writes; a stop that gives up on a stuck step writes the
        # last records from another thread (Trainer.abandon): whole lines only.
        self._lock = threading.RLock()

    def write(self, record: Record) -> None:
        with self._lock:
            self._write(record)

    def _write(self, record: Record) -> None:
        if self._fd is None:
            return
        line = (json.dumps(record, allow_nan=True) + "\n").encode("utf-8")
        data = memoryview(line)
        try:
            while data:
                data = data[os.write(self._fd, data) :]
            if self._fsync:
                os.fsync(self._fd)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, self._size)  # no half line at the end
            self.close()
            self.failed = storage_error(self.what, self.path.parent, exc)
            raise self.failed from None
        self._size += len(line)

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                fd, self._fd = self._fd, None
                with contextlib.suppress(OSError):
                    os.close(fd)


class Journal(JsonlWriter):
    what = "the journal"

    def __init__(self, path: Path) -> None:
        super().__init__(path, fsync=True)


class MetricsWriter(JsonlWriter):
    what = "the metrics"

    def __init__(self, path: Path) -> None:
        super().__init__(path, fsync=False)


class RunFiles:
    """A run dir's journal.jsonl and metrics.jsonl: where every record above goes.

    Made without a run dir (a trainer that keeps no files) it writes nothing.
    The run dir is prepared first (0700, the user's own, stale temp files removed).
    """

    def __init__(self, run_dir: Path | None = None) -> None:
        self.journal: Journal | None = None
        self.metrics: MetricsWriter | None = None
        if run_dir is None:
            return
        prepare_run_dir(run_dir)
        try:
            self.journal = Journal(run_dir / "journal.jsonl")
            self.metrics = MetricsWriter(run_dir / "metrics.jsonl")
        except BaseException:
            self.close()
            raise

    def write(self, record: Record) -> None:
        """A journal record, fsynced; a failed write raises StorageError (once)."""
        if self.journal is not None:
            self.journal.write(record)

    def write_quietly(self, record: Record) -> StorageError | None:
        """A journal record on a failure/finish path: a storage error is returned, not
        raised, so the run still ends (and stop/SIGTERM still work)."""
        try:
            self.write(record)
        except StorageError as exc:
            return exc
        return None

    def metric(self, record: Record) -> None:
        if self.metrics is not None:
            self.metrics.write(record)

    @property
    def journal_whole(self) -> bool | None:
        """None without a journal; False once a write to it failed."""
        return None if self.journal is None else self.journal.failed is None

    def close(self) -> None:
        for f in (self.journal, self.metrics):
            if f is not None:
                f.close()


# --------------------------------------------------------------------------- reader


@dataclass(frozen=True)
class JournalEntry:
    step: int
    cmd: str
    source: str
    ok: bool
    line: int = 0  # 1-based line in the journal file, for error messages


def _entry(rec: dict[str, Any], path: Path, n: int) -> JournalEntry:
    step, cmd, ok = rec.get("step"), rec.get("cmd"), rec.get("ok")
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise TuiconsoleError(f"{path}:{n}: malformed command entry (step must be an int >= 0)")
    if not isinstance(cmd, str) or not cmd.strip():
        raise TuiconsoleError(f"{path}:{n}: malformed command entry (no cmd text)")
    if not isinstance(ok, bool):
        raise TuiconsoleError(f"{path}:{n}: malformed command entry (ok must be true/false)")
    return JournalEntry(step, cmd, str(rec.get("source", "")), ok, n)


@dataclass(frozen=True)
class JournalSession:
    """One process's part of a journal: its header and the commands after it.

    ``--resume`` into an existing run dir appends a new header (``resumed_from``,
    ``resumed_step``) to the same journal.jsonl, so a journal holds one session
    per start. ``after_error`` are commands journaled after the session's
    ``error`` record (the front-end's closing ``stop``...): the run had already
    ended, so they are never replayed.
    """

    header: dict[str, Any]
    entries: list[JournalEntry]
    number: int  # 1-based, in file order
    line: int  # the header's line
    after_error: list[JournalEntry]
    end: dict[str, Any] | None = None  # the session's `end` record, if it got one

    @property
    def start_step(self) -> int:
        step = self.header.get("resumed_step")
        return step if isinstance(step, int) and not isinstance(step, bool) else 0


def read_sessions(path: Path) -> list[JournalSession]:
    """Every session of a journal, in order. A truncated last line (a crash
    mid-write) is ignored; any other damage raises a TuiconsoleError naming
    the file and line."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise TuiconsoleError(f"cannot read journal {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise TuiconsoleError(f"{path}: not a journal (not UTF-8 text)") from None
    sessions: list[JournalSession] = []
    failed = False
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            if n == len(lines) and sessions:
                break
            raise TuiconsoleError(f"{path}:{n}: not valid JSON") from None
        if not isinstance(rec, dict):
            raise TuiconsoleError(f"{path}:{n}: expected a JSON object")
        kind = rec.get("type")
        if kind == HEADER:
            sessions.append(JournalSession(rec, [], len(sessions) + 1, n, []))
            failed = False
        elif kind == END and sessions:
            sessions[-1] = replace(sessions[-1], end=rec)
        elif not sessions:
            if kind == COMMAND:
                raise TuiconsoleError(
                    f"{path}: no journal header line (is it a tuiconsole journal?)"
                )
        elif kind == ERROR:
            failed = True
        elif kind == COMMAND:
            entry = _entry(rec, path, n)
            (sessions[-1].after_error if failed else sessions[-1].entries).append(entry)
    if not sessions:
        raise TuiconsoleError(f"{path}: no journal header line (is it a tuiconsole journal?)")
    for session in sessions:
        entries = session.entries
        if any(
            b.step < a.step and not _rolled_back(a)
            for a, b in zip(entries, entries[1:], strict=False)
        ):
            raise TuiconsoleError(f"{path}: command steps go backwards; the journal was edited?")
    return sessions


def _rolled_back(entry: JournalEntry) -> bool:
    """An applied rollback: the steps after it go back to its checkpoint's."""
    return entry.ok and entry.cmd.split(maxsplit=1)[:1] == ["rollback"]


def read_journal(path: Path) -> tuple[dict[str, Any], list[JournalEntry]]:
    """The last session's header and command entries (see :func:`read_sessions`)."""
    last = read_sessions(path)[-1]
    return last.header, last.entries + last.after_error


def pick_session(
    path: Path, sessions: list[JournalSession], resume_step: int | None, resume: Path | None
) -> JournalSession:
    """The session a replay re-runs: without ``--resume`` the (last) fresh one; with
    ``--resume CKPT`` the one that started from that checkpoint (its step, and its
    file when several sessions started at that step)."""
    if resume_step is None:
        fresh = [s for s in sessions if "resumed_step" not in s.header]
        if fresh:
            return fresh[-1]
        first = sessions[0].header
        raise TuiconsoleError(
            f"{path}: this journal is of a run resumed from "
            f"{first.get('resumed_from')} at step {first.get('resumed_step')}; "
            "replay it together with --resume of that checkpoint"
        )
    matching = [s for s in sessions if s.start_step == resume_step]
    if not matching:
        starts = ", ".join(str(s.start_step) for s in sessions)
        if len(sessions) == 1:
            raise TuiconsoleError(
                f"{path}: the journal starts at step {starts} but the "
                f"checkpoint is at step {resume_step}"
            )
        raise TuiconsoleError(
            f"{path}: no session of this journal starts at step {resume_step} (its "
            f"{len(sessions)} sessions start at steps {starts}); --resume the checkpoint "
            "a session started from"
        )
    if resume is not None:
        same = [s for s in matching if _same_file(s.header.get("resumed_from"), resume)]
        matching = same or matching
    return matching[-1]


def _same_file(recorded: Any, path: Path) -> bool:
    if not isinstance(recorded, str):
        return False
    try:
        return Path(recorded).resolve() == Path(path).resolve()
    except OSError:
        return False


def load_replay(
    path: Path, resume_step: int | None = None, resume: Path | None = None
) -> tuple[JournalSession, list[tuple[JournalEntry, Any]]]:
    """The session to replay (see :func:`pick_session`) and its applied (ok)
    commands, parsed; a bad line is a TuiconsoleError.

    Everything is checked before the run starts, so a damaged journal stops
    ``--replay`` with one clear message instead of failing half-way.
    """
    from tuiconsole.engine.commands import parse

    session = pick_session(path, read_sessions(path), resume_step, resume)
    # A run that ended FINISHED was never stopped: its `stop`s came after the
    # finish (the front-end closing); replayed, they would end it STOPPED.
    finished = (session.end or {}).get("state") == "FINISHED"
    out = []
    for e in session.entries:
        if not e.ok or (finished and e.cmd.strip() == "stop"):
            continue
        try:
            out.append((e, parse(e.cmd)))
        except TuiconsoleError as exc:
            shown = e.cmd if len(e.cmd) <= 80 else f"{e.cmd[:80]}…"  # one readable line
            raise TuiconsoleError(f"{path}:{e.line}: cannot replay {shown!r}: {exc}") from None
    return session, out


def replay_notes(
    session: JournalSession, count: int, path: Path, script_sha256: str | None
) -> list[tuple[str, bool]]:
    """What a replay says as it starts (text, ok): what it replays, what it leaves out,
    and whether the script changed since the journal was written."""
    which = f" (session {session.number}, journal line {session.line})"
    notes = [
        (
            f"replaying {count} command(s) from {path}" + (which if session.number > 1 else ""),
            True,
        )
    ]
    if session.after_error:
        notes.append(
            (
                f"not replayed: {len(session.after_error)} command(s) journaled after "
                "the run's error (the run had ended)",
                True,
            )
        )
    world = session.header.get("world_size", 1)
    now = world_size_now()
    if world != now:
        notes.append(
            (
                f"warning: the journal was written by a run on {world} rank(s), this one has "
                f"{now}: each rank's data differs, so the replay will not match exactly",
                False,
            )
        )
    sha = session.header.get("sha256")
    if sha and script_sha256 and sha != script_sha256:
        notes.append(
            (
                "warning: the script changed since the journal was written "
                "(sha256 differs); the replay may not match",
                False,
            )
        )
    return notes


def world_size_now() -> int:
    """The ranks of this job (torchrun's WORLD_SIZE), 1 for a process on its own."""
    import os

    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


class Replay:
    """The commands a ``--replay`` run applies again, each once its step is reached.

    Loaded (and checked whole) as the trainer is made: ``resume_step`` is the
    step a ``--resume`` starts from, so the session replayed is the one that
    checkpoint belongs to. Empty without a journal.
    """

    def __init__(
        self, path: Path | None, resume_step: int | None = None, resume: Path | None = None
    ) -> None:
        self.path = path
        self._session: JournalSession | None = None
        self._entries: deque[tuple[JournalEntry, Any]] = deque()
        if path is not None:
            self._session, entries = load_replay(path, resume_step, resume)
            self._entries.extend(entries)

    def __bool__(self) -> bool:
        """Commands are left to replay."""
        return bool(self._entries)

    def notes(self, script_sha256: str | None) -> list[tuple[str, bool]]:
        """What the replay says as the run starts (see :func:`replay_notes`)."""
        if self._session is None or self.path is None:
            return []
        return replay_notes(self._session, len(self._entries), self.path, script_sha256)

    def due(self, step: int) -> tuple[JournalEntry, Any] | None:
        """The next command journaled at or before ``step`` (taken), or None."""
        if self._entries and self._entries[0][0].step <= step:
            return self._entries.popleft()
        return None
