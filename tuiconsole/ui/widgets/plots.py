"""What each plot shows, built from a Snapshot: pure functions the panes and the
full-screen plot view share (tests read them too)."""

from __future__ import annotations

import math
from collections.abc import Sequence

from tuiconsole.engine.snapshot import Change, GroupSignals, Series, Snapshot
from tuiconsole.ui.fmt import fmt_lr
from tuiconsole.ui.theme import group_color
from tuiconsole.ui.widgets.line_chart import Chart, Line, Marker, short_label

RAW = "#6c6c8c"  # the raw loss: dim, under its smoothed line
EMA = "#ffd75f"
EVAL = "#87d75f"
ACCURACY = "#d787d7"
SUGGESTION = "#87d75f"
CHANGE_COLORS = {
    "lr": "#d7875f",
    "decay": "#d7875f",
    "set": "#d7875f",
    "split": "#5fd7d7",
    "rebuild": "#d75fd7",
    "resume": "#ff5f5f",
    "rollback": "#ff5f5f",
    "undo": "#ff5f5f",
}
CHANGE_LABEL = 28  # cells at most for a change's label on a chart


def ema(values: Sequence[float], span: int) -> list[float]:
    """Exponential moving average over ``span`` points (the first value seeds it)."""
    alpha = 2 / (max(1, span) + 1)
    out: list[float] = []
    acc: float | None = None
    for v in values:
        if v != v or v in (float("inf"), float("-inf")):
            out.append(acc if acc is not None else v)
            continue
        acc = v if acc is None else acc + alpha * (v - acc)
        out.append(acc)
    return out


def loss_series(snap: Snapshot) -> Series:
    """The whole run: the downsampled history, then the raw recent steps after it."""
    hist, recent = snap.loss_history, snap.loss_recent
    last = hist.steps[-1] if hist.steps else -1
    tail = [(s, v) for s, v in zip(recent.steps, recent.values, strict=False) if s > last]
    return Series(
        hist.steps + tuple(s for s, _ in tail),
        hist.values + tuple(v for _, v in tail),
    )


_markers_cache: dict[tuple[object, ...], tuple[Marker, ...]] = {}


def change_markers(changes: Sequence[Change], kinds: Sequence[str] = ()) -> tuple[Marker, ...]:
    """A marker per change (of ``kinds``, or all). Changes are only ever appended (the
    last 500 kept), so their count and ends name them: cached, not rebuilt each frame."""
    ends = (changes[0], changes[-1]) if changes else ()
    key: tuple[object, ...] = (len(changes), *ends, *kinds)
    found = _markers_cache.get(key)
    if found is None:
        found = tuple(
            Marker(
                float(c.step),
                short_label(c.text, CHANGE_LABEL),
                CHANGE_COLORS.get(c.kind, CHANGE_COLORS["lr"]),
            )
            for c in changes
            if not kinds or c.kind in kinds
        )
        if len(_markers_cache) > 8:
            _markers_cache.clear()
        _markers_cache[key] = found
    return found


