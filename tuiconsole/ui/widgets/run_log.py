"""The run's live log: every command and its result (from any source), evals, errors."""

from __future__ import annotations

from rich.text import Text
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


def render_entry(entry: LogEntry) -> Text:
    text = Text(no_wrap=False)
    text.append(f"{entry.step:>7} ", style="dim")
    text.append(f"{entry.source or 'run':<6} ", style="dim")
    style = KIND_STYLES.get(entry.kind, "")
    if not entry.ok:
        style = "bold red"
    text.append(entry.text, style=style)
    return text


class RunLog(RichLog):
    """Appends entries with ``seq`` greater than the last one shown; never re-renders old ones."""

    DEFAULT_CSS = """
    RunLog {
        scrollbar-size-vertical: 1;
    }
    """

    # Periodic "step N loss …" lines would bury the commands; the charts show the loss.
    HIDDEN_KINDS: frozenset[str] = frozenset({"metrics"})

    def __init__(self, *, id: str | None = None, max_lines: int = 2000) -> None:
        super().__init__(id=id, max_lines=max_lines, wrap=True, markup=False, highlight=False)
        self.last_seq = -1
        self.lines_text: list[str] = []  # plain text of what was written (tests, copy)

    def show(self, entries: tuple[LogEntry, ...]) -> bool:
        if not entries or entries[-1].seq <= self.last_seq:
            return False
        start = len(entries)
        while start > 0 and entries[start - 1].seq > self.last_seq:
            start -= 1
        shown = False
        for entry in entries[start:]:
            if entry.kind not in self.HIDDEN_KINDS:
                self.add(render_entry(entry))
                shown = True
        self.last_seq = entries[-1].seq
        return shown

    def add(self, text: Text) -> None:
        """Write one line (also used for the console's own notes, e.g. a parse error)."""
        self.lines_text.append(text.plain)
        if self.max_lines and len(self.lines_text) > self.max_lines:
            del self.lines_text[: len(self.lines_text) - self.max_lines]
        self.write(text)

    def note(self, message: str, *, error: bool = False) -> None:
        """A line from the console itself (not from the run)."""
        text = Text(no_wrap=False)
        text.append(f"{'':>7} {'ui':<6} ", style="dim")
        text.append(message, style="bold red" if error else KIND_STYLES["ui"])
        self.add(text)
