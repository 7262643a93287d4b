"""The loss pane: a line chart of the whole run (raw, EMA, evals, changes) and, where
the pane is tall enough, every group's lr by step on one log scale.

``l`` (while the pane has focus) toggles the loss's log scale; ``g`` opens the
full-screen plot view (screens/plots.py) with every series.
"""

from __future__ import annotations

from dataclasses import replace
from typing import ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.widgets import Static

from tuiconsole.engine.snapshot import Snapshot
from tuiconsole.ui.fmt import fmt_float
from tuiconsole.ui.widgets.line_chart import Chart, LineChart
from tuiconsole.ui.widgets.plots import (
    EMA,
    EVAL,
    changes_line,
    ema,
    loss_chart,
    loss_series,
    lr_chart,
)

LR_CHART_MIN_HEIGHT = 18  # below this the pane shows the loss only (g: the plot view)
LABEL_CELLS = 4  # the y labels' column in both charts ("2.5", "0.01", "1e-3")
ACCURACY_AXIS_CELLS = 5  # "├100%"


def loss_line(snap: Snapshot, width: int = 1000) -> Text:
    """Loss now, its EMA and minimum, and the last eval: each part whole, or left out."""
    parts: list[tuple[str, str]] = [("loss ", "bold"), (f"{fmt_float(snap.loss_last)}", "bold")]
    series = loss_series(snap)
    if series.values:
        smooth = ema(series.values, max(2, len(series) // 20))[-1]
        parts.append((f"  EMA {fmt_float(smooth)}", EMA))
    parts.append((f"  min {fmt_float(snap.loss_min)}", ""))
    if snap.evals:
        ev = snap.evals[-1]
        acc = f" {ev.accuracy * 100:.1f}%" if ev.accuracy is not None else ""
        parts.append((f"  eval@{ev.step} {fmt_float(ev.loss)}{acc}", EVAL))
    text = Text(no_wrap=True)
    for i, (piece, style) in enumerate(parts):
        if i >= 2 and text.cell_len + len(piece) > width:
            continue
        text.append(piece, style=style)
    return text


def aligned(chart: Chart, snap: Snapshot, above: Chart | None) -> Chart:
    """The pane's charts share their x range and their label columns, so a step is the
    same column in both (the right gutter of the loss chart's accuracy axis included)."""
    series = [loss_series(snap), *(g.history for g in snap.lr_steps)]
    firsts = [s.steps[0] for s in series if s.steps]
    lasts = [s.steps[-1] for s in series if s.steps]
    x_range = (float(min(firsts)), float(max(lasts))) if firsts else None
    accuracy = chart.right_fmt is not None or (above is not None and above.right_fmt is not None)
    right = ACCURACY_AXIS_CELLS if accuracy else 0
    return replace(chart, x_range=x_range, y_width=LABEL_CELLS, right_width=right)


class LossCharts(Vertical):
    """Redraws each chart only when what it shows changed."""

    can_focus = True
    HELP_SECTION = "loss pane"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("l", "toggle_log", "Log y", tooltip="Loss on a log scale (toggle)", id="loss_log"),
    ]

    DEFAULT_CSS = """
    LossCharts {
        height: 1fr;
        min-height: 5;
        padding: 0 1;
    }
    LossCharts > Static { height: 1; }
    LossCharts > #loss-chart { height: 1fr; min-height: 3; }
    LossCharts > #lr-chart { height: 40%; min-height: 6; }
    LossCharts > #lr-chart.-hidden { display: none; }
    LossCharts > #changes-text { color: $text-muted; }
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.log_scale = False
        self._snap: Snapshot | None = None

    def compose(self) -> ComposeResult:
        self._loss_text = Static(id="loss-text")
        self.loss_plot = LineChart(id="loss-chart")
        self.lr_plot = LineChart(id="lr-chart")
        self._changes_text = Static(id="changes-text")
        yield self._loss_text
        yield self.loss_plot
        yield self.lr_plot
        yield self._changes_text

    @property
    def _text_width(self) -> int:
        return self.content_size.width or 1000

    def on_resize(self) -> None:
        self.lr_plot.set_class(self.size.height < LR_CHART_MIN_HEIGHT, "-hidden")
        if self._snap is not None:
            width = self._text_width
            self._loss_text.update(loss_line(self._snap, width), layout=False)
            self._changes_text.update(changes_line(self._snap.changes, width), layout=False)

    def action_toggle_log(self) -> None:
        self.log_scale = not self.log_scale
        if self._snap is not None:
            self.loss_plot.chart = self._loss_chart(self._snap)

    def _loss_chart(self, snap: Snapshot) -> Chart:
        return aligned(loss_chart(snap, log=self.log_scale), snap, None)

    def show(self, snap: Snapshot) -> bool:
        """Update from a snapshot; returns True if anything was redrawn."""
        old, self._snap = self._snap, snap
        loss_key = (snap.loss_last, snap.loss_min, snap.loss_recent, snap.loss_history)
        loss_changed = old is None or loss_key != (
            old.loss_last,
            old.loss_min,
            old.loss_recent,
            old.loss_history,
        )
        changes_changed = old is None or old.changes != snap.changes
        if loss_changed or changes_changed or old is None or old.evals != snap.evals:
            self._loss_text.update(loss_line(snap, self._text_width), layout=False)
            self.loss_plot.chart = self._loss_chart(snap)
        if changes_changed or old is None or old.lr_steps != snap.lr_steps:
            self.lr_plot.chart = aligned(lr_chart(snap), snap, self.loss_plot.chart)
            self._changes_text.update(changes_line(snap.changes, self._text_width), layout=False)
        return old is None or snap != old