def loss_chart(snap: Snapshot, *, log: bool = False) -> Chart:
    """Raw loss, its EMA, eval loss (dots) and accuracy (right axis, %), and changes."""
    series = loss_series(snap)
    smooth = ema(series.values, max(2, len(series) // 20))
    lines = [
        Line(series.steps, series.values, RAW, "loss"),
        Line(series.steps, smooth, EMA, "EMA"),
    ]
    evals = snap.evals
    has_acc = any(e.accuracy is not None for e in evals)
    if evals:
        lines.append(Line([e.step for e in evals], [e.loss for e in evals], EVAL, "eval", True))
    if has_acc:
        acc = [(e.step, e.accuracy) for e in evals if e.accuracy is not None]
        lines.append(
            Line([s for s, _ in acc], [a for _, a in acc], ACCURACY, "eval acc", True, right=True)
        )
    return Chart(
        lines=tuple(lines),
        markers=change_markers(snap.changes),
        log_y=log,
        right_fmt=_percent if has_acc else None,
        right_range=(0.0, 1.0) if has_acc else None,
        legend=True,
    )


def lr_chart(snap: Snapshot, *, log: bool = True) -> Chart:
    """Every group's lr by step on one shared log scale, in the group's colour."""
    index = {g.name: g.index for g in snap.groups}
    lines = tuple(
        Line(g.history.steps, g.history.values, group_color(index.get(g.name, i)), g.name)
        for i, g in enumerate(snap.lr_steps)
    )
    return Chart(
        lines=lines,
        markers=change_markers(snap.changes),  # as on the loss chart above it
        log_y=log,
        legend=True,
        empty="no lr history yet",
    )


SIGNALS = {"grad": "grad norm", "update": "update ratio"}


def signal_chart(snap: Snapshot, sig: GroupSignals, which: str, *, log: bool = True) -> Chart:
    """One group's grad norm or update ratio by step (log scale: they span decades)."""
    series = sig.grad_norm_history if which == "grad" else sig.update_ratio_history
    index = next((g.index for g in snap.groups if g.name == sig.name), 0)
    return Chart(
        lines=(Line(series.steps, series.values, group_color(index), sig.name),),
        markers=change_markers(snap.changes),
        log_y=log,
        legend=True,
        empty=f"{sig.name}: no {SIGNALS[which]} yet",
    )


def lrfind_chart(snap: Snapshot, *, log: bool = False) -> Chart:
    """The lr range test's loss against lr (log x), its suggestion marked."""
    lf = snap.lrfind
    if lf is None:
        return Chart(empty="no lr range test yet (:lrfind)")
    markers: tuple[Marker, ...] = ()
    if lf.suggestion is not None:
        markers = (Marker(lf.suggestion, f"suggested {fmt_lr(lf.suggestion)}", SUGGESTION),)
    shown = lrfind_shown(lf.losses)
    return Chart(
        lines=(Line(lf.lrs[:shown], lf.losses[:shown], EMA, "loss"),),
        markers=markers,
        log_x=True,
        log_y=log,
        empty="lr range test: no steps yet",
    )


def fit(parts: Sequence[str], width: int, sep: str = " · ") -> str:
    """``parts`` joined, each one whole or left out: the first always, then in order
    while they fit in ``width`` cells."""
    out = ""
    for part in parts:
        cand = f"{out}{sep}{part}" if out else part
        if out and len(cand) > width:
            continue
        out = cand
    return out


def lrfind_shown(losses: Sequence[float]) -> int:
    """How many of a sweep's points the chart draws: up to the blow-up, the first loss
    above 1.5x the larger of the first and the lowest (the range a user reads an lr from;
    a loss of 50 at the end would flatten the dip to a line). All where losses go <= 0."""
    finite = [v for v in losses if math.isfinite(v)]
    if not finite or min(finite) <= 0:
        return len(losses)
    cap = 1.5 * max(finite[0], min(finite))
    for i, v in enumerate(losses):
        if not v <= cap:  # also NaN / inf
            return max(i, 1)
    return len(losses)


def lrfind_line(snap: Snapshot, width: int = 1000) -> str:
    lf = snap.lrfind
    if lf is None:
        return "no lr range test yet: :lrfind [TARGET] [from=V] [to=V] [steps=N]"
    parts = [
        f"lrfind {lf.target} {lf.state}",
        f"{lf.taken}/{lf.steps} steps",
        f"{fmt_lr(lf.lr_from)}→{fmt_lr(lf.lr_to)}",
    ]
    if lf.suggestion is not None:
        parts.insert(1, f"suggested lr {fmt_lr(lf.suggestion)}")
        if lf.rule:
            parts.append(f"suggestion: {lf.rule}")
    parts.append(f"at step {lf.at_step}")
    shown = lrfind_shown(lf.losses)
    if shown < len(lf.losses):
        parts.append(f"not drawn: the blow-up from lr {fmt_lr(lf.lrs[shown])}")
    if lf.message:
        parts.insert(1, lf.message)
    return fit(parts, width)


def changes_line(changes: Sequence[Change], width: int = 1000, n: int = 3) -> str:
    """The newest changes (at most ``n``) that fit whole in ``width``, oldest first."""
    shown: list[str] = []
    used = len("changes: ")
    for c in reversed(changes[-n:]):
        piece = f"@{c.step} {c.text}"
        if shown and used + len(piece) + 3 > width:
            break
        shown.insert(0, piece)
        used += len(piece) + 3
    return "changes: " + " · ".join(shown) if shown else ""


def _percent(v: float) -> str:
    return f"{v * 100:.0f}%"
