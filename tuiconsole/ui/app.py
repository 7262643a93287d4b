"""ConsoleApp: the live view and keyboard steering of one training run.

The app is a client of a :class:`~tuiconsole.session.Session` only. It pulls
``session.snapshot()`` on an interval and redraws just the widgets whose data
changed; every key action becomes a command *text* sent with
``session.submit(text, source="ui")``, so it is journaled and replayable like a
typed ``:`` command. The trainer never waits on the view: a slow frame, an open
modal or a hung UI cannot stall training.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import ClassVar

from textual import on
from textual.actions import parse as parse_action
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.timer import Timer
from textual.widget import Widget
from textual.widgets import DataTable, Footer

from tuiconsole.engine.commands import CommandResult
from tuiconsole.engine.snapshot import RunState, Snapshot
from tuiconsole.session import DETACHED, Session
from tuiconsole.ui.completion import Vocabulary
from tuiconsole.ui.fmt import fmt_count
from tuiconsole.ui.guard import LrJump, big_jumps, lr_jumps
from tuiconsole.ui.keymap import binding_ids, default_path, load_keymap
from tuiconsole.ui.palette import ConsoleCommands, PaletteEntry
from tuiconsole.ui.screens.confirm import ConfirmScreen, GuardScreen, RebuildScreen
from tuiconsole.ui.screens.edit_lr import EditLrScreen, LrEdit, LrTarget
from tuiconsole.ui.screens.group_detail import GroupDetailScreen
from tuiconsole.ui.screens.help import HelpScreen, key_rows
from tuiconsole.ui.screens.plots import PlotScreen
from tuiconsole.ui.screens.split_name import SplitNameScreen
from tuiconsole.ui.widgets.charts import LossCharts
from tuiconsole.ui.widgets.command_line import CommandInput, CommandLine
from tuiconsole.ui.widgets.group_table import GroupTable
from tuiconsole.ui.widgets.layer_tree import LayerTree
from tuiconsole.ui.widgets.run_log import RunLog
from tuiconsole.ui.widgets.status import AttachBadge, StatusBar

# After this many unchanged polls, poll only every SLOW_EVERY-th tick (idle/paused/finished).
IDLE_POLLS = 20
SLOW_EVERY = 5
STOP_WAIT_S = 3.0
# Every frame is GIL time taken from the training thread in this process (issue 5: the
# console may cost <= 3% of a tiny model's steps/s). So while a run trains and nobody has
# pressed a key or sent a command for ACTIVE_S, the console refreshes less: the status
# line (numbers) at most RUNNING_HZ, and the slow parts (loss charts, group table, tree
# labels: the costliest redraws) every SLOW_PARTS_S. A key press or a command result
# brings back the full rate at once; paused or finished runs always get it.
RUNNING_HZ = 3.0
SLOW_PARTS_S = (
    1.5  # charts: 60% of the UI thread at 0.5 s; at 1 s the console took 2.1-2.6% of a core (mlp)
)
ACTIVE_S = 1.5
PAUSED_STATES = (RunState.PAUSED, RunState.NAN_PAUSED)
PAUSE_INTENT_S = 3.0  # how long a space press outranks a view that has not caught up
# Actions that steer the run: not offered once it has ended, is out of reach, or when
# this console is a read-only attach.
STEER_ACTIONS = frozenset(
    {"toggle_pause", "step", "evaluate", "edit_lr", "decay", "decay_all", "undo", "mark"}
    | {"split", "rebuild", "checkpoint"}
)
TREE_ACTIONS = frozenset({"mark", "split", "filter_tree"})  # the tree has focus
SELECTION_ACTIONS = frozenset({"edit_lr", "decay"})  # the tree or the group table has focus
ROLE_WORDS = {"control": "controlling", "watch": "watching"}  # the badge's word for a role


class CommandDone(Message):
    """Posted (thread-safely) when the trainer resolved a command the console sent."""

    def __init__(self, text: str, result: CommandResult, then: Callable[[], object] | None) -> None:
        super().__init__()
        self.text = text
        self.result = result
        self.then = then


class ConsoleApp(App[str | None]):
    """The console. ``ConsoleApp(session).run()``; the caller closes the session afterwards."""

    CSS_PATH = "console.tcss"
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (110, "-wide")]  # App declares its type
    TITLE = "tuiconsole"
    COMMANDS = App.COMMANDS | {ConsoleCommands}
    # The footer shows these (show=True) and the `?` screen lists them all: the one table.
    # In this order: where the footer is too narrow for all, what is cut is the tail.
    BINDINGS: ClassVar[list[BindingType]] = [
        # Two bindings on space: the footer says what it does now (check_action picks).
        # The footer is one line for all that applies: short words, ␣ for space.
        Binding(
            "space",
            "toggle_pause('pause')",
            "Pause",
            tooltip="Pause / resume training",
            id="pause",
            key_display="␣",
        ),
        Binding(
            "space",
            "toggle_pause('resume')",
            "Resume",
            tooltip="Resume training",
            id="resume",
            key_display="␣",
        ),
        Binding("n", "step", "Step", tooltip="Run exactly one step (while paused)", id="step"),
        Binding(
            "e",
            "edit_lr",
            "lr",
            tooltip="Edit the lr of the selected group/module",
            id="edit_lr",
        ),
        Binding(
            "enter",
            "edit_lr",
            "Edit lr",
            show=False,
            tooltip="Edit the lr (tree)",
            id="edit_lr_enter",
        ),
        Binding(
            "d", "decay", "Decay", tooltip="Decay the selected group's lr (state kept)", id="decay"
        ),
        Binding(
            "colon", "command_line", "Cmd", tooltip="Command line (full grammar)", id="command_line"
        ),
        Binding("question_mark", "help", "Help", tooltip="This help", id="help"),
        Binding(
            "q", "request_quit", "Quit", tooltip="Quit (asks first; stops training)", id="quit"
        ),
        Binding(
            "q",
            "request_quit('detach')",
            "Detach",
            show=False,
            tooltip="Detach (attached: the run goes on)",
            id="quit_detach",
        ),
        Binding(
            "ctrl+d",
            "detach",
            "Detach",
            tooltip="Detach: the run keeps training in the background (tuiconsole attach)",
            id="detach",
        ),
        Binding("m", "mark", "Mark", tooltip="Mark/unmark a module for split", id="mark"),
        Binding(
            "s",
            "split",
            "Split",
            tooltip="Split marked (or selected) modules into a new group",
            id="split",
        ),
        Binding(
            "slash", "filter_tree", "Find", tooltip="Filter the model tree by name", id="filter"
        ),
        Binding(
            "D",
            "decay_all",
            "All",
            tooltip="Decay every group's lr (asks first)",
            id="decay_all",
        ),
        Binding("u", "undo", "Undo", tooltip="Undo the last optimizer change", id="undo"),
        Binding("c", "checkpoint", "Ckpt", tooltip="Save a checkpoint", id="checkpoint"),
        Binding(
            "i",
            "group_detail",
            "Group",
            show=False,
            tooltip="Group details: hyper-parameters, state, scheduler, changes (or enter)",
            id="group_detail",
        ),
        Binding(
            "ctrl+t",
            "take_control",
            "Control",
            tooltip="Take control of an attached run (another console then watches)",
            id="take_control",
        ),
        Binding(
            "f",
            "log_filter",
            "Filter log",
            tooltip="Log: all / commands / errors (log focused)",
            id="log_filter",
        ),
        Binding(
            "ctrl+p",
            "command_palette",
            "Palette",
            tooltip="Command palette",
            id="palette",
            priority=True,
        ),
        Binding(
            "g",
            "plots",
            "Plots",
            show=False,
            tooltip="Full-screen plots: loss, lr, grad norm, update ratio, lr range test",
            id="plots",
        ),
        Binding(
            "v", "evaluate", "Eval", show=False, tooltip="Evaluate now on eval_loader", id="eval"
        ),
        Binding(
            "R",
            "rebuild",
            "Rebuild",
            show=False,  # rare and drops state: in ? and the palette, not the footer
            tooltip="Rebuild the optimizer (drops its state)",
            id="rebuild",
        ),
        Binding(
            "z",
            "zoom",
            "Zoom",
            show=False,
            tooltip="Zoom the focused pane (z again: back)",
            id="zoom",
        ),
        Binding(
            "ctrl+q",
            "request_quit('any')",
            "Quit",
            show=False,
            priority=True,
            tooltip="Quit",
            id="quit_ctrl_q",
        ),
        Binding(
            "ctrl+c",
            "request_quit('any')",
            "Quit",
            show=False,
            priority=True,
            tooltip="Quit",
            id="quit_ctrl_c",
        ),
    ]

    def __init__(
        self,
        session: Session,
        *,
        refresh_hz: float = 10.0,
        decay_factor: float = 0.1,
        script_name: str = "",
        can_detach: bool | None = None,
        keymap_file: str | Path | None = None,
    ) -> None:
        """``can_detach`` (default: the session's): ctrl+d ends ``run()`` with
        ``DETACHED`` and the caller keeps the run going. Where the session does not
        own its run (``attach``), ``q`` only detaches: stopping it is the explicit
        ``:stop``. ``keymap_file``: the user's keymap (default: keymap.default_path())."""
        super().__init__()
        if refresh_hz <= 0:
            raise ValueError("refresh_hz must be > 0")
        self.session = session
        self.refresh_hz = refresh_hz
        self.decay_factor = decay_factor
        self.script_name = script_name
        self.owns_run = session.owns_run
        self.can_detach = session.can_detach if can_detach is None else can_detach
        self.snap: Snapshot | None = None
        self.frames = 0  # snapshots applied (tests and the benchmark read it)
        self._idle_polls = 0
        self._failed = False  # the last snapshot() raised (a remote that went away)
        self._poll_timer: Timer | None = None
        self._poll_due = 0.0
        self._active_until = 0.0  # full refresh rate until then (a key or command)
        # (paused?, until): what the last space press asked for, trusted over the view
        # until the view shows it, so a second press before the next snapshot arrives
        # (a remote session lags a frame) toggles back instead of repeating itself.
        self._pause_intent: tuple[bool, float] | None = None
        self._slow_at = 0.0  # when the slow parts last redrew
        self._slow_pending = False  # the shown snapshot's slow parts are not drawn yet
        self._last_pane = "tree"
        self._quitting = False
        self._lost: str | None = None
        self._pane = "tree"  # the focused pane: "tree" | "groups" | "log"
        self._bindings_key: tuple[object, ...] = ()  # what the footer was computed for
        self._in_flight: dict[str, Future[CommandResult]] = {}  # text -> its future
        self._role_seq = 0
        self.keymap_file = Path(keymap_file) if keymap_file is not None else default_path()
        if script_name:
            self.sub_title = script_name

    # -- layout -----------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        # Kept as attributes: App.query_one searches the *active* screen, which is a modal
        # while one is open, and the refresh must keep drawing the main screen under it.
        self.status_bar = StatusBar(id="status")
        self.layer_tree = LayerTree(id="tree")
        self.layer_tree.border_title = "model"
        self.group_table = GroupTable(id="groups")
        self.group_table.border_title = "param groups"
        self.charts = LossCharts(id="charts")
        self.charts.border_title = "loss · g plots"
        self.run_log = RunLog(id="log")
        self.run_log.border_title = "log"
        self.command_line = CommandLine(self._vocabulary, id="cmdline")
        yield self.status_bar
        with Horizontal(id="body"):
            yield self.layer_tree
            with Vertical(id="right"):
                yield self.group_table
                yield self.charts
        yield self.run_log
        yield self.command_line
        yield Footer(compact=True, show_command_palette=False)

    def on_mount(self) -> None:
        self.layer_tree.focus()
        self.run_log.note("keys: space pause · e lr · d decay · s split · : command · ? help")
        self._load_keymap()
        self.poll(force=True)
        self._schedule(1 / self.refresh_hz)

    # -- the refresh loop -------------------------------------------------------------------

    def _schedule(self, delay: float) -> None:
        """(Re)arm the one-shot poll timer: the delay adapts to what the run is doing."""
        if self._poll_timer is not None:
            self._poll_timer.stop()
        self._poll_due = time.monotonic() + delay
        self._poll_timer = self.set_timer(delay, self._tick, name="snapshot-poll")

    def _tick(self) -> None:
        self._poll_timer = None
        try:
            self.poll()
        finally:
            self._schedule(self._next_delay())

    def _next_delay(self) -> float:
        """Seconds to the next poll: 1/refresh_hz, less often when idle or quietly training."""
        tick = 1 / self.refresh_hz
        if self._failed:
            return tick * SLOW_EVERY * 4
        if self._idle_polls >= IDLE_POLLS:
            return tick * SLOW_EVERY
        if self.state == RunState.RUNNING and time.monotonic() >= self._active_until:
            return max(tick, 1 / RUNNING_HZ)
        return tick

    def poll(self, force: bool = False, *, slow_later: bool = False) -> None:
        """Pull the newest snapshot; redraw only what changed. Cheap when nothing did.

        After IDLE_POLLS polls with nothing new on screen (paused, finished, a stalled
        remote), polls come SLOW_EVERY times less often; a key press restores the full rate.
        """
        lost = self._connection_lost()
        if lost != self._lost:
            self._lost, force = lost, True
            if lost and (self.snap is None or self.snap.status.state == RunState.LOADING):
                self.exit()  # the run never came up: its caller says why, in the terminal
                return
        try:
            snap = self.session.snapshot()
        except Exception as exc:  # a remote session that went away: show it, don't crash
            self.run_log.note(f"snapshot failed: {type(exc).__name__}: {exc}", error=True)
            self._failed = True
            return
        self._failed = False
        self._follow_roles()
        if snap is not None and (
            force
            or self.snap is None
            or snap.seq != self.snap.seq
            or snap.status.state != self.snap.status.state  # LOADING -> the run
        ):
            changed = self.apply_snapshot(snap, slow_later=slow_later)
        elif self._slow_pending and self.snap is not None:
            changed = self._show_slow_parts(self.snap, time.monotonic())
        else:
            changed = False
        if changed:
            self._idle_polls = 0
        else:
            self._idle_polls += 1

    def _connection_lost(self) -> str | None:
        """Why the session lost its run, or None (always None for a local run)."""
        if not self.session.disconnected:
            return None
        return self.session.disconnect_reason or "connection lost"

    def wake(self) -> None:
        """Back to the full refresh rate (a key was pressed or a command sent)."""
        self._idle_polls = 0
        now = time.monotonic()
        self._active_until = now + ACTIVE_S
        tick = 1 / self.refresh_hz
        if self._poll_timer is not None and self._poll_due > now + tick:
            self._schedule(tick)

    def apply_snapshot(self, snap: Snapshot, *, slow_later: bool = False) -> bool:
        """Show ``snap``; returns True if any widget redrew.

        The status line and the log follow every snapshot; the slow parts (charts, group
        table, tree) follow at most every SLOW_PARTS_S while the run trains (the group
        table and tree at every snapshot for ACTIVE_S after a key or a command).
        """
        was = self.snap.status.state if self.snap is not None else None
        if was == RunState.LOADING and snap.status.state != RunState.LOADING:
            self.run_log.last_seq = 0  # the run's own log begins: its seqs start at 1
        self.snap = snap
        self.frames += 1
        status = snap.status
        if not status.script and self.script_name:
            status = replace(status, script=self.script_name)
        changed = self.status_bar.show(
            snap, status=status, lost=self._lost, badge=self.attach_badge()
        )
        changed = self.run_log.show(snap.log) or changed
        for screen in self.screen_stack:
            if isinstance(screen, GroupDetailScreen):
                screen.show(snap)
        self._follow_roles()
        self._refresh_footer()
        if slow_later:
            # A command's answer: the status line and the log go out in this frame; the
            # tree, table and charts (the costly redraws) just after it, not before it.
            self._slow_pending = True
            self.call_after_refresh(self._show_deferred)
            return changed
        return self._show_slow_parts(snap, time.monotonic()) or changed

    def _show_deferred(self) -> None:
        if self._slow_pending and self.snap is not None:
            self._show_slow_parts(self.snap, time.monotonic())

    def _show_slow_parts(self, snap: Snapshot, now: float) -> bool:
        due = snap.status.state != RunState.RUNNING or now - self._slow_at >= SLOW_PARTS_S
        changed = False
        if due or now < self._active_until:
            changed = self.layer_tree.show(snap)
            changed = self.group_table.show(snap.groups, snap.signals) or changed
        if due:
            self._slow_at = now
            changed = self.charts.show(snap) or changed
        self._slow_pending = not due
        return changed

    def on_key(self) -> None:
        self.wake()

    def attach_badge(self) -> AttachBadge | None:
        """The header's ``ATTACHED <id> · N clients`` badge, where this console is attached
        (its session does not own the run). A RemoteSession says its run's id, the clients
        the server counts (``clients``) and, where it has one, this client's ``role``."""
        if self.owns_run:
            return None
        session = self.session
        clients = getattr(session, "clients", None)
        return AttachBadge(
            run_id=str(getattr(session, "run_id", "") or ""),
            clients=clients if isinstance(clients, int) else None,
            role=ROLE_WORDS.get(self.attach_role or "", "")
            if not self.attach_read_only
            else "read-only",
        )

    # -- sending commands -------------------------------------------------------------------

    @property
    def state(self) -> RunState | None:
        return self.snap.status.state if self.snap else None

    def send(self, text: str, then: Callable[[], object] | None = None) -> Future[CommandResult]:
        """Submit one command text; ``then`` runs (on the UI thread) if it succeeded.

        The same text again before its result came back is not sent twice (a key held
        down, an impatient second press): the first one's future is returned.
        """
        self.wake()
        waiting = self._in_flight.get(text)
        if waiting is not None and not waiting.done():
            self.notify(
                f"{text}: sent, waiting for its result", severity="information", markup=False
            )
            return waiting
        future = self.session.submit(text, source="ui")
        self._in_flight[text] = future
        future.add_done_callback(partial(self._resolved, text, then))
        return future

    def is_pending(self, text: str) -> bool:
        """``text`` was sent and its result has not come back yet."""
        future = self._in_flight.get(text)
        return future is not None and not future.done()

    def _resolved(
        self, text: str, then: Callable[[], object] | None, future: Future[CommandResult]
    ) -> None:
        # Runs in whichever thread resolved the future: only post a message from here.
        try:
            result = future.result()
        except Exception as exc:  # the seam promises results, not exceptions; be safe anyway
            result = CommandResult(False, f"{type(exc).__name__}: {exc}", text)
        with contextlib.suppress(Exception):
            self.post_message(CommandDone(text, result, then))

    def on_command_done(self, message: CommandDone) -> None:
        self.wake()
        if (waiting := self._in_flight.get(message.text)) is not None and waiting.done():
            del self._in_flight[message.text]
        # The command's effect is already in the session's snapshot: the trainer
        # publishes before it answers, and a server sends that frame ahead of the
        # result. Show it now, not at the next tick.
        self.poll(slow_later=True)
        if self._poll_timer is not None:
            self._schedule(1 / self.refresh_hz)
        if not message.result.ok:
            if message.text in ("pause", "resume"):
                self._pause_intent = None
            self.notify(str(message.result), title=message.text, severity="error", markup=False)
            return
        if message.text == "undo":  # say what was undone (the log has it too)
            self.notify(message.result.message or "undone", title="undo", markup=False)
        if message.then is not None:
            message.then()

    def _steer(self, text: str, then: Callable[[], object] | None = None) -> bool:
        """Send a command that needs a live run; explain instead when the run has ended."""
        state = self.state
        if state is not None and state.is_terminal:
            self.notify(
                f"the run has ended ({state.value}); q quits", severity="warning", markup=False
            )
            return False
        if self.is_pending(text):
            self.send(text, then)  # says it is waiting; sends nothing
            return False
        self.send(text, then)
        return True

    # -- selection --------------------------------------------------------------------------

    def on_descendant_focus(self, event: Message) -> None:
        widget = getattr(event, "widget", None) or self.focused
        if isinstance(widget, LayerTree):
            self._last_pane = self._pane = "tree"
        elif isinstance(widget, GroupTable):
            self._last_pane = self._pane = "groups"
        elif isinstance(widget, RunLog):
            self._pane = "log"
        self._refresh_footer()

    def _selected(self) -> tuple[str, str] | None:
        """("group", name) or ("module", path) from the focused (or last focused) pane."""
        if self._last_pane == "groups":
            name = self.group_table.selected_group
            return ("group", name) if name is not None else None
        path = self.layer_tree.selected_path
        return ("module", path) if path is not None else None

    def _module_target(self, path: str) -> tuple[str, bool] | None:
        """(command TARGET, covers whole groups) for a module, or None if it has no groups."""
        tree = self.layer_tree
        mod = tree.module(path)
        if mod is None or not mod.subtree_groups or self.snap is None:
            return None
        if path == "":
            return "all", True
        total = sum(g.n_params for g in self.snap.groups if g.name in mod.subtree_groups)
        covers = tree.trainable_in_subtree(path) >= total
        if covers and len(mod.subtree_groups) == 1:
            return mod.subtree_groups[0], True
        return path, covers

    def _unique_group_name(self, base: str) -> str:
        names = {g.name for g in self.snap.groups} if self.snap else set()
        name, i = base or "group", 2
        while name in names or name == "all":
            name, i = f"{base}-{i}", i + 1
        return name

    # -- actions: run control ---------------------------------------------------------------

    def _shows_paused(self) -> bool:
        """Paused as far as the user knows: the view, or a space press it has not caught up
        with yet."""
        paused = self.state in PAUSED_STATES
        if self._pause_intent is not None:
            wanted, until = self._pause_intent
            if paused != wanted and time.monotonic() < until:
                paused = wanted
        return paused

    def action_toggle_pause(self, _shown: str = "") -> None:
        paused = self._shows_paused()
        if self._steer("resume" if paused else "pause"):
            self._pause_intent = (not paused, time.monotonic() + PAUSE_INTENT_S)
            self._refresh_footer(force=True)

    def action_step(self) -> None:
        steppable = (*PAUSED_STATES, RunState.STEPPING)
        if self.state not in steppable and not (self.state and self.state.is_terminal):
            self.notify("n steps while paused: press space to pause first", severity="warning")
            return
        self._steer("step")

    def action_evaluate(self) -> None:
        self._steer("eval")

    def action_checkpoint(self) -> None:
        self.send("checkpoint")

    def action_undo(self) -> None:
        """``undo``: the engine reverts the last optimizer change; its answer is shown."""
        self._steer("undo")

    # -- actions: learning rates ------------------------------------------------------------

    def action_edit_lr(self) -> None:
        selected = self._selected()
        if selected is None or self.snap is None:
            self.notify("select a group (table) or a module (tree) first", severity="warning")
            return
        kind, name = selected
        if kind == "group":
            self.edit_group_lr(name)
            return
        target = self._module_target(name)
        if target is None:
            self.notify(f"{name or 'the model'} has no trainable parameters", severity="warning")
            return
        cmd_target, covers = target
        mod = self.layer_tree.module(name)
        assert mod is not None
        lrs = {g.lr for g in self.snap.groups if g.name in mod.subtree_groups}
        current = lrs.pop() if len(lrs) == 1 else None
        title = "all groups" if name == "" else f"{name} ({mod.cls})"
        detail = f"group {', '.join(mod.subtree_groups)}"
        split_name = None if covers else self._unique_group_name(name)
        info = LrTarget(
            title=title,
            current_lr=current,
            detail=detail,
            split_name=split_name,
            partial_of=() if covers else mod.subtree_groups,
        )
        self.push_screen(EditLrScreen(info), partial(self._apply_lr, cmd_target, name, split_name))

    def edit_group_lr(self, name: str) -> None:
        group = self.snap.group(name) if self.snap else None
        if group is None:
            self.notify(f"no group {name!r}", severity="warning")
            return
        info = LrTarget(
            title=f"group {name}",
            current_lr=group.lr,
            detail=f"{group.n_tensors} tensors · {fmt_count(group.n_params)} params",
        )
        self.push_screen(EditLrScreen(info), partial(self._apply_lr, name, name, None))

    def _apply_lr(
        self, target: str, path: str, split_name: str | None, edit: LrEdit | None
    ) -> None:
        if edit is None:
            return
        # The change as the groups see it (a module: the groups holding it), asked first
        # when big; the split (if any) and the change go only after a yes.
        self.guarded(
            f"lr {path if path else target} {edit.value}",
            partial(self._send_lr, target, path, split_name, edit),
        )

    def _send_lr(self, target: str, path: str, split_name: str | None, edit: LrEdit) -> None:
        if not (edit.split_first and split_name):
            self._steer(f"lr {target} {edit.value}")
        elif edit.value[:1] in "*/":
            # Relative: split first, then scale the new group once the split succeeded.
            self._steer(
                f"split {split_name} {path}",
                then=lambda: self._steer(f"lr {split_name} {edit.value}"),
            )
        else:
            self._steer(f"split {split_name} {path} lr={edit.value}")

    def action_decay(self) -> None:
        selected = self._selected()
        if selected is None:
            self.notify("select a group or a module first", severity="warning")
            return
        kind, name = selected
        target = name
        if kind == "module":
            found = self._module_target(name)
            if found is None:
                self.notify(
                    f"{name or 'the model'} has no trainable parameters", severity="warning"
                )
                return
            target = found[0]
        self.decay(target)

    def action_decay_all(self) -> None:
        self.decay("all", always_ask=True)

    def decay(self, target: str, *, always_ask: bool = False) -> None:
        text = f"decay {self.decay_factor!r} {target}"
        self.guarded(text, partial(self._steer, text), always_ask=always_ask)

    # -- guard rails ------------------------------------------------------------------------

    def lr_jumps(self, text: str) -> list[LrJump]:
        """What ``text`` (an ``lr`` or ``decay``) would do to each shown group's lr."""
        groups = self.snap.groups if self.snap else ()

        def module_groups(path: str) -> tuple[str, ...]:
            mod = self.layer_tree.module(path)
            return mod.subtree_groups if mod is not None else ()

        return lr_jumps(text, groups, module_groups)

    def guarded(self, text: str, go: Callable[[], object], *, always_ask: bool = False) -> None:
        """Run ``go`` now, or after a yes when ``text`` changes an lr by BIG_FACTOR or more
        (or ``always_ask``: D, every group at once)."""
        jumps = self.lr_jumps(text)
        big = big_jumps(jumps)
        if not big and not always_ask:
            go()
            return
        shown = big or jumps
        lines = [j.describe() for j in shown[:6]]
        if len(shown) > 6:
            lines.append(f"… and {len(shown) - 6} more groups")
        factor = max((j.factor for j in big), default=0.0)
        title = f"Change the lr {factor:.3g}x?" if big else "Change every group's lr?"
        if big and math.isinf(factor):
            title = "Set an lr to 0?" if any(j.new == 0 for j in big) else "Change the lr?"

        def answered(yes: bool | None) -> None:
            if yes:
                go()

        body = f"{text}\n" + "\n".join(lines) + "\nmomentum/Adam state kept"
        self.push_screen(GuardScreen(title, body, "Apply", "Cancel"), answered)

    # -- actions: groups --------------------------------------------------------------------

    def action_mark(self) -> None:
        tree = self.layer_tree
        if self._last_pane != "tree" or tree.selected_path is None:
            self.notify("mark modules in the tree (m), then s splits them", severity="warning")
            return
        if tree.selected_path == "":
            self.notify("the model itself cannot be split off", severity="warning")
            return
        tree.toggle_mark(tree.selected_path)
        tree.action_cursor_down()

    def action_split(self) -> None:
        tree = self.layer_tree
        modules = sorted(tree.marked)
        if not modules:
            if self._last_pane != "tree" or not tree.selected_path:
                self.notify("select (or m-mark) modules in the tree to split", severity="warning")
                return
            modules = [tree.selected_path]
        bare = [m for m in modules if not (mod := tree.module(m)) or not mod.subtree_groups]
        if bare:
            self.notify(f"no trainable parameters in {', '.join(bare)}", severity="warning")
            return
        existing = [g.name for g in self.snap.groups] if self.snap else []
        base = modules[0] if len(modules) == 1 else _common_path(modules)
        default = self._unique_group_name(base or f"group{len(existing)}")
        self.push_screen(
            SplitNameScreen(modules, default, existing), partial(self._apply_split, modules)
        )

    def _apply_split(self, modules: list[str], name: str | None) -> None:
        if name:
            self._steer(f"split {name} {' '.join(modules)}", then=self.layer_tree.clear_marks)

    def action_rebuild(self) -> None:
        current = self.snap.optimizer if self.snap else ""
        self.push_screen(RebuildScreen(current), self._apply_rebuild)

    def _apply_rebuild(self, text: str | None) -> None:
        if text:
            self._steer(text)

    # -- command line, help, palette, quit --------------------------------------------------

    def _vocabulary(self) -> Vocabulary:
        groups = [g.name for g in self.snap.groups] if self.snap else []
        return Vocabulary(groups=groups, modules=self.layer_tree.module_paths)

    def action_command_line(self) -> None:
        self.command_line.open()

    @on(CommandLine.Submitted)
    def _command_line_submitted(self, event: CommandLine.Submitted) -> None:
        self._close_command_line()
        self.submit_line(event.line)

    def submit_line(self, line: str) -> None:
        """A typed command (``:`` line or palette); ``stop`` and big lr changes ask first;
        ``control`` (not a run command: the connection's) takes control of an attached run."""
        word = line.split(maxsplit=1)[0].lstrip(":").lower()
        if word == "stop":
            self.confirm_stop()
        elif word == "control":
            self.action_take_control()
        else:
            self.guarded(line, partial(self.send, line))

    @on(CommandLine.Closed)
    def _command_line_closed(self) -> None:
        if self.command_line.mode == "filter" and self.layer_tree.filter_text:
            self._tree_filter_changed(CommandLine.FilterChanged("", done=False))  # esc clears
        self._close_command_line()

    def _close_command_line(self) -> None:
        self.command_line.close()
        widget: Widget = self.group_table if self._last_pane == "groups" else self.layer_tree
        widget.focus()

    def action_plots(self) -> None:
        self.push_screen(PlotScreen(lambda: self.snap))

    def action_help(self) -> None:
        self.push_screen(HelpScreen(key_rows(self, self.screen.active_bindings)))

    @on(DataTable.RowSelected, "#groups")
    def _group_row_selected(self, event: DataTable.RowSelected) -> None:
        if event.row_key.value is not None:
            self.open_group_detail(str(event.row_key.value))

    def action_group_detail(self) -> None:
        """``i``: the selected group (table), or the one group of the selected module (tree)."""
        selected = self._selected()
        name = None
        if selected is not None and selected[0] == "group":
            name = selected[1]
        elif selected is not None:
            mod = self.layer_tree.module(selected[1])
            groups = mod.subtree_groups if mod is not None else ()
            if len(groups) == 1:
                name = groups[0]
            elif groups:
                self.notify(
                    f"{selected[1] or 'the model'} is in {len(groups)} groups: pick one in the "
                    "group table (tab)",
                    severity="warning",
                )
                return
        if name is None:
            self.notify("select a group (table) or a module (tree) first", severity="warning")
            return
        self.open_group_detail(name)

    def open_group_detail(self, name: str) -> None:
        if self.snap is None or self.snap.group(name) is None:
            self.notify(f"no group {name!r}", severity="warning")
            return

        def closed(result: str | None) -> None:
            if result == "edit_lr":
                self.edit_group_lr(name)

        self.push_screen(GroupDetailScreen(self.snap, name), closed)

    def palette_entries(self) -> list[PaletteEntry]:
        entries = []
        seen = set()
        for binding in self.BINDINGS:
            assert isinstance(binding, Binding)
            if binding.action in seen or binding.action in ("command_palette",):
                continue
            _, name, params = parse_action(binding.action)
            if self.check_action(name, params) is False:
                continue  # the palette offers what the footer would: what applies now
            seen.add(binding.action)
            entries.append(
                PaletteEntry(
                    binding.tooltip or binding.description,
                    partial(self.run_action, binding.action),
                    f"key: {self.get_key_display(binding)}",
                )
            )
        for g in self.snap.groups if self.snap else ():
            entries.append(
                PaletteEntry(f"Edit lr of group {g.name}", partial(self.edit_group_lr, g.name))
            )
            entries.append(
                PaletteEntry(
                    f"Details of group {g.name}",
                    partial(self.open_group_detail, g.name),
                    "hyper-parameters, state, scheduler, changes",
                )
            )
            entries.append(
                PaletteEntry(
                    f"Decay group {g.name} by {self.decay_factor:g}",
                    partial(self.decay, g.name),
                    "momentum/Adam state kept",
                )
            )
        return entries

    def action_request_quit(self, _which: str = "") -> None:
        if isinstance(self.screen, ConfirmScreen):  # q / ctrl+c pressed again: yes
            self.screen.dismiss(True)
            return
        state = self.state
        if self.owns_run and self._lost is None and state is not None and state.is_terminal:
            self._quit_answered(True)  # nothing to stop, nothing to lose: no question
            return
        if self._lost is not None:
            title, body, yes = (
                "Quit tuiconsole?",
                f"The run is out of reach: {self._lost}",
                "Quit",
            )
        elif not self.owns_run:
            title, body, yes = (
                "Detach?",
                "The run keeps training; `tuiconsole attach` returns.",
                "Detach",
            )
        elif state is not None and state.is_terminal:
            title, body, yes = (
                "Quit tuiconsole?",
                "The run has ended; its journal is complete.",
                "Quit",
            )
        else:
            title, body, yes = (
                "Quit tuiconsole?",
                "Training is stopped cleanly and the journal flushed.",
                "Quit",
            )
        self.push_screen(ConfirmScreen(title, body, yes), self._quit_answered)

    async def action_quit(self) -> None:
        # The system "Quit" palette command lands here: ask first, like `q`.
        self.action_request_quit()

    def _quit_answered(self, confirmed: bool | None) -> None:
        if not confirmed or self._quitting:
            return
        self._quitting = True
        if not self.owns_run:
            self.exit()  # an attached console only detaches; the run goes on
        else:
            self.run_worker(self._stop_and_exit(), exclusive=True, group="quit")

    async def _stop_and_exit(self) -> None:
        state = self.state
        if state is None or not state.is_terminal:
            self.run_log.note("stopping training…")
            try:
                future = self.session.submit("stop", source="ui")
                await asyncio.wait_for(asyncio.wrap_future(future), STOP_WAIT_S)
            except Exception:  # timeout or a dead session: quit anyway
                pass
        self.exit()

    def action_detach(self) -> None:
        """Leave the run training in the background (a local run the CLI serves, or an
        attached one); the CLI or `attach` does the rest after ``run()`` returns."""
        if self.can_detach:
            self.exit(DETACHED)

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """What the footer offers (and the keys do): only what applies now, to the focused
        pane. Refreshed when the run's state, the pane or this console's role changes."""
        if action == "detach":
            return self.can_detach and self._lost is None
        if action == "request_quit":
            detaching = not self.owns_run and self._lost is None
            if parameters[:1] == ("any",):
                return True
            return detaching if parameters[:1] == ("detach",) else not detaching
        if action == "take_control":
            return self.attach_role == "watch" and not self.attach_read_only
        if action in STEER_ACTIONS:
            state = self.state
            if self._lost is not None or self.attach_read_only:
                return False
            if state is not None and (state.is_terminal or state == RunState.LOADING):
                return False  # ended, or the script still loads: nothing to steer yet
            if action == "toggle_pause":
                return (parameters[:1] == ("resume",)) == self._shows_paused()
        if action in TREE_ACTIONS:
            return self._pane == "tree"
        if action in SELECTION_ACTIONS:
            return self._pane in ("tree", "groups")
        if action == "log_filter":
            return self._pane == "log"
        return True

    def _refresh_footer(self, force: bool = False) -> None:
        """refresh_bindings, only when something check_action reads has changed."""
        key = (
            self.state,
            self._lost,
            self._pane,
            self._shows_paused(),
            self.attach_role,
            self.attach_read_only,
        )
        if force or key != self._bindings_key:
            self._bindings_key = key
            self.refresh_bindings()

    # -- attached: control ------------------------------------------------------------------

    @property
    def attach_role(self) -> str | None:
        """ "control" | "watch" when the run is served to this console over its socket
        (attached, or the console of `tuiconsole run`); None for a run in this process."""
        role = getattr(self.session, "role", None)
        return str(role) if role else None

    @property
    def attach_clients(self) -> int:
        """Consoles attached to the run (this one included); 0 for a run in this process."""
        return int(getattr(self.session, "clients", 0) or 0)

    @property
    def attach_id(self) -> str:
        """How the run's server names this console ("remote:<pid>"); "" locally."""
        return str(getattr(self.session, "client_id", "") or "")

    @property
    def attach_controller(self) -> str:
        """Who has control of the run ("" when nobody, or locally)."""
        return str(getattr(self.session, "controller", "") or "")

    @property
    def attach_read_only(self) -> bool:
        return bool(getattr(self.session, "read_only", False))

    def _follow_roles(self) -> None:
        """Say it when control changed hands (the session's role frames)."""
        seq = int(getattr(self.session, "role_seq", 0) or 0)
        if seq == self._role_seq:
            return
        self._role_seq = seq
        message = str(getattr(self.session, "role_message", "") or "")
        if message:
            self.run_log.note(message)
        self._refresh_footer()

    def action_take_control(self) -> None:
        take = getattr(self.session, "take_control", None)
        if take is None or self.attach_role is None:
            self.notify("this console steers its own run: nothing to take", markup=False)
            return
        if self.attach_read_only:
            self.notify(
                "read-only attach: attach without --read-only to steer",
                severity="warning",
                markup=False,
            )
            return
        take()
        self.wake()

    # -- view: zoom, tree filter, log filter ------------------------------------------------

    def action_zoom(self) -> None:
        """The focused pane full screen (z again, or escape: back)."""
        screen = self.screen
        if screen.maximized is not None:
            screen.minimize()
            return
        pane = {"tree": self.layer_tree, "groups": self.group_table, "log": self.run_log}
        widget = pane.get(self._pane, self.layer_tree)
        screen.maximize(widget, container=False)

    def action_filter_tree(self) -> None:
        self.command_line.open_filter(self.layer_tree.filter_text)

    def action_log_filter(self) -> None:
        mode = self.run_log.cycle_filter()
        self.run_log.border_title = "log" if mode == "all" else f"log · {mode} (f: next)"

    @on(CommandLine.FilterChanged)
    def _tree_filter_changed(self, event: CommandLine.FilterChanged) -> None:
        count = self.layer_tree.set_filter(event.text)
        title = "model" if not event.text else f"model · /{event.text} · {count} match"
        self.layer_tree.border_title = title + ("" if count == 1 or not event.text else "es")
        if event.done:
            self._close_command_line()

    # -- keymap -----------------------------------------------------------------------------

    def _load_keymap(self) -> None:
        known = binding_ids(self.BINDINGS)
        for node_type in (LayerTree, GroupTable, RunLog, CommandInput):
            known |= binding_ids(getattr(node_type, "BINDINGS", ()))
        keymap = load_keymap(self.keymap_file, known)
        for warning in keymap.warnings:
            self.run_log.note(warning, error=True)
        if keymap.keys:
            self.set_keymap(keymap.keys)

    def confirm_stop(self) -> None:
        """``stop`` typed on the command line or picked in the palette: ask first."""

        def stop_if(yes: bool | None) -> None:
            if yes:
                self.send("stop")

        self.push_screen(
            ConfirmScreen(
                "Stop the run?",
                "Training ends now (journal flushed); the console stays open.",
                "Stop",
                "Cancel",
            ),
            stop_if,
        )


def _common_path(paths: list[str]) -> str:
    """Longest common dotted prefix: ["a.b.c", "a.b.d"] -> "a.b"."""
    parts = [p.split(".") for p in paths]
    common: list[str] = []
    for level in zip(*parts, strict=False):
        if len(set(level)) != 1:
            break
        common.append(level[0])
    return ".".join(common)
