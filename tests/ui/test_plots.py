"""The plots: the loss pane's charts and the full-screen plot view (``g``), as the user
sees them: axis numbers, change markers, the log toggle, each group's lr line.

The chart drawing is pure (line_chart.render) and read as text; the views are
driven with Pilot over the frozen FakeSession (snapshots with every plotted field
set) and, once, over a real small training run.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.ui.fake_session import FakeSession, frozen_snapshot
from tests.ui.real_run import screen_text, until_shown, wait_until
from tuiconsole.engine.snapshot import (
    Change,
    EvalPoint,
    GroupLr,
    GroupSignals,
    LrFindView,
    RunState,
    Series,
    Snapshot,
)
from tuiconsole.remote.protocol import snapshot_from_dict, snapshot_to_dict
from tuiconsole.ui.app import ConsoleApp
from tuiconsole.ui.screens.plots import REFRESH_S, PlotScreen
from tuiconsole.ui.widgets.line_chart import (
    Chart,
    Line,
    Marker,
    fmt_step,
    log_ticks,
    plain,
    reduce_points,
    render,
)
from tuiconsole.ui.widgets.plots import (
    changes_line,
    ema,
    fit,
    loss_chart,
    lr_chart,
    lrfind_chart,
    lrfind_line,
    lrfind_shown,
)

# -- the drawing ------------------------------------------------------------------------


def axis_row(rows: list[str]) -> str:
    return next(r for r in reversed(rows) if "└" in r)


def y_labels(rows: list[str]) -> list[str]:
    return [m.group(1) for r in rows if (m := re.match(r"^\s*(\S+)┤", r))]


def test_the_x_axis_is_in_steps_and_the_y_axis_has_round_labels() -> None:
    steps = list(range(0, 1001, 10))
    rows = plain(render(Chart((Line(steps, [2.0 - s / 1000 for s in steps], "#fff"),)), 60, 12))
    axis = axis_row(rows)
    assert re.findall(r"\d+", axis) == ["0", "250", "500", "750", "1000"]
    labels = [float(v) for v in y_labels(rows)]
    assert len(labels) >= 3 and labels == sorted(labels, reverse=True)
    assert all(1.0 <= v <= 2.0 for v in labels)
    assert all(len(r) == 60 for r in rows)  # every row exactly the width


def test_a_10m_step_run_reads_in_millions_and_draws_what_is_shown() -> None:
    """The history of a 10M-step run is 1024 buckets; a chart of it reduces them to two
    points per dot column before drawing (O(points shown), not O(steps))."""
    steps = [i * 9766 for i in range(1024)]
    values = [1 / (1 + i / 50) for i in range(1024)]
    reduced = reduce_points(steps, values, steps[0], steps[-1], 2 * 40)
    assert len(reduced) <= 2 * 2 * 40
    assert min(v for _, v in reduced) == min(values) and max(v for _, v in reduced) == max(values)
    rows = plain(render(Chart((Line(steps, values, "#fff"),)), 80, 12))
    assert re.findall(r"\d+M", axis_row(rows)) == ["2M", "4M", "6M", "8M"]


@given(
    st.lists(st.floats(allow_nan=True, allow_infinity=True), max_size=300),
    st.integers(1, 160),
    st.integers(1, 50),
    st.booleans(),
    st.booleans(),
)
def test_any_values_draw_exactly_the_size_asked(values, width, height, log, log_x) -> None:
    xs = [10.0 ** (i / 10 - 5) for i in range(len(values))] if log_x else range(len(values))
    markers = (Marker(1e-3, "lr 1e-3"),)
    chart = Chart((Line(list(xs), values, "#fff"),), markers, log_y=log, log_x=log_x)
    rows = plain(render(chart, width, height))
    assert len(rows) == height and all(len(r) == width for r in rows)


def test_step_labels_are_exact() -> None:
    assert [fmt_step(v) for v in (0, 500, 1200, 25_000, 2_500_000, 10_000_000, 12_345)] == [
        "0",
        "500",
        "1200",
        "25k",
        "2.5M",
        "10M",
        "12345",
    ]


def test_log_ticks_are_round_and_a_constant_lr_gets_its_value() -> None:
    assert log_ticks(1e-4, 1.1e-1, 4) == [1e-4, 1e-3, 1e-2, 1e-1]
    assert log_ticks(0.2, 2.6, 8) == [0.2, 0.5, 1.0, 2.0]
    assert log_ticks(1e-3 / 1.5, 1e-3 * 1.5, 3) == [1e-3]


def test_a_marker_is_a_rule_with_its_label_and_overlapping_labels_are_dropped_whole() -> None:
    steps = list(range(0, 1001, 10))
    chart = Chart(
        (Line(steps, [1.0] * len(steps), "#fff"),),
        markers=(Marker(300, "lr features 0.001"), Marker(310, "decay 0.1 all")),
    )
    rows = plain(render(chart, 70, 12))
    text = "\n".join(rows)
    assert "▾lr features 0.001" in text
    assert "decay" not in text  # it would overlap the first label: left out, not cut
    label_row = next(i for i, r in enumerate(rows) if "▾" in r)
    col = rows[label_row].index("▾")
    assert sum(r[col] == "│" for r in rows[label_row + 1 : -1]) >= 5  # the rule down the plot


def test_text_lines_hold_whole_parts_only() -> None:
    changes = [Change(s, f"lr features {s / 1e6}", "ui", ("features",), "lr") for s in (10, 20, 30)]
    assert changes_line(changes, 200) == (
        "changes: @10 lr features 1e-05 · @20 lr features 2e-05 · @30 lr features 3e-05"
    )
    assert changes_line(changes, 40) == "changes: @30 lr features 3e-05"
    assert fit(["a long first part", "b", "a part too long to fit", "c"], 22) == (
        "a long first part · b"
    )


def test_ema_smooths_and_starts_at_the_first_value() -> None:
    raw = [1.0, 3.0] * 20
    smooth = ema(raw, 10)
    assert smooth[0] == 1.0
    assert max(smooth[10:]) - min(smooth[10:]) < 0.6 < max(raw) - min(raw)


# -- snapshots carrying every plotted field ---------------------------------------------


def plotted_snapshot(**kw) -> Snapshot:
    snap = frozen_snapshot()
    steps = tuple(range(0, 1201, 100))
    signals = tuple(
        GroupSignals(
            name,
            step=1200,
            grad_norm=0.5 * k,
            update_ratio=1e-3 * k,
            grad_norm_history=Series(steps, tuple(k * math.exp(-s / 800) for s in steps)),
            update_ratio_history=Series(steps, tuple(k * 1e-3 for _ in steps)),
        )
        for k, name in ((1, "features"), (2, "classifier"))
    )
    lrfind = LrFindView(
        state="done",
        target="all",
        lr_from=1e-5,
        lr_to=1.0,
        steps=50,
        taken=50,
        lrs=tuple(10 ** (-5 + 5 * i / 49) for i in range(50)),
        losses=tuple(
            2.0 - 1.5 * math.exp(-((i - 30) ** 2) / 60) + (i > 42) * (i - 42) for i in range(50)
        ),
        suggestion=1e-2,
        rule="steepest descent",
        at_step=1200,
    )
    return replace(snap, signals=signals, signal_every=10, lrfind=lrfind, **kw)


def make_app(snap: Snapshot | None = None) -> ConsoleApp:
    return ConsoleApp(FakeSession(snap or plotted_snapshot()), script_name="vgg.py")


async def test_the_loss_pane_shows_steps_the_change_and_the_log_toggle() -> None:
    app = make_app()
    async with app.run_test(size=(160, 50)) as pilot:
        await pilot.pause()
        text = app.charts.loss_plot.text
        # to step 1200, the run's step: the loss pane shares the lr chart's range
        assert re.findall(r"\d+", axis_row(text.splitlines())) == [
            *("0", "200", "400", "600", "800", "1000", "1200")
        ]
        assert "▾decay 0.1 classifier" in text  # the journaled change, where it happened
        assert "changes: @800 decay 0.1 classifier" in screen_text(app)
        linear = y_labels(text.splitlines())
        assert linear[:2] == ["2.5", "2.0"]
        app.charts.focus()
        await pilot.press("l")
        logged = y_labels(app.charts.loss_plot.text.splitlines())
        assert logged != linear and "1" in logged and "0.5" in logged
        await pilot.press("l")
        assert y_labels(app.charts.loss_plot.text.splitlines()) == linear


async def test_the_lr_chart_names_each_group_on_one_log_scale() -> None:
    app = make_app()
    async with app.run_test(size=(160, 50)) as pilot:
        await pilot.pause()
        rows = app.charts.lr_plot.text.splitlines()
        assert "■ features" in rows[0] and "■ classifier" in rows[0]
        assert y_labels(rows)[0] == "0.01" and y_labels(rows)[-1] == "1e-3"
        assert "lr history" not in screen_text(app)  # the old wall-clock column is gone
        # the pane's two charts share their steps: the change is one column in both
        loss_rows = app.charts.loss_plot.text.splitlines()
        marked = [next(r for r in rows_ if "▾" in r).index("▾") for rows_ in (loss_rows, rows)]
        assert marked[0] == marked[1]
        assert axis_row(loss_rows).index("1000") == axis_row(rows).index("1000")


@pytest.mark.parametrize("size", [(80, 24), (120, 40)])
async def test_the_plot_view_opens_chooses_series_and_closes(size) -> None:
    app = make_app()
    async with app.run_test(size=size) as pilot:
        await pilot.pause()
        await pilot.press("g")
        await pilot.pause()
        screen = app.screen
        assert isinstance(screen, PlotScreen)
        text = screen_text(app)
        assert "1 loss" in text and "5 lr range test" in text
        assert "■ EMA" in text and "1000" in axis_row(text.splitlines())

        await pilot.press("2")
        await pilot.pause()
        assert "■ features" in screen.text and "■ classifier" in screen.text
        assert "1e-3┤" in screen.text

        await pilot.press("3")  # grad norm: a chart per group
        await pilot.pause()
        assert len(screen.charts) == 2
        assert "■ features" in screen.charts[0].text and "■ classifier" in screen.charts[1].text
        assert "measured every 10 steps" in screen.text

        await pilot.press("right")  # update ratio
        await pilot.pause()
        assert "4 update ratio" in screen.text and "2e-3┤" in screen.charts[1].text

        await pilot.press("5")  # the lr range test: loss against lr, suggestion marked
        await pilot.pause()
        chart = screen.charts[0].text
        assert "▾suggested 0.01" in chart
        assert re.findall(r"1e-\d|0\.\d+|1\b", axis_row(chart.splitlines()))[:2] == ["1e-5", "1e-4"]
        assert "lrfind all done · suggested lr 0.01 · 50/50 steps" in screen.text
        assert ("suggestion: steepest descent" in screen.text) == (size[0] >= 120)

        await pilot.press("escape")
        await pilot.pause()
        assert not isinstance(app.screen, PlotScreen)
        assert "param groups" in screen_text(app)


async def test_the_plot_view_log_toggle_and_a_second_g_closes() -> None:
    app = make_app()
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.pause()
        await pilot.press("g")
        await pilot.pause()
        screen = app.screen
        assert isinstance(screen, PlotScreen) and "y: linear" in screen.text
        linear = y_labels(screen.charts[0].text.splitlines())
        await pilot.press("l")
        await pilot.pause()
        assert "y: log" in screen.text
        assert y_labels(screen.charts[0].text.splitlines()) != linear
        await pilot.press("g")
        await pilot.pause()
        assert not isinstance(app.screen, PlotScreen)


async def test_the_plot_view_follows_new_snapshots() -> None:
    session = FakeSession(plotted_snapshot())
    app = ConsoleApp(session, script_name="vgg.py")
    async with app.run_test(size=(160, 40)) as pilot:
        await pilot.pause()
        await pilot.press("g")
        await pilot.pause()
        screen = app.screen
        assert isinstance(screen, PlotScreen)
        snap = session.snap
        change = Change(1100, "lr features 0.02", "ui", ("features",), "lr")
        session.snap = replace(
            snap,
            seq=snap.seq + 1,
            changes=(*snap.changes, change),
            evals=(*snap.evals, EvalPoint(1200, 0.2, 0.95)),
        )
        await wait_until(pilot, lambda: "@1100 lr features 0.02" in screen.text, what="new change")
        assert "▾lr features 0.02" in screen.charts[0].text


async def test_many_groups_get_small_charts_that_scroll_at_80x24() -> None:
    snap = plotted_snapshot()
    steps = tuple(range(0, 1201, 100))
    signals = tuple(
        GroupSignals(f"group{i}", grad_norm_history=Series(steps, tuple(1.0 + i for _ in steps)))
        for i in range(12)
    )
    app = make_app(replace(snap, signals=signals))
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        await pilot.press("g", "3")
        await pilot.pause()
        screen = app.screen
        assert isinstance(screen, PlotScreen)
        assert len(screen.charts) == 12 and all(c.size.height == 8 for c in screen.charts)
        body = screen.query_one("#plots-body")
        assert body.scroll_y == 0
        await pilot.press("pagedown")
        await pilot.pause()
        assert body.scroll_y > 0
        assert "3 grad norm" in screen.text  # ↑/↓/pgdn scroll; they do not switch series


def test_charts_of_a_10m_step_run_are_built_from_its_downsampled_history() -> None:
    """A snapshot as the engine builds it at step 10M: 1024 loss buckets, 256 lr buckets
    per group, 200 evals and 500 changes. The charts draw it at 160x50 like any other."""
    snap = frozen_snapshot()
    steps = tuple(range(9766, 10_000_001, 9766))[:1024]
    lr_steps = tuple(range(39_063, 10_000_001, 39_063))[:256]
    snap = replace(
        snap,
        status=replace(snap.status, step=10_000_000),
        loss_history=Series(steps, tuple(1 / (1 + i / 100) for i in range(len(steps)))),
        loss_recent=Series(),
        evals=tuple(EvalPoint(s, 0.5, 0.9) for s in range(50_000, 10_000_001, 50_000)),
        changes=tuple(
            Change(s, f"lr features {s}", "ui", ("features",), "lr")
            for s in range(20_000, 10_000_001, 20_000)
        ),
        lr_steps=(
            GroupLr("features", Series(lr_steps, tuple(1e-3 for _ in lr_steps))),
            GroupLr("classifier", Series(lr_steps, tuple(1e-2 * 0.9**i for i in range(256)))),
        ),
    )
    for chart in (loss_chart(snap), loss_chart(snap, log=True), lr_chart(snap)):
        rows = plain(render(chart, 156, 40))
        assert len(rows) == 40 and all(len(r) == 156 for r in rows)
        assert "10M" in axis_row(rows) or "8M" in axis_row(rows)


# -- a real run --------------------------------------------------------------------------


@pytest.mark.slow
async def test_a_real_run_plots_its_loss_and_each_groups_lr(run_factory) -> None:
    session = run_factory(paused=False)
    app = ConsoleApp(session)
    async with app.run_test(size=(120, 40)) as pilot:
        await until_shown(pilot, app, lambda s: s.status.step >= 60, "60 steps")
        await pilot.press("space")
        await session.settle()
        await until_shown(pilot, app, lambda s: s.status.state == RunState.PAUSED, "paused")
        await pilot.press("g")
        await pilot.pause()
        screen = app.screen
        assert isinstance(screen, PlotScreen)
        await wait_until(pilot, lambda: "■ EMA" in screen.text, what="the loss chart")
        step = app.snap.status.step
        numbers = [int(n) for n in re.findall(r"\d+", axis_row(screen.charts[0].text.splitlines()))]
        assert len(numbers) >= 3 and numbers == sorted(numbers) and numbers[-1] <= step
        await pilot.press("2")
        await pilot.pause()
        names = [g.name for g in app.snap.groups]
        assert len(names) == 2 and all(f"■ {n}" in screen.text for n in names)
        assert "0.1┤" in screen.text or "0.01┤" in screen.text  # the real groups' lrs


def test_the_plotted_fields_cross_the_socket() -> None:
    """An attached console plots what a local one does: the fields survive the JSON."""
    snap = plotted_snapshot()
    back = snapshot_from_dict(json.loads(json.dumps(snapshot_to_dict(snap))))
    assert (back.lr_steps, back.changes, back.signals, back.lrfind) == (
        snap.lr_steps,
        snap.changes,
        snap.signals,
        snap.lrfind,
    )


# -- pictures ----------------------------------------------------------------------------


@pytest.mark.parametrize("keys", [(), ("2",), ("3",)], ids=["loss", "lr", "grad"])
def test_plot_view_picture_80x24(snap_compare, keys) -> None:
    async def run_before(pilot) -> None:
        await pilot.press("g", *keys)
        await pilot.pause()

    assert snap_compare(make_app(), terminal_size=(80, 24), run_before=run_before)


@pytest.mark.slow
async def test_a_paused_runs_lr_chart_stands_still_and_shows_an_edit(paused_run) -> None:
    """The old lr column was a wall-clock trace that kept moving while paused; the lr
    chart is by step: frames while paused redraw the same picture, until an edit."""
    session = paused_run
    app = ConsoleApp(session)
    async with app.run_test(size=(120, 40)) as pilot:
        await until_shown(pilot, app, lambda s: s.status.state == RunState.PAUSED, "paused")
        for _ in range(5):
            await pilot.press("n")
            await session.settle()
        await until_shown(pilot, app, lambda s: s.status.step == 5, "5 steps")
        await pilot.press("g", "2")
        await pilot.pause()
        screen = app.screen
        assert isinstance(screen, PlotScreen)
        await wait_until(pilot, lambda: "■ classifier" in screen.text, what="the lr chart")
        before = screen.charts[0].text
        seq0 = app.snap.seq
        await until_shown(pilot, app, lambda s: s.seq >= seq0 + 3, "3 newer snapshots")
        await pilot.pause(REFRESH_S * 2)
        assert screen.charts[0].text == before
        assert "0.1┤" in before and "0.01┤" in before  # the real groups' lrs: 0.01 and 0.1

        app.submit_line("lr classifier 1e-3")  # an edit while paused shows at once
        await pilot.pause()
        await pilot.press("y")  # 100x: the guard rail asks first
        await session.settle()
        await wait_until(pilot, lambda: "1e-3┤" in screen.charts[0].text, what="the edit")


def test_the_range_tests_blow_up_is_left_off_so_the_dip_can_be_read() -> None:
    """A sweep ends where the loss explodes (4x its lowest, or inf): drawn to scale, the
    dip an lr is read from would be a flat line at the bottom."""
    lf = plotted_snapshot().lrfind
    assert lf is not None
    shown = lrfind_shown(lf.losses)
    assert shown == 44 and max(lf.losses[:shown]) <= 3.0 < lf.losses[shown]
    chart = lrfind_chart(plotted_snapshot())
    assert len(chart.lines[0].ys) == 44
    assert "not drawn: the blow-up from lr" in lrfind_line(plotted_snapshot())
    assert lrfind_shown((2.3, 2.1, float("nan"))) == 2
    assert lrfind_shown((2.3, 2.1, 1.9)) == 3  # nothing to leave off
    assert lrfind_shown((0.5, -1.0, 40.0)) == 3  # a loss <= 0: no scale to judge by
