"""The ``?`` help screen, generated from the live bindings (never a hand-kept key list)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Label, Static

from tuiconsole.engine.commands import COMMAND_NAMES, USAGE

if TYPE_CHECKING:
    from textual.app import App
    from textual.binding import ActiveBinding


@dataclass(frozen=True)
class KeyRow:
    section: str
    keys: str
    description: str
    action: str = ""


def key_rows(app: App[Any], active: dict[str, ActiveBinding]) -> list[KeyRow]:
    """One row per (where, action), in the app's BINDINGS order; keys bound to the same
    action are merged ("e, ⏎") and the first binding's tooltip describes the row."""
    order = {b.id: i for i, b in enumerate(type(app).BINDINGS) if isinstance(b, Binding)}
    bindings = sorted(
        enumerate(active.values()),
        key=lambda item: (order.get(item[1].binding.id, len(order)), item[0]),
    )
    rows: dict[tuple[str, str], tuple[list[str], str]] = {}
    for _, ab in bindings:
        binding = ab.binding
        if binding.system and binding.action != "command_palette":
            continue
        section = "console" if ab.node is app else _section(ab.node)
        keys, _ = rows.setdefault(
            (section, binding.action), ([], binding.tooltip or binding.description)
        )
        display = app.get_key_display(binding)
        if display not in keys:
            keys.append(display)
    ordered = sorted(rows.items(), key=lambda kv: kv[0][0] != "console")
    return [
        KeyRow(section, ", ".join(keys), description or action, action)
        for (section, action), (keys, description) in ordered
    ]


def _section(node: object) -> str:
    """A widget's name in the help: its HELP_SECTION, else its class name."""
    return str(getattr(type(node), "HELP_SECTION", type(node).__name__))


def render_rows(rows: list[KeyRow]) -> Table:
    table = Table(box=None, show_header=False, padding=(0, 1), expand=False)
    table.add_column("keys", style="bold", no_wrap=True)
    table.add_column("what")
    section = None
    for row in rows:
        if row.section != section:
            section = row.section
            table.add_row(Text(section, style="underline"), "")
        table.add_row(row.keys, row.description)
    return table


def render_grammar() -> Table:
    table = Table(box=None, show_header=False, padding=(0, 1))
    table.add_column("command", style="bold", no_wrap=True)
    for name in COMMAND_NAMES:
        table.add_row(":" + USAGE[name])
    table.add_row(Text("TARGET: a group name, a module path or all", style="dim"))
    return table


class HelpScreen(ModalScreen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,q,question_mark", "close", "Close", id="help.close"),
    ]

    def __init__(self, rows: list[KeyRow]) -> None:
        super().__init__()
        self.rows = rows

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog", classes="dialog -wide -tall"):
            yield Label("Keys (esc closes)", classes="dialog-title")
            with VerticalScroll(id="help-body"):
                yield Static(render_rows(self.rows), id="help-keys")
                yield Label("Commands (: line, palette, journal, headless stdin)", classes="hint")
                yield Static(render_grammar(), id="help-grammar")

    def on_mount(self) -> None:
        self.query_one("#help-body").focus()

    def action_close(self) -> None:
        self.dismiss(None)
