"""Pinned screenshots (pytest-textual-snapshot) of the console at 80x24 and 160x50
(and the long-names, many-groups run at 80x24, 120x40 and 160x50: no number cut).

These use the frozen FakeSession (a paused VGG run at step 1200 with fixed numbers; its
log, evals and error come from a real small trainer), so the SVGs are byte-stable.
Behaviour is tested against the real engine elsewhere.
Regenerate after an intended change with ``pytest tests/ui --snapshot-update``
and look at the diff report before committing.
"""

from __future__ import annotations

import pytest
from textual.widgets import Input

from tests.ui.fake_session import FakeSession, frozen_snapshot, long_names_snapshot
from tuiconsole.engine.snapshot import RunState
from tuiconsole.ui.app import ConsoleApp

SIZES = [(80, 24), (160, 50)]
THREE_SIZES = [(80, 24), (120, 40), (160, 50)]
THREE_IDS = ["80x24", "120x40", "160x50"]


def make_app(snap=None) -> ConsoleApp:
    return ConsoleApp(FakeSession(snap), script_name="vgg.py")


async def freeze_cursor(pilot) -> None:
    """No blinking caret in the pictures."""
    await pilot.pause()
    for widget in pilot.app.screen.query(Input):
        widget.cursor_blink = False
    await pilot.pause()


@pytest.mark.parametrize("size", SIZES, ids=["80x24", "160x50"])
def test_main_screen(snap_compare, size) -> None:
    assert snap_compare(make_app(), terminal_size=size)


@pytest.mark.parametrize("size", SIZES, ids=["80x24", "160x50"])
def test_edit_lr_modal_on_a_group(snap_compare, size) -> None:
    async def run_before(pilot) -> None:
        await pilot.press("tab", "down", "e")
        await freeze_cursor(pilot)

    assert snap_compare(make_app(), terminal_size=size, run_before=run_before)


@pytest.mark.parametrize("size", SIZES, ids=["80x24", "160x50"])
def test_edit_lr_modal_offers_split(snap_compare, size) -> None:
    async def run_before(pilot) -> None:
        # root, features, features.0..11, classifier, classifier.0
        await pilot.press(*["down"] * 15, "e")
        await freeze_cursor(pilot)

    assert snap_compare(make_app(), terminal_size=size, run_before=run_before)


def test_rebuild_modal(snap_compare) -> None:
    async def run_before(pilot) -> None:
        await pilot.press("R")
        await freeze_cursor(pilot)

    assert snap_compare(make_app(), terminal_size=(80, 24), run_before=run_before)


def test_errored_run(snap_compare) -> None:
    snap = frozen_snapshot(RunState.ERROR)  # the engine's own out-of-memory error, step 1201
    assert snap.status.error.type == "OutOfMemoryError" and snap.status.error.step == 1201
    assert snap_compare(make_app(snap), terminal_size=(80, 24))


@pytest.mark.parametrize("size", THREE_SIZES, ids=THREE_IDS)
def test_long_names_many_groups(snap_compare, size) -> None:
    """Twelve long-named groups, every header field (scheduler, amp, clip, accumulate,
    compile, two CUDA ranks, memory, utilisation): columns and parts drop whole."""
    assert snap_compare(make_app(long_names_snapshot()), terminal_size=size)


@pytest.mark.parametrize("size", [(80, 24), (120, 40)], ids=["80x24", "120x40"])
def test_group_detail(snap_compare, size) -> None:
    async def run_before(pilot) -> None:
        await pilot.press("tab", "down", "down", "enter")
        await freeze_cursor(pilot)

    assert snap_compare(make_app(long_names_snapshot()), terminal_size=size, run_before=run_before)
