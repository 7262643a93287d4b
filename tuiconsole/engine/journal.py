"""journal.jsonl and metrics.jsonl: what happened, in order, on disk.

The journal gets a header line and then one line per command, written and
fsynced before the next training step, so even ``kill -9`` leaves valid JSONL
up to the last applied command. Replay reads it back.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuiconsole.engine.rundir import StorageError, open_private, storage_error
from tuiconsole.errors import TuiconsoleError

JOURNAL_VERSION = 1


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

    def write(self, record: dict[str, Any]) -> None:
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


def read_journal(path: Path) -> tuple[dict[str, Any], list[JournalEntry]]:
    """Header and command entries. A truncated last line (a crash mid-write) is ignored.

    Any other damage raises a TuiconsoleError naming the file and line.
    """
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise TuiconsoleError(f"cannot read journal {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise TuiconsoleError(f"{path}: not a journal (not UTF-8 text)") from None
    header: dict[str, Any] = {}
    entries: list[JournalEntry] = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            if n == len(lines) and header:
                break
            raise TuiconsoleError(f"{path}:{n}: not valid JSON") from None
        if not isinstance(rec, dict):
            raise TuiconsoleError(f"{path}:{n}: expected a JSON object")
        if rec.get("type") == "header":
            header = rec
        elif rec.get("type") == "command":
            entries.append(_entry(rec, path, n))
    if not header:
        raise TuiconsoleError(f"{path}: no journal header line (is it a tuiconsole journal?)")
    if any(b.step < a.step for a, b in zip(entries, entries[1:], strict=False)):
        raise TuiconsoleError(f"{path}: command steps go backwards; the journal was edited?")
    return header, entries


def load_replay(path: Path) -> tuple[dict[str, Any], list[tuple[JournalEntry, Any]]]:
    """The journal's applied (ok) commands, parsed; a bad line is a TuiconsoleError.

    Everything is checked before the run starts, so a damaged journal stops
    ``--replay`` with one clear message instead of failing half-way.
    """
    from tuiconsole.engine.commands import parse

    header, entries = read_journal(path)
    out = []
    for e in entries:
        if not e.ok:
            continue
        try:
            out.append((e, parse(e.cmd)))
        except TuiconsoleError as exc:
            shown = e.cmd if len(e.cmd) <= 80 else f"{e.cmd[:80]}…"  # one readable line
            raise TuiconsoleError(f"{path}:{e.line}: cannot replay {shown!r}: {exc}") from None
    return header, out
