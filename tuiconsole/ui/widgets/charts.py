"""Loss charts: a recent-window sparkline, a long downsampled one, and eval points as text."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Static

from tuiconsole.engine.snapshot import EvalPoint, Series, Snapshot
from tuiconsole.ui.fmt import fmt_float
from tuiconsole.ui.widgets.block_chart import BlockChart

MAX_EVALS_SHOWN = 4


def _range(series: Series) -> str:
    if not series.steps:
        return ""
    return f"steps {series.steps[0]}–{series.steps[-1]}"


def loss_line(snap: Snapshot) -> Text:
    text = Text(no_wrap=True, overflow="ellipsis")
    text.append("loss ", style="bold")
    text.append(f"now {fmt_float(snap.loss_last)}  ", style="bold")
    text.append(f"min {fmt_float(snap.loss_min)}")
    recent = snap.loss_recent.values
    if recent:
        text.append(f"  window avg {fmt_float(sum(recent) / len(recent))}")
        text.append(f"  {_range(snap.loss_recent)}", style="dim")
    return text


def history_line(series: Series) -> Text:
    text = Text(no_wrap=True, overflow="ellipsis")
    text.append("history ", style="bold")
    if series.values:
        finite = [v for v in series.values if v == v]
        text.append(f"start {fmt_float(series.values[0])}  ")
        if finite:
            text.append(f"min {fmt_float(min(finite))} (bucket means)  ")
        text.append(_range(series), style="dim")
    else:
        text.append("no data yet", style="dim")
    return text


def eval_line(evals: tuple[EvalPoint, ...]) -> Text:
    text = Text(no_wrap=True, overflow="ellipsis")
    text.append("eval ", style="bold")
    if not evals:
        text.append("none yet", style="dim")
        return text
    for ev in reversed(evals[-MAX_EVALS_SHOWN:]):
        text.append(f"@{ev.step} ", style="dim")
        text.append(f"loss {fmt_float(ev.loss)}")
        if ev.accuracy is not None:
            text.append(f" acc {ev.accuracy * 100:.1f}%")
        text.append("  ")
    return text


class LossCharts(Vertical):
    """Redraws each part only when its series changed."""

    DEFAULT_CSS = """
    LossCharts {
        height: 1fr;
        min-height: 5;
        padding: 0 1;
    }
    LossCharts > Static { height: 1; }
    LossCharts > BlockChart { height: 1fr; min-height: 1; }
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self._recent: Series | None = None
        self._history: Series | None = None
        self._evals: tuple[EvalPoint, ...] | None = None
        self._line: tuple[float | None, float | None, Series] | None = None

    def compose(self) -> ComposeResult:
        self._loss_text = Static(id="loss-text")
        self._recent_chart = BlockChart(id="loss-recent")
        self._history_text = Static(id="history-text")
        self._history_chart = BlockChart(id="loss-history")
        self._eval_text = Static(id="eval-text")
        yield self._loss_text
        yield self._recent_chart
        yield self._history_text
        yield self._history_chart
        yield self._eval_text

    def show(self, snap: Snapshot) -> bool:
        changed = False
        line_key = (snap.loss_last, snap.loss_min, snap.loss_recent)
        if line_key != self._line:
            self._line = line_key
            self._loss_text.update(loss_line(snap), layout=False)
            changed = True
        if snap.loss_recent != self._recent:
            self._recent = snap.loss_recent
            self._recent_chart.values = snap.loss_recent.values
            changed = True
        if snap.loss_history != self._history:
            self._history = snap.loss_history
            self._history_text.update(history_line(snap.loss_history), layout=False)
            self._history_chart.values = snap.loss_history.values
            changed = True
        if snap.evals != self._evals:
            self._evals = snap.evals
            self._eval_text.update(eval_line(snap.evals), layout=False)
            changed = True
        return changed
