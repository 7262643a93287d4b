"""The adaptive refresh: a quietly training run is drawn less often; a key brings it back.

Every frame is GIL time taken from the training thread (issue 5), so while a run trains
and nobody touches a key the status line refreshes at RUNNING_HZ and the slow parts
(charts, group table, tree) every SLOW_PARTS_S — but nothing shown is ever left stale.
"""

from __future__ import annotations

import time
from dataclasses import replace

from tests.ui.fake_session import FakeSession, frozen_snapshot
from tuiconsole.engine.snapshot import RunState
from tuiconsole.ui.app import RUNNING_HZ, ConsoleApp

SIZE = (120, 40)


def running_session() -> FakeSession:
    return FakeSession(frozen_snapshot(RunState.RUNNING))


def with_lr(session: FakeSession, group: str, lr: float) -> None:
    snap = session.snap
    groups = tuple(replace(g, lr=lr) if g.name == group else g for g in snap.groups)
    session.snap = replace(snap, seq=snap.seq + 1, groups=groups)


async def test_quiet_training_polls_slower_and_a_key_restores_the_rate() -> None:
    session = running_session()
    app = ConsoleApp(session, refresh_hz=10.0)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        app._active_until = 0.0  # nobody has pressed a key
        assert app._next_delay() == 1 / RUNNING_HZ
        await pilot.press("down")
        assert app._next_delay() == 1 / app.refresh_hz
        assert app._poll_due - time.monotonic() <= 1 / app.refresh_hz
        session.set_state(RunState.PAUSED)
        app.poll()
        app._active_until = 0.0
        assert app._next_delay() == 1 / app.refresh_hz, "a paused run keeps the full rate"


async def test_slow_parts_catch_up_with_the_shown_snapshot() -> None:
    session = running_session()
    app = ConsoleApp(session, refresh_hz=10.0)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        lr_cell = lambda: app.group_table.get_cell("features", "lr").plain  # noqa: E731
        before = lr_cell()
        assert before == "1e-3"
        app._active_until = 0.0
        app._slow_at = time.monotonic()  # the slow parts were just drawn
        with_lr(session, "features", 0.005)
        app.poll()
        assert app.snap is session.snap, "the status follows every snapshot"
        assert lr_cell() == before, "the group table waits for its slot while training"
        app._slow_at = 0.0
        app.poll()  # same snapshot: the pending slow parts are drawn now
        assert lr_cell() == "5e-3"
        # A key press makes the table follow every snapshot again.
        await pilot.press("down")
        app._slow_at = time.monotonic()
        with_lr(session, "features", 0.002)
        app.poll()
        assert lr_cell() == "2e-3"
