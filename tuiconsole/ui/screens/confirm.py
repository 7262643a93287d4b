"""Confirmations: quit / detach / stop (yes-no), big lr changes and rebuild (drops
optimizer state)."""

from __future__ import annotations

from typing import ClassVar

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Select, Static

from tuiconsole.engine.commands import Rebuild, parse, parse_positive
from tuiconsole.errors import CommandError
from tuiconsole.ui.completion import OPTIMIZER_CLASSES

HPARAM_HINTS = {
    "SGD": "momentum=0.9 weight_decay=5e-4 nesterov=true",
    "Adam": "betas=0.9,0.999 weight_decay=0 eps=1e-8",
    "AdamW": "betas=0.9,0.999 weight_decay=0.01",
    "RMSprop": "alpha=0.99 momentum=0 weight_decay=0",
}


class _YesNo(ModalScreen[bool]):
    """A yes/no question; the keys that say yes are the subclass's."""

    YES_KEYS = "y"

    def __init__(self, title: str, body: str, yes: str = "Quit", no: str = "Stay") -> None:
        super().__init__()
        self.title_text, self.body, self.yes, self.no = title, body, yes, no

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog", classes="dialog"):
            yield Label(self.title_text, classes="dialog-title")
            yield Static(self.body, id="confirm-body", markup=False)
            keys = " / ".join(self.YES_KEYS.split(","))
            yield Static(f"{keys}: {self.yes.lower()} · n / esc: {self.no.lower()}", classes="hint")
            with Horizontal(classes="buttons"):
                yield Button(self.yes, variant="error", id="confirm-yes", compact=True)
                yield Button(self.no, id="confirm-no", compact=True)

    def on_mount(self) -> None:
        self.query_one("#confirm-no", Button).focus()

    @on(Button.Pressed, "#confirm-yes")
    def action_confirm(self) -> None:
        self.dismiss(True)

    @on(Button.Pressed, "#confirm-no")
    def action_cancel(self) -> None:
        self.dismiss(False)


class ConfirmScreen(_YesNo):
    """``q`` / ``y`` / enter on Yes / ctrl+c confirm; ``n`` / escape cancel.

    Used for quitting (which stops training cleanly), detaching and ``stop``.
    """

    YES_KEYS = "q,y"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("q,y,ctrl+c", "confirm", "Yes", id="confirm.yes", priority=True),
        Binding("n,escape", "cancel", "No", id="confirm.no"),
    ]


class GuardScreen(_YesNo):
    """ "Change the lr 100x?": only ``y`` (or enter on Apply) says yes; the focus starts on
    Cancel, so a stray enter or q changes nothing."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("y", "confirm", "Yes", id="guard.yes"),
        Binding("n,escape", "cancel", "No", id="guard.no"),
    ]


def rebuild_command(cls: str, lr: str, extra: str) -> str:
    """The ``rebuild`` command text for the form's values; raises CommandError if invalid."""
    parts = ["rebuild", cls]
    lr = lr.strip()
    if lr:
        parse_positive(lr, "lr")
        parts.append(f"lr={lr}")
    if extra.strip():
        for token in extra.split():
            if "=" not in token:
                raise CommandError(f"expected KEY=VALUE, got {token!r}")
            if token.partition("=")[0] == "lr":
                raise CommandError("put lr in the lr field")
        parts.append(extra.strip())
    text = " ".join(parts)
    cmd = parse(text)
    assert isinstance(cmd, Rebuild)
    return cmd.text


class RebuildScreen(ModalScreen[str | None]):
    """Pick the optimizer class and key hyper-parameters; returns the ``rebuild`` command."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "cancel", "Cancel", id="rebuild.cancel"),
    ]

    def __init__(self, current_class: str = "") -> None:
        super().__init__()
        names = list(OPTIMIZER_CLASSES)
        if current_class and current_class not in names:
            names.insert(0, current_class)
        self.class_names = names
        self.current_class = current_class if current_class else names[0]

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog", classes="dialog -wide"):
            yield Label("Rebuild the optimizer", classes="dialog-title")
            yield Static(
                "⚠ A fresh optimizer is built from the current groups: momentum / Adam "
                "state is LOST. Each group keeps its lr unless you set one below.",
                classes="warning",
            )
            with Horizontal(classes="field"):
                yield Label("class", classes="field-label")
                yield Select(
                    [(c, c) for c in self.class_names],
                    value=self.current_class,
                    allow_blank=False,
                    id="rebuild-class",
                )
            with Horizontal(classes="field"):
                yield Label("lr", classes="field-label")
                yield Input(placeholder="keep each group's lr", id="rebuild-lr")
            with Horizontal(classes="field"):
                yield Label("other", classes="field-label")
                yield Input(placeholder=self._hint(self.current_class), id="rebuild-extra")
            yield Static("", id="rebuild-error", classes="error")
            with Horizontal(classes="buttons"):
                yield Button(
                    "Rebuild (drops state)", variant="error", id="rebuild-yes", compact=True
                )
                yield Button("Cancel", id="rebuild-no", compact=True)

    @staticmethod
    def _hint(cls: str) -> str:
        return HPARAM_HINTS.get(cls, "KEY=VALUE …")

    def on_mount(self) -> None:
        self.query_one("#rebuild-class", Select).focus()

    @on(Select.Changed, "#rebuild-class")
    def _class_changed(self, event: Select.Changed) -> None:
        self.query_one("#rebuild-extra", Input).placeholder = self._hint(str(event.value))

    @on(Input.Submitted)
    @on(Button.Pressed, "#rebuild-yes")
    def _confirm(self) -> None:
        cls = str(self.query_one("#rebuild-class", Select).value)
        lr = self.query_one("#rebuild-lr", Input).value
        extra = self.query_one("#rebuild-extra", Input).value
        try:
            text = rebuild_command(cls, lr, extra)
        except CommandError as exc:
            error = self.query_one("#rebuild-error", Static)
            error.update(f"✗ {exc} — nothing applied")
            error.add_class("-shown")
            return
        self.dismiss(text)

    @on(Button.Pressed, "#rebuild-no")
    def action_cancel(self) -> None:
        self.dismiss(None)
