"""The ':' command line: the full command grammar, tab completion and history.

The same bar is the tree's ``/`` filter: opened with :meth:`CommandLine.open_filter`,
each keystroke posts :class:`CommandLine.FilterChanged` (enter keeps the filter,
escape clears it).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.widgets import Input, Label, Static

from tuiconsole.engine.commands import parse
from tuiconsole.errors import CommandError
from tuiconsole.ui.completion import Vocabulary, complete

MAX_MATCHES_SHOWN = 12
HINT = "tab completes · ↑/↓ history · enter runs · esc closes"
FILTER_HINT = "filter the model tree by module name · enter keeps it · esc clears it"
# Words the console itself answers (not run commands: never journaled).
CONSOLE_WORDS = ("control",)


def placeholder_for(groups: Sequence[str]) -> str:
    """The input's example line, with a group this run really has."""
    group = groups[0] if groups else "all"
    return f"lr {group} 1e-3 · decay 0.1 · split NAME MODULE… · rebuild Adam lr=1e-3"


class CommandInput(Input):
    """An Input with tab completion and up/down history (escape closes the line)."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("tab", "complete", "Complete", show=False, id="cmdline.complete"),
        Binding("up", "history(-1)", "Previous command", show=False, id="cmdline.prev"),
        Binding("down", "history(1)", "Next command", show=False, id="cmdline.next"),
        Binding("escape", "close", "Close", show=False, id="cmdline.close"),
    ]

    def __init__(self, vocabulary: Callable[[], Vocabulary], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.vocabulary = vocabulary
        self.history: list[str] = []
        self._hist_pos = 0
        self._draft = ""
        self._cycle: tuple[str, tuple[str, ...], int] | None = None
        self.filtering = False  # the / filter: no command completion or history

    def action_complete(self) -> None:
        if self.filtering:
            return
        line = self.value[: self.cursor_position]
        matches: tuple[str, ...]
        if self._cycle is not None and self._cycle[0] == self.value:
            _, matches, idx = self._cycle
            idx = (idx + 1) % len(matches)
            head = self.value.rpartition(" ")[0]
            new = f"{head} {matches[idx]}" if head else matches[idx]
            self._cycle = (new, matches, idx)
        else:
            result = complete(line, self.vocabulary())
            matches = result.matches
            new = result.line
            if new == line and len(matches) > 1:
                head = line.rpartition(" ")[0]
                new = f"{head} {matches[0]}" if head else matches[0]
                self._cycle = (new, matches, 0)
            else:
                self._cycle = None
        self.value = new
        self.cursor_position = len(new)
        self.post_message(CommandLine.Matches(matches))

    def action_history(self, delta: int) -> None:
        if not self.history or self.filtering:
            return
        if self._hist_pos == len(self.history):
            self._draft = self.value
        self._hist_pos = max(0, min(len(self.history), self._hist_pos + delta))
        value = self.history[self._hist_pos] if self._hist_pos < len(self.history) else self._draft
        self.value = value
        self.cursor_position = len(value)

    def remember(self, line: str) -> None:
        if line and (not self.history or self.history[-1] != line):
            self.history.append(line)
        self._hist_pos = len(self.history)
        self._draft = ""

    def action_close(self) -> None:
        self.post_message(CommandLine.Closed())


class CommandLine(Vertical):
    """Hidden until ':' is pressed. Posts :class:`CommandLine.Submitted` with a line that
    parses; a line that does not parse stays in the input with the error shown inline."""

    DEFAULT_CSS = """
    /* Its own layer, docked above the footer: opening it resizes no pane (a layout of
       every pane cost ~100 ms a key on a loaded box), it overlays the log's last rows. */
    CommandLine {
        display: none;
        height: auto;
        background: $panel;
        layer: cmdline;
        dock: bottom;
        margin-bottom: 1;
    }
    CommandLine.-active { display: block; }
    CommandLine #cmd-hint { height: auto; max-height: 3; color: $text-muted; padding: 0 1; }
    CommandLine #cmd-hint.-error { color: $error; }
    CommandLine Horizontal { height: 1; }
    CommandLine #cmd-prompt { width: 2; padding: 0 0 0 1; }
    CommandLine CommandInput { width: 1fr; }
    """

    class Submitted(Message):
        def __init__(self, line: str) -> None:
            super().__init__()
            self.line = line

    class Closed(Message):
        pass

    class Matches(Message):
        def __init__(self, matches: tuple[str, ...]) -> None:
            super().__init__()
            self.matches = matches

    class FilterChanged(Message):
        """The ``/`` filter's text (``done``: enter or escape closed the bar)."""

        def __init__(self, text: str, done: bool = False) -> None:
            super().__init__()
            self.text = text
            self.done = done

    def __init__(self, vocabulary: Callable[[], Vocabulary], *, id: str | None = None) -> None:
        super().__init__(id=id)
        self._vocabulary = vocabulary
        self.mode = "command"  # or "filter" (the tree's / filter)

    def compose(self) -> ComposeResult:
        yield Static("", id="cmd-hint")
        with Horizontal():
            yield Label(":", id="cmd-prompt")
            yield CommandInput(
                self._vocabulary,
                placeholder=placeholder_for([]),
                id="cmd-input",
                select_on_focus=False,
                compact=True,
            )

    @property
    def input(self) -> CommandInput:
        return self.query_one(CommandInput)

    @property
    def is_open(self) -> bool:
        return self.has_class("-active")

    def open(self, text: str = "") -> None:
        self.mode = "command"
        self.input.filtering = False
        self.query_one("#cmd-prompt", Label).update(":")
        self.input.placeholder = placeholder_for(self._vocabulary().groups)
        self.add_class("-active")
        self.hint(HINT)
        self.input.value = text
        self.input.cursor_position = len(text)
        self.input.focus()

    def open_filter(self, text: str = "") -> None:
        """The bar as the tree's ``/`` filter (prompt ``/``)."""
        self.mode = "filter"
        self.input.filtering = True
        self.query_one("#cmd-prompt", Label).update("/")
        self.input.placeholder = "module name (part of its path)"
        self.add_class("-active")
        self.hint(FILTER_HINT)
        self.input.value = text
        self.input.cursor_position = len(text)
        self.input.focus()

    def close(self) -> None:
        self.remove_class("-active")

    def hint(self, message: str | Text, *, error: bool = False) -> None:
        hint = self.query_one("#cmd-hint", Static)
        hint.set_class(error, "-error")
        hint.update(message)

    @on(Input.Submitted, "#cmd-input")
    def _submitted(self, event: Input.Submitted) -> None:
        event.stop()
        line = event.value.strip()
        if self.mode == "filter":
            self.post_message(CommandLine.FilterChanged(line, done=True))
            return
        if not line:
            self.post_message(CommandLine.Closed())
            return
        if line.lstrip(":").lower() in CONSOLE_WORDS:
            self.input.remember(line)
            self.input.value = ""
            self.post_message(CommandLine.Submitted(line))
            return
        try:
            parse(line)
        except CommandError as exc:
            self.input.remember(line)
            self.hint(f"error: {exc}", error=True)
            return
        self.input.remember(line)
        self.input.value = ""
        self.post_message(CommandLine.Submitted(line))

    @on(Input.Changed, "#cmd-input")
    def _changed(self, event: Input.Changed) -> None:
        event.stop()
        if self.mode == "filter":
            self.post_message(CommandLine.FilterChanged(event.value.strip()))
            return
        hint = self.query_one("#cmd-hint", Static)
        if hint.has_class("-error"):
            self.hint(HINT)

    @on(Matches)
    def _show_matches(self, event: Matches) -> None:
        event.stop()
        if len(event.matches) > 1:
            shown = "  ".join(event.matches[:MAX_MATCHES_SHOWN])
            more = len(event.matches) - MAX_MATCHES_SHOWN
            self.hint(shown + (f"  (+{more} more)" if more > 0 else ""))
        elif not event.matches:
            self.hint("no completion")
