"""The tuning aids as a user sees them, over a real trainer: an lr edit and its undo in
the group's detail (step, source, command) and as markers on the loss chart; an `at`
command pending in the header, then applied at its step."""

from __future__ import annotations

from tests.ui.real_run import screen_text, until_shown, wait_until
from tuiconsole.engine.snapshot import RunState
from tuiconsole.ui.app import ConsoleApp
from tuiconsole.ui.screens.group_detail import GroupDetailScreen


async def test_an_edit_and_its_undo_show_in_the_detail_and_on_the_chart(paused_run) -> None:
    session = paused_run
    app = ConsoleApp(session)
    async with app.run_test(size=(120, 40)) as pilot:
        await until_shown(pilot, app, lambda s: s.status.state == RunState.PAUSED, "paused")
        for _ in range(3):
            await pilot.press("n")
            await session.settle()
        await until_shown(pilot, app, lambda s: s.status.step == 3, "3 steps")
        app.submit_line("lr classifier 0.05")  # 2x: no guard rail
        await session.settle()
        await pilot.press("u")
        await session.settle()
        await until_shown(pilot, app, lambda s: len(s.changes) == 2, "both changes")
        assert session.optimizer.param_groups[1]["lr"] == 0.1  # the undo reached the optimizer
        await wait_until(
            pilot, lambda: "@3 lr classifier 0.05 · @3 undo" in screen_text(app), what="markers"
        )
        await pilot.press("tab", "down", "enter")  # the group table, its second row
        await pilot.pause()
        assert isinstance(app.screen, GroupDetailScreen)
        text = screen_text(app)
        assert "group classifier" in text and "changes to this group (2)" in text
        assert "lr classifier 0.05" in text and "undo" in text
        await pilot.press("escape")


async def test_an_at_command_is_listed_until_its_step_then_applied(paused_run) -> None:
    session = paused_run
    app = ConsoleApp(session)
    async with app.run_test(size=(120, 40)) as pilot:
        await until_shown(pilot, app, lambda s: s.status.state == RunState.PAUSED, "paused")
        app.submit_line("at 2 lr features 0.02")
        await session.settle()
        await wait_until(
            pilot, lambda: "#1 at 2: lr features 0.02" in screen_text(app), what="pending"
        )
        for _ in range(2):
            await pilot.press("n")
            await session.settle()
        await until_shown(pilot, app, lambda s: s.status.step == 2 and not s.pending, "applied")
        assert session.optimizer.param_groups[0]["lr"] == 0.02
        await wait_until(pilot, lambda: "pending:" not in screen_text(app), what="the list gone")
