"""Edit a learning rate: ``1e-3`` sets it, ``*0.5`` / ``/10`` scale it, in place (state kept)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.validation import ValidationResult, Validator
from textual.widgets import Button, Checkbox, Input, Label, Static

from tuiconsole.engine.commands import Lr, parse
from tuiconsole.errors import CommandError
from tuiconsole.ui.fmt import fmt_lr


def check_lr_value(value: str) -> str | None:
    """None if ``value`` is a valid lr edit (``1e-3``, ``*0.5``, ``/10``), else the error."""
    value = value.strip()
    if not value:
        return "enter a learning rate: 1e-3, *0.5 or /10"
    if len(value.split()) != 1:
        return "one value: 1e-3, *0.5 or /10"
    try:
        parse(f"lr _ {value}")
    except CommandError as exc:
        return str(exc)
    return None


def preview_lr(current: float | None, value: str) -> float | None:
    """What the lr becomes; None if unknown (bad value or no single current lr)."""
    if current is None or check_lr_value(value) is not None:
        return None
    cmd = parse(f"lr _ {value.strip()}")
    assert isinstance(cmd, Lr)
    if cmd.op == "*":
        return current * cmd.value
    if cmd.op == "/":
        return current / cmd.value
    return cmd.value


class LrValue(Validator):
    def validate(self, value: str) -> ValidationResult:
        error = check_lr_value(value)
        return self.success() if error is None else self.failure(error)


@dataclass(frozen=True)
class LrTarget:
    """What the modal edits, described for the user."""

    title: str  # "group classifier" / "module classifier.0 (Linear)"
    current_lr: float | None  # None when the target spans groups with different lrs
    detail: str = ""  # e.g. "3 tensors, 1.2k params"
    # Set when the module is only part of a group: offer to split it out first.
    split_name: str | None = None
    partial_of: tuple[str, ...] = ()


@dataclass(frozen=True)
class LrEdit:
    value: str  # as typed and validated: "1e-3", "*0.5", "/10"
    split_first: bool = False


class EditLrScreen(ModalScreen[LrEdit | None]):
    """Returns an :class:`LrEdit`, or None when cancelled. Nothing is applied on a bad value."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "cancel", "Cancel", id="edit_lr.cancel"),
    ]

    def __init__(self, target: LrTarget) -> None:
        super().__init__()
        self.target = target

    def compose(self) -> ComposeResult:
        t = self.target
        with Vertical(id="dialog", classes="dialog"):
            yield Label(f"Learning rate of {t.title}", classes="dialog-title")
            current = fmt_lr(t.current_lr) if t.current_lr is not None else "mixed"
            info = f"now {current}" + (f" · {t.detail}" if t.detail else "")
            yield Static(info, id="lr-info")
            yield Input(
                value=fmt_lr(t.current_lr) if t.current_lr is not None else "",
                placeholder="1e-3, *0.5 or /10",
                validators=[LrValue()],
                validate_on=["changed", "submitted"],
                id="lr-value",
            )
            yield Static("", id="lr-error", classes="error")
            if t.split_name:
                yield Static(
                    f"{t.title} is only part of group {', '.join(t.partial_of)}:",
                    classes="hint",
                )
                yield Checkbox(
                    f"split it out first, as group {t.split_name}",
                    value=True,
                    id="lr-split",
                    compact=True,
                )
            yield Static(
                "applied in place at the next step · momentum/Adam state kept", classes="hint"
            )
            with Horizontal(classes="buttons"):
                yield Button("Apply", variant="primary", id="lr-apply", compact=True)
                yield Button("Cancel", id="lr-cancel", compact=True)

    def on_mount(self) -> None:
        self.query_one("#lr-value", Input).focus()

    @on(Input.Changed, "#lr-value")
    def _changed(self, event: Input.Changed) -> None:
        error = self.query_one("#lr-error", Static)
        new = preview_lr(self.target.current_lr, event.value)
        if check_lr_value(event.value) is None:
            changed = new is not None and event.value.strip() != fmt_lr(self.target.current_lr)
            error.update(f"→ new lr {fmt_lr(new)}" if changed else "")
            error.remove_class("-shown")

    @on(Input.Submitted, "#lr-value")
    @on(Button.Pressed, "#lr-apply")
    def _apply(self) -> None:
        value = self.query_one("#lr-value", Input).value
        problem = check_lr_value(value)
        if problem is not None:
            error = self.query_one("#lr-error", Static)
            error.update(f"✗ {problem} — nothing applied")
            error.add_class("-shown")
            return
        split = False
        if self.target.split_name:
            split = self.query_one("#lr-split", Checkbox).value
        self.dismiss(LrEdit(value.strip(), split_first=split))

    @on(Button.Pressed, "#lr-cancel")
    def action_cancel(self) -> None:
        self.dismiss(None)
