"""The header tells what the tuning aids are doing: the ``at`` commands pending (each
whole, as many as fit), a running lr range test's progress, and the way back from a
NaN (rollback). From a real trainer's snapshots."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import pytest

from tests.unit.models import Driver, make_spec
from tuiconsole.engine.snapshot import LrFindView, NanEvent, RunState
from tuiconsole.engine.trainer import RunConfig, Trainer
from tuiconsole.ui.widgets.status import render_header


@pytest.fixture
def d(tmp_path) -> Iterator[Driver]:
    """A real trainer on the small model, paused before its first step."""
    driver = Driver(Trainer(make_spec(), RunConfig(run_dir=tmp_path / "r", start_paused=True)))
    yield driver
    driver.trainer.close()


def header(snap, width: int) -> list[str]:
    return [line.plain for line in render_header(snap, width).lines]


def test_pending_commands_are_listed_whole_and_the_rest_counted(d):
    assert d.cmd("at 50 lr features 1e-4").ok
    assert d.cmd("at 90 decay 0.5").ok
    snap = d.trainer.latest_snapshot()
    (wide,) = [t for t in header(snap, 160) if t.startswith(" pending:")]
    assert "#1 at 50: lr features 0.0001" in wide and "#2 at 90: decay 0.5" in wide
    assert "(:at cancel ID)" in wide
    (narrow,) = [t for t in header(snap, 50) if t.startswith(" pending:")]
    assert "#1 at 50: lr features 0.0001" in narrow and "+1 more" in narrow
    assert "decay" not in narrow  # the second is left out whole, not cut
    (tiny,) = [t for t in header(snap, 30) if t.startswith(" pending:")]
    assert "2 command(s), the first at step 50" in tiny
    assert d.cmd("at cancel 1").ok and d.cmd("at cancel 2").ok
    assert not [t for t in header(d.trainer.latest_snapshot(), 160) if t.startswith(" pending:")]


def test_a_running_range_test_shows_its_progress_and_how_to_cancel(d):
    snap = d.trainer.latest_snapshot()
    running = LrFindView("running", "features", 1e-7, 10.0, 100, 37, lrs=(1e-7, 2.5e-4))
    text = "\n".join(header(dataclasses.replace(snap, lrfind=running), 160))
    assert "lr range test on features: 37/100 steps, lr 2.5e-4" in text
    assert ":lrfind cancel" in text
    done = dataclasses.replace(running, state="done", taken=100)
    assert "lr range test" not in "\n".join(header(dataclasses.replace(snap, lrfind=done), 160))


def test_the_nan_line_offers_rollback(d):
    snap = d.trainer.latest_snapshot()
    status = dataclasses.replace(
        snap.status, state=RunState.NAN_PAUSED, nan=NanEvent(4, float("nan"), (("all", 1.0),))
    )
    text = "\n".join(header(dataclasses.replace(snap, status=status), 200))
    assert "loss is nan at step 4" in text and ":rollback" in text
