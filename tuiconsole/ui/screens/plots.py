"""The full-screen plot view (``g``): one series at a time, chosen with 1-5 or ←/→.

loss (raw, EMA, evals, accuracy, change markers) · lr per group (one log scale) ·
grad norm and update ratio (a small chart per group) · the lr range test's curve.
``l`` toggles the y log scale of the series shown; ``esc`` or ``g`` closes. It reads
the app's newest snapshot twice a second (a key redraws at once): the console's poll
stays the only reader of the session.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.screen import Screen
from textual.widgets import Footer, Static

from tuiconsole.engine.snapshot import Snapshot
from tuiconsole.ui.widgets.line_chart import Chart, LineChart
from tuiconsole.ui.widgets.plots import (
    changes_line,
    fit,
    loss_chart,
    lr_chart,
    lrfind_chart,
    lrfind_line,
    signal_chart,
)

SERIES: tuple[tuple[str, str], ...] = (
    ("loss", "loss"),
    ("lr", "lr"),
    ("grad", "grad norm"),
    ("update", "update ratio"),
    ("lrfind", "lr range test"),
)
LOG_DEFAULT = {"loss": False, "lr": True, "grad": True, "update": True, "lrfind": False}
SMALL_CHART_ROWS = 8  # a per-group chart's height when they do not all fit
REFRESH_S = 0.5


class PlotScreen(Screen[None]):
    """``source()`` is the newest snapshot the console shows (None before the first)."""

    HELP_SECTION = "plot view"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "close", "Close", tooltip="Back to the console", id="plots_close"),
        Binding("g", "close", "Close", show=False, id="plots_close_g"),
        Binding(
            "1", "series('loss')", "Loss", tooltip="Loss, EMA, evals, changes", id="plots_loss"
        ),
        Binding("2", "series('lr')", "lr", tooltip="Each group's lr by step", id="plots_lr"),
        Binding("3", "series('grad')", "Grad", tooltip="Grad norm, per group", id="plots_grad"),
        Binding(
            "4", "series('update')", "Update", tooltip="Update ratio, per group", id="plots_update"
        ),
        Binding("5", "series('lrfind')", "lrfind", tooltip="The lr range test", id="plots_lrfind"),
        Binding("right", "cycle(1)", "Next", show=False, tooltip="Next series", id="plots_next"),
        Binding(
            "left", "cycle(-1)", "Previous", show=False, tooltip="Previous series", id="plots_prev"
        ),
        Binding("l", "toggle_log", "Log y", tooltip="y on a log scale (toggle)", id="plots_log"),
        Binding("down", "scroll(1)", "Scroll down", show=False, id="plots_down"),
        Binding("up", "scroll(-1)", "Scroll up", show=False, id="plots_up"),
        Binding("pagedown", "scroll(10)", "Page down", show=False, id="plots_page_down"),
        Binding("pageup", "scroll(-10)", "Page up", show=False, id="plots_page_up"),
    ]
    DEFAULT_CSS = """
    PlotScreen { layout: vertical; }
    PlotScreen > #plots-tabs { height: 1; background: $panel; }
    PlotScreen > #plots-info { height: 1; color: $text-muted; padding: 0 1; }
    PlotScreen > #plots-body { height: 1fr; padding: 0 1; }
    PlotScreen LineChart { height: 1fr; min-height: 5; }
    PlotScreen LineChart.-small { height: 8; }
    """

    def __init__(self, source: Callable[[], Snapshot | None], series: str = "loss") -> None:
        super().__init__()
        self.source = source
        self.series = series
        self.log_scale = dict(LOG_DEFAULT)
        self._shown: tuple[object, ...] | None = None

    def compose(self) -> ComposeResult:
        yield Static(id="plots-tabs")
        yield Static(id="plots-info")
        # Not focusable: ←/→ choose the series here, ↑/↓ scroll (the screen's bindings).
        yield VerticalScroll(id="plots-body", can_focus=False)
        yield Footer(compact=True, show_command_palette=False)

    def on_mount(self) -> None:
        self.redraw()
        self.set_interval(REFRESH_S, self.redraw, name="plots-refresh")

    def on_resize(self) -> None:
        self._shown = None  # the per-group charts fit, or scroll, again
        self.redraw()

    # -- actions ----------------------------------------------------------------------------

    def action_close(self) -> None:
        self.dismiss(None)

    def action_series(self, series: str) -> None:
        self.series = series
        self.redraw()

    def action_cycle(self, by: int) -> None:
        keys = [k for k, _ in SERIES]
        self.series = keys[(keys.index(self.series) + by) % len(keys)]
        self.redraw()

    def action_scroll(self, rows: int) -> None:
        """The per-group charts, when there are more than fit."""
        self.query_one("#plots-body", VerticalScroll).scroll_relative(
            y=rows * SMALL_CHART_ROWS // 2, animate=False
        )

    def action_toggle_log(self) -> None:
        self.log_scale[self.series] = not self.log_scale[self.series]
        self.redraw()

    # -- drawing ----------------------------------------------------------------------------

    @property
    def charts(self) -> list[LineChart]:
        return list(self.query_one("#plots-body").query(LineChart))

    @property
    def text(self) -> str:
        """The tabs, the info line and every chart, as plain text (tests read this)."""
        tabs = self.query_one("#plots-tabs", Static).render()
        info = self.query_one("#plots-info", Static).render()
        return "\n".join([str(tabs), str(info), *(c.text for c in self.charts)])

    def redraw(self) -> None:
        snap = self.source()
        key = (snap.seq if snap else None, self.series, self.log_scale[self.series])
        if key == self._shown:
            return
        self._shown = key
        self.query_one("#plots-tabs", Static).update(self._tabs())
        charts = self._charts(snap) if snap is not None else [Chart(empty="waiting for the run…")]
        self.query_one("#plots-info", Static).update(self._info(snap))
        self._place(charts)

    def _tabs(self) -> Text:
        text = Text(no_wrap=True, overflow="ellipsis")
        for i, (key, label) in enumerate(SERIES, 1):
            style = "bold reverse" if key == self.series else ""
            text.append(f" {i} {label} ", style=style)
            text.append(" ")
        scale = "log" if self.log_scale[self.series] else "linear"
        text.append(f" y: {scale}", style="dim")
        return text

    def _info(self, snap: Snapshot | None) -> Text:
        """One line under the tabs, each part whole or left out."""
        if snap is None:
            return Text("")
        width = max(1, self.size.width - 2)
        if self.series == "lrfind":
            return Text(lrfind_line(snap, width), no_wrap=True)
        changes = changes_line(snap.changes, width)
        if self.series in ("grad", "update"):
            every = f"measured every {snap.signal_every} steps" if snap.signal_every else ""
            line = fit([p for p in (every, changes) if p], width)
            return Text(line or "per-group signals: none measured yet", no_wrap=True)
        return Text(changes or "no changes yet", no_wrap=True)

    def _charts(self, snap: Snapshot) -> list[Chart]:
        log = self.log_scale[self.series]
        if self.series == "loss":
            return [loss_chart(snap, log=log)]
        if self.series == "lr":
            return [lr_chart(snap, log=log)]
        if self.series == "lrfind":
            return [lrfind_chart(snap, log=log)]
        if not snap.signals:
            return [Chart(empty="no per-group signals yet")]
        return [signal_chart(snap, sig, self.series, log=log) for sig in snap.signals]

    def _place(self, charts: list[Chart]) -> None:
        """Reuse the mounted charts when their number is the same; else mount anew."""
        body = self.query_one("#plots-body", VerticalScroll)
        mounted = self.charts
        if len(mounted) != len(charts):
            for old in mounted:
                old.remove()
            mounted = [LineChart() for _ in charts]
            body.mount_all(mounted)
        small = len(charts) > 1 and len(charts) * SMALL_CHART_ROWS > body.size.height
        for widget, chart in zip(mounted, charts, strict=True):
            widget.set_class(small, "-small")
            widget.chart = chart
