"""One param group in full (enter on a group row, or ``i``): every hyper-parameter, the
scheduler's view of it, its optimizer state, its signals and the history of changes to it.

It follows the run: the app hands it each new snapshot (:meth:`GroupDetailScreen.show`).
Values are written whole (``%.6g``), never cut; narrow, the tables wrap instead.
"""

from __future__ import annotations

from typing import ClassVar

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Label, Static

from tuiconsole.engine.snapshot import Change, GroupSignals, GroupView, Snapshot
from tuiconsole.ui.fmt import fmt_bytes, fmt_count, fmt_lr
from tuiconsole.ui.theme import group_color

HISTORY_SHOWN = 200  # the newest changes listed (Snapshot.changes keeps 500)


def fmt_value(value: object) -> str:
    """A hyper-parameter in full: 0.000963, 0.9,0.999, yes/no, None."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, tuple | list):
        return ",".join(fmt_value(v) for v in value)
    return str(value)


def group_changes(changes: tuple[Change, ...], name: str) -> list[Change]:
    """The changes that touched group ``name``: those naming it, and those of the whole
    optimizer (no groups: a rebuild, an undo, a rollback ...)."""
    return [c for c in changes if not c.groups or name in c.groups]


def _section(title: str, body: RenderableType) -> Group:
    return Group(Text(title, style="bold underline"), body)


def _kv_table() -> Table:
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")
    return table


def detail_renderables(snap: Snapshot, name: str) -> list[RenderableType]:
    """What the screen shows for group ``name`` in ``snap`` (a line if it is gone)."""
    group = snap.group(name)
    if group is None:
        return [Text(f"group {name!r} is gone (a rebuild or a rollback?)", style="bold red")]
    out: list[RenderableType] = [_section("hyper-parameters", _hparams(group)), Text()]
    out += [_section("parameters and state", _state(snap, group)), Text()]
    signals = next((s for s in snap.signals if s.name == name), None)
    if signals is not None:
        every = f" (measured every {snap.signal_every} steps)" if snap.signal_every else ""
        out += [_section(f"signals at step {signals.step}{every}", _signals(signals)), Text()]
    changes = group_changes(snap.changes, name)
    out.append(_section(f"changes to this group ({len(changes)})", _history(changes)))
    return out


def _hparams(g: GroupView) -> Table:
    table = _kv_table()
    table.add_row("lr", Text(fmt_value(g.lr), style=f"bold {group_color(g.index)}"))
    for key, value in g.hparams:
        table.add_row(key, fmt_value(value))
    return table


def _state(snap: Snapshot, g: GroupView) -> Table:
    table = _kv_table()
    table.add_row("parameters", f"{g.n_tensors} tensors · {fmt_count(g.n_params)} ({g.n_params})")
    held = (
        f"{g.state_tensors} tensors · {fmt_bytes(g.state_bytes)}"
        if g.state_tensors
        else "none yet (no step since it was built or reset)"
    )
    table.add_row("state", held)
    reset = (
        "never: the script's optimizer's own"
        if g.state_reset_step is None
        else f"at step {g.state_reset_step}"
    )
    table.add_row("state reset", reset)
    sched = snap.scheduler
    if sched is None:
        table.add_row("scheduler", "none")
    else:
        chain = f" [{' → '.join(sched.chain)}]" if sched.chain else ""
        table.add_row("scheduler", f"{sched.cls}{chain}, step {sched.step}, per {sched.interval}")
        nxt = sched.next_lrs[g.index] if g.index < len(sched.next_lrs) else None
        table.add_row(
            "next lr",
            fmt_value(nxt) if nxt is not None else "not knowable (it waits on a metric, or ended)",
        )
    return table


def _signals(s: GroupSignals) -> Table:
    table = _kv_table()
    for label, value in (
        ("grad norm", s.grad_norm),
        ("param norm", s.param_norm),
        ("update ratio", s.update_ratio),
        ("adam step", s.adam_step),
    ):
        if value is not None:
            table.add_row(label, fmt_value(value))
    return table


def _history(changes: list[Change]) -> RenderableType:
    if not changes:
        return Text("none yet", style="dim")
    table = Table(box=None, padding=(0, 1), show_edge=False, header_style="dim")
    table.add_column("step", justify="right", no_wrap=True)
    table.add_column("source", no_wrap=True)
    table.add_column("command", overflow="fold")
    for c in changes[-HISTORY_SHOWN:]:
        table.add_row(str(c.step), c.source or "-", c.text)
    return table


class GroupDetailScreen(ModalScreen[str | None]):
    """Dismissed with None (closed) or ``"edit_lr"`` (``e``: the app opens the lr editor)."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,q,i", "close", "Close", id="group_detail.close"),
        Binding("e", "edit_lr", "Edit lr", id="group_detail.edit_lr"),
    ]

    def __init__(self, snap: Snapshot, name: str) -> None:
        super().__init__()
        self.group_name = name
        self._snap = snap
        self._shown: tuple[object, ...] | None = None

    def compose(self) -> ComposeResult:
        with Vertical(id="group-detail", classes="dialog -wide -tall"):
            yield Label(self._title(), id="group-detail-title", classes="dialog-title")
            with VerticalScroll(id="group-detail-scroll"):
                yield Static(id="group-detail-body")
            yield Static("e: edit lr · ↑↓ scroll · esc: close", classes="hint")

    def on_mount(self) -> None:
        self.show(self._snap)
        self.query_one("#group-detail-scroll").focus()

    def _title(self) -> Text:
        g = self._snap.group(self.group_name)
        color = group_color(g.index) if g is not None else "default"
        title = Text.assemble(("■ ", f"bold {color}"), (f"group {self.group_name}", "bold"))
        if g is not None:
            title.append(f"  lr {fmt_lr(g.lr)} · {self._snap.optimizer}", style="")
        return title

    def show(self, snap: Snapshot) -> None:
        """Redraw from a newer snapshot, if what this group shows changed."""
        self._snap = snap
        key = (
            snap.group(self.group_name),
            snap.scheduler,
            snap.changes,
            tuple(s for s in snap.signals if s.name == self.group_name),
            snap.optimizer,
        )
        if key == self._shown:
            return
        self._shown = key
        self.query_one("#group-detail-title", Label).update(self._title())
        self.query_one("#group-detail-body", Static).update(
            Group(*detail_renderables(snap, self.group_name))
        )

    def action_close(self) -> None:
        self.dismiss(None)

    def action_edit_lr(self) -> None:
        self.dismiss("edit_lr")
