"""The run's live log: every command and its result (from any source), evals, errors.

A line that wraps continues under its message, not under the step column (a
two-column grid per entry), and the log can be narrowed to the commands or the
errors (``f`` while it has focus). Entries are kept as data, so a new filter or a
new width (a resize) redraws them at once, and the newest lines stay in view.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from rich.table import Table
from rich.text import Text
from textual import events
from textual.widgets import RichLog

from tuiconsole.engine.snapshot import LogEntry

KIND_STYLES = {
    "command": "",
    "eval": "#87d7ff",
    "error": "bold red",
    "nan": "bold red",
    "info": "dim",
    "metrics": "dim",
    "ui": "#d7af5f",
}
PREFIX_WIDTH = 15  # "{step:>7} {source:<6} "
FILTERS = ("all", "commands", "errors")


def render_entry(entry: LogEntry) -> Text:
    text = Text(no_wrap=False)
    text.append(f"{entry.step:>7} ", style="dim")
    text.append(f"{entry.source or 'run':<6} ", style="dim")
    style = KIND_STYLES.get(entry.kind, "")
    if not entry.ok:
        style = "bold red"
    text.append(entry.text, style=style)
    return text


@dataclass(frozen=True)
class _Line:
    prefix: Text
    message: Text
    kind: str  # a LogEntry kind, or "ui" for the console's own notes
    ok: bool

    @property
    def plain(self) -> str:
        return self.prefix.plain + self.message.plain

    def shown_under(self, mode: str) -> bool:
        if mode == "errors":
            return not self.ok or self.kind in ("error", "nan")
        if mode == "commands":
            return self.kind == "command"
        return True


def _grid(line: _Line) -> Table:
    """Prefix | message: the message wraps in its own column (a hanging indent)."""
    grid = Table.grid(expand=False)
    grid.add_column(width=max(PREFIX_WIDTH, line.prefix.cell_len), no_wrap=True)
    grid.add_column(overflow="fold")
    grid.add_row(line.prefix, line.message)
    return grid


class RunLog(RichLog):
    """Appends entries with ``seq`` greater than the last one shown; never re-renders old
    ones, except on a new filter or width."""

    DEFAULT_CSS = """
    RunLog {
        scrollbar-size-vertical: 1;
    }
    """

    # Periodic "step N loss …" lines would bury the commands; the charts show the loss.
    HIDDEN_KINDS: frozenset[str] = frozenset({"metrics"})
    FILTERS: ClassVar[tuple[str, ...]] = FILTERS

    def __init__(self, *, id: str | None = None, max_lines: int = 2000) -> None:
        super().__init__(id=id, max_lines=max_lines, wrap=True, markup=False, highlight=False)
        self.last_seq = -1
        self.lines_text: list[str] = []  # plain text of what is shown (tests, copy)
        self.filter = "all"
        self._entries: list[_Line] = []  # everything written, whatever the filter
        self._width = 0

    def show(self, entries: tuple[LogEntry, ...]) -> bool:
        if not entries or entries[-1].seq <= self.last_seq:
            return False
        start = len(entries)
        while start > 0 and entries[start - 1].seq > self.last_seq:
            start -= 1
        shown = False
        for entry in entries[start:]:
            if entry.kind not in self.HIDDEN_KINDS:
                text = render_entry(entry)
                cut = len(f"{entry.step:>7} {entry.source or 'run':<6} ")
                shown = self._add(_split(text, entry.kind, entry.ok, cut)) or shown
        self.last_seq = entries[-1].seq
        return shown

    def add(self, text: Text) -> None:
        """Write one line (also used for the console's own notes, e.g. a parse error)."""
        self._add(_split(text, "ui", True))

    def note(self, message: str, *, error: bool = False) -> None:
        """A line from the console itself (not from the run)."""
        text = Text(no_wrap=False)
        text.append(f"{'':>7} {'ui':<6} ", style="dim")
        text.append(message, style="bold red" if error else KIND_STYLES["ui"])
        self._add(_split(text, "error" if error else "ui", not error))

    def _add(self, line: _Line) -> bool:
        self._entries.append(line)
        if self.max_lines and len(self._entries) > self.max_lines:
            del self._entries[: len(self._entries) - self.max_lines]
        if not line.shown_under(self.filter):
            return False
        self.lines_text.append(line.plain)
        if self.max_lines and len(self.lines_text) > self.max_lines:
            del self.lines_text[: len(self.lines_text) - self.max_lines]
        self.write(_grid(line), expand=True)
        return True

    def set_filter(self, mode: str) -> None:
        """Show ``mode``'s lines only ("all", "commands", "errors")."""
        if mode not in FILTERS:
            raise ValueError(f"unknown log filter {mode!r}")
        self.filter = mode
        self._redraw()

    def cycle_filter(self) -> str:
        self.set_filter(FILTERS[(FILTERS.index(self.filter) + 1) % len(FILTERS)])
        return self.filter

    def _redraw(self) -> None:
        self.clear()
        self.lines_text = []
        for line in self._entries:
            if line.shown_under(self.filter):
                self.lines_text.append(line.plain)
                self.write(_grid(line), expand=True, scroll_end=False)
        self.scroll_end(animate=False, immediate=False, x_axis=False)

    def on_resize(self, event: events.Resize) -> None:
        # (RichLog's own on_resize runs too: Textual calls each class's handler.)
        width = event.size.width
        if width and width != self._width:
            first = self._width == 0
            self._width = width
            if not first:
                self._redraw()  # re-wrap at the new width, newest lines in view
        self.scroll_end(animate=False, immediate=False, x_axis=False)


def _split(text: Text, kind: str, ok: bool, cut: int = PREFIX_WIDTH) -> _Line:
    """A rendered entry as (step+source prefix, message)."""
    if cut >= len(text.plain):
        return _Line(text, Text(), kind, ok)
    parts = text.divide([cut])
    return _Line(parts[0], parts[1], kind, ok)
