"""Ask for the name of the new group that ``s`` (split) creates."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Static


def check_group_name(name: str, existing: Sequence[str]) -> str | None:
    """None if ``name`` can name a new group, else why not."""
    if not name:
        return "enter a group name"
    if any(c.isspace() for c in name) or "=" in name or name.startswith(("'", '"')):
        return "a group name has no spaces, quotes or '='"
    if name == "all":
        return "'all' is reserved (it targets every group)"
    if name in existing:
        return f"a group named {name!r} already exists"
    return None


class SplitNameScreen(ModalScreen[str | None]):
    """Returns the new group's name, or None when cancelled."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "cancel", "Cancel", id="split.cancel"),
    ]

    def __init__(self, modules: Sequence[str], default: str, existing: Sequence[str]) -> None:
        super().__init__()
        self.modules = list(modules)
        self.default = default
        self.existing = list(existing)

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog", classes="dialog"):
            yield Label("Split into a new param group", classes="dialog-title")
            shown = ", ".join(self.modules[:6]) + (" …" if len(self.modules) > 6 else "")
            yield Static(f"modules: {shown}")
            yield Input(value=self.default, placeholder="group name", id="split-name")
            yield Static("", id="split-error", classes="error")
            yield Static("their parameters move live · momentum/Adam state kept", classes="hint")
            with Horizontal(classes="buttons"):
                yield Button("Split", variant="primary", id="split-yes", compact=True)
                yield Button("Cancel", id="split-no", compact=True)

    def on_mount(self) -> None:
        self.query_one("#split-name", Input).focus()

    @on(Input.Submitted, "#split-name")
    @on(Button.Pressed, "#split-yes")
    def _confirm(self) -> None:
        name = self.query_one("#split-name", Input).value.strip()
        problem = check_group_name(name, self.existing)
        if problem is not None:
            error = self.query_one("#split-error", Static)
            error.update(f"✗ {problem}")
            error.add_class("-shown")
            return
        self.dismiss(name)

    @on(Button.Pressed, "#split-no")
    def action_cancel(self) -> None:
        self.dismiss(None)
