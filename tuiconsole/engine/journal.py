"""journal.jsonl and metrics.jsonl: what happened, in order, on disk.

The journal gets a header line and then one line per command, written and
fsynced before the next training step, so even ``kill -9`` leaves valid JSONL
up to the last applied command. Replay reads it back.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from tuiconsole.errors import TuiconsoleError

JOURNAL_VERSION = 1


class JsonlWriter:
    def __init__(self, path: Path, *, fsync: bool) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._fsync = fsync
        self._file: IO[str] | None = path.open("a", encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        if self._file is None:
            return
        self._file.write(json.dumps(record, allow_nan=True) + "\n")
        self._file.flush()
        if self._fsync:
            os.fsync(self._file.fileno())

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class Journal(JsonlWriter):
    def __init__(self, path: Path) -> None:
        super().__init__(path, fsync=True)


class MetricsWriter(JsonlWriter):
    def __init__(self, path: Path) -> None:
        super().__init__(path, fsync=False)


@dataclass(frozen=True)
class JournalEntry:
    step: int
    cmd: str
    source: str
    ok: bool


def read_journal(path: Path) -> tuple[dict[str, Any], list[JournalEntry]]:
    """Header and command entries. A truncated last line (a crash mid-write) is ignored."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise TuiconsoleError(f"cannot read journal {path}: {exc.strerror}") from None
    header: dict[str, Any] = {}
    entries: list[JournalEntry] = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            if n == len(lines):
                break
            raise TuiconsoleError(f"{path}:{n}: not valid JSON") from None
        if rec.get("type") == "header":
            header = rec
        elif rec.get("type") == "command":
            try:
                entries.append(
                    JournalEntry(
                        int(rec["step"]),
                        str(rec["cmd"]),
                        str(rec.get("source", "")),
                        bool(rec["ok"]),
                    )
                )
            except (KeyError, TypeError, ValueError):
                raise TuiconsoleError(f"{path}:{n}: malformed command entry") from None
    if not header:
        raise TuiconsoleError(f"{path}: no journal header line")
    return header, entries
