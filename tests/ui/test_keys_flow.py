"""Keys and flow (issue 17): the footer, guard rails, filters, zoom, the keymap.

Each test drives the real console over a real run (a paused tiny model unless
said) and asserts on what the user sees: the footer line, the log, the dialogs.
"""

from __future__ import annotations

import pytest

from tests.helpers import trainer_of
from tests.ui.real_run import footer_text, log_text, lrs, screen_text, until_shown, wait_until
from tuiconsole.engine.snapshot import RunState
from tuiconsole.ui.app import ConsoleApp
from tuiconsole.ui.screens.confirm import ConfirmScreen, GuardScreen

pytestmark = pytest.mark.slow  # a real trainer thread under each console

SIZE = (120, 40)


async def open_app(pilot, app: ConsoleApp) -> None:
    await until_shown(pilot, app, lambda s: s.status.state != RunState.STARTING, "first snapshot")
    await pilot.pause()


async def focus(pilot, widget) -> None:
    widget.focus()
    await pilot.pause()
    await pilot.pause()  # the footer recomposes after a refresh


# -- the footer ------------------------------------------------------------------------------


async def test_footer_offers_what_applies_to_the_focused_pane(paused_run) -> None:
    app = ConsoleApp(paused_run)
    async with app.run_test(size=SIZE) as pilot:
        await open_app(pilot, app)
        await wait_until(pilot, lambda: "Resume" in footer_text(app), what="the footer")
        tree = footer_text(app)
        for shown in ("␣ Resume", "m Mark", "D All", "c Ckpt", "^p Palette", "/ Find", "q Quit"):
            assert shown in tree, (shown, tree)
        assert "Pause" not in tree  # paused: space resumes
        assert "Detach" not in tree  # nothing serves this run

        await focus(pilot, app.group_table)
        groups = footer_text(app)
        assert "e lr" in groups and "d Decay" in groups
        assert "m Mark" not in groups and "s Split" not in groups and "/ Find" not in groups

        await focus(pilot, app.run_log)
        log = footer_text(app)
        assert "f Filter log" in log and "e lr" not in log and "m Mark" not in log


async def test_after_the_run_stops_only_what_applies_and_q_quits_without_asking(
    paused_run,
) -> None:
    app = ConsoleApp(paused_run)
    async with app.run_test(size=SIZE) as pilot:
        await open_app(pilot, app)
        app.send("stop")
        await paused_run.settle()
        await until_shown(pilot, app, lambda s: s.status.state == RunState.STOPPED, "STOPPED")
        await wait_until(
            pilot,
            lambda: "Resume" not in footer_text(app) and "q Quit" in footer_text(app),
            what="the footer",
        )
        shown = footer_text(app)
        for gone in ("Resume", "Pause", "Decay", "Split", "Undo", "Rebuild", "Ckpt"):
            assert gone not in shown, (gone, shown)
        assert "q Quit" in shown and "? Help" in shown
        await pilot.press("q")
        await pilot.pause()
        assert not isinstance(app.screen, ConfirmScreen)
        await wait_until(pilot, lambda: not app.is_running, what="q to quit at once")
    assert paused_run.texts == ["stop"]


async def test_attached_footer_has_detach_and_no_quit(paused_run) -> None:
    paused_run.owns_run = False  # what a RemoteSession says; the run here is real
    app = ConsoleApp(paused_run, can_detach=True)
    async with app.run_test(size=SIZE) as pilot:
        await open_app(pilot, app)
        await wait_until(pilot, lambda: "^d Detach" in footer_text(app), what="the footer")
        assert "Quit" not in footer_text(app)
        await pilot.press("q")  # q still leaves, by detaching (it asks)
        await wait_until(pilot, lambda: "Detach?" in screen_text(app), what="the question")
        await pilot.press("n")
    assert paused_run.texts == []


# -- guard rails -----------------------------------------------------------------------------


async def test_a_10x_lr_change_on_the_command_line_asks_first(paused_run) -> None:
    app = ConsoleApp(paused_run)
    async with app.run_test(size=SIZE) as pilot:
        await open_app(pilot, app)
        await pilot.press("colon", *"lr features 1e4", "enter")
        await wait_until(pilot, lambda: isinstance(app.screen, GuardScreen), what="the question")
        shown = screen_text(app)
        assert "Change the lr 1e+06x?" in shown
        assert "features: 0.01 → 1e4" in shown or "features: 0.01 → 10000" in shown
        await pilot.press("q")  # q is not a yes here (only y / Apply)
        await pilot.press("escape")
        await pilot.pause()
        assert paused_run.texts == [] and lrs(paused_run) == [0.01, 0.1]

        await pilot.press("colon", *"lr features 0.03", "enter")  # 3x: no question
        await wait_until(pilot, lambda: paused_run.texts, what="the small change")
        await paused_run.settle()
        assert lrs(paused_run) == [0.03, 0.1]


async def test_D_asks_first_and_cancel_changes_nothing(paused_run) -> None:
    app = ConsoleApp(paused_run, decay_factor=0.5)  # 2x: d alone would not ask
    async with app.run_test(size=SIZE) as pilot:
        await open_app(pilot, app)
        await pilot.press("D")
        await wait_until(pilot, lambda: isinstance(app.screen, GuardScreen), what="the question")
        assert "Change every group's lr?" in screen_text(app)
        await pilot.press("n")
        await pilot.pause()
        assert paused_run.texts == []
        await pilot.press("d")  # the root node: all groups, by 2x: no question
        await wait_until(pilot, lambda: paused_run.texts, what="the decay")
        await paused_run.settle()
        assert lrs(paused_run) == [0.005, 0.05]


async def test_u_sends_undo_and_shows_its_answer(paused_run) -> None:
    app = ConsoleApp(paused_run)
    async with app.run_test(size=SIZE) as pilot:
        await open_app(pilot, app)
        await pilot.press("u")
        await wait_until(pilot, lambda: paused_run.texts == ["undo"], what="undo sent")
        (result,) = await paused_run.settle()
        # Whatever the engine answers (an undo, or why not), the user reads it.
        await wait_until(
            pilot,
            lambda: any(result.message in str(n.message) for n in app._notifications),
            what="the answer shown",
        )


async def test_the_same_command_is_not_sent_twice_before_its_result(run_factory) -> None:
    session = run_factory(paused=False, delay=0.4)  # commands wait for the step boundary
    app = ConsoleApp(session)
    async with app.run_test(size=SIZE) as pilot:
        await until_shown(pilot, app, lambda s: s.status.state == RunState.RUNNING, "RUNNING")
        app.send("eval")
        app.send("eval")
        assert session.texts == ["eval"]
        await pilot.pause()
        assert any("waiting for its result" in str(n.message) for n in app._notifications)
        await session.settle()
        await pilot.pause()
        app.send("eval")  # answered: a new one goes
        assert session.texts == ["eval", "eval"]


# -- tree filter, zoom, the log --------------------------------------------------------------


async def test_slash_filters_the_tree_and_escape_clears_it(paused_run) -> None:
    app = ConsoleApp(paused_run)
    async with app.run_test(size=SIZE) as pilot:
        await open_app(pilot, app)
        await pilot.press("slash", *"classifier.3")
        await wait_until(pilot, lambda: "classifier.3" in app.layer_tree.border_title, what="t")
        shown = screen_text(app)
        assert "features" not in shown.split("param groups")[0].split("model")[1]
        assert "1 match" in shown
        await pilot.press("enter")
        await wait_until(pilot, lambda: app.layer_tree.selected_path == "classifier.3", what="c")
        assert app.layer_tree.has_focus
        await pilot.press("slash", "escape")
        await wait_until(pilot, lambda: app.layer_tree.label_of("features") != "", what="all")
        assert app.layer_tree.filter_text == "" and app.layer_tree.border_title == "model"


async def test_z_zooms_the_focused_pane_and_back(paused_run) -> None:
    app = ConsoleApp(paused_run)
    async with app.run_test(size=SIZE) as pilot:
        await open_app(pilot, app)
        await pilot.press("z")
        await pilot.pause()
        assert app.screen.maximized is app.layer_tree
        assert "param groups" not in screen_text(app)
        await pilot.press("z")
        await pilot.pause()
        assert app.screen.maximized is None and "param groups" in screen_text(app)


async def test_log_filter_wrapped_indent_and_newest_lines_after_resize(paused_run) -> None:
    app = ConsoleApp(paused_run)
    async with app.run_test(size=(80, 30)) as pilot:
        await open_app(pilot, app)
        await pilot.press("colon", *"frobnicate", "enter")  # a parse error, in the log
        await pilot.press("colon", *("set features momentum=0.8 " + "x" * 60), "enter")
        await pilot.press("escape")
        app.send("lr features 0.02")
        await paused_run.settle()
        await wait_until(pilot, lambda: "lr features 0.02" in log_text(app), what="the lr line")
        for i in range(30):
            app.run_log.note(f"note {i} " + "word " * 20)  # long: wraps at 80 columns
        await pilot.pause()
        lines = screen_text(app).splitlines()
        wrapped = [ln for ln in lines if "word word" in ln and "note" not in ln]
        assert wrapped, "no wrapped line on screen"
        # a continuation starts under the message, not under the step column
        assert all(ln.startswith(" " * 15 + "word") for ln in wrapped), wrapped

        await pilot.resize_terminal(120, 24)
        await pilot.pause()
        await pilot.pause()
        assert "note 29" in screen_text(app), "the newest line is not in view after a resize"

        await focus(pilot, app.run_log)
        await pilot.press("f")  # commands
        await pilot.pause()
        assert app.run_log.filter == "commands"
        assert "note 29" not in log_text(app) and "lr features 0.02" in log_text(app)
        await pilot.press("f")  # errors
        await pilot.pause()
        assert "lr features 0.02" not in log_text(app)
        assert "log · errors" in screen_text(app)
        await pilot.press("f")  # all again
        await pilot.pause()
        assert "note 29" in log_text(app)


async def test_toasts_do_not_cover_the_log(paused_run) -> None:
    app = ConsoleApp(paused_run)
    async with app.run_test(size=SIZE, notifications=True) as pilot:
        await open_app(pilot, app)
        app.notify("a toast to see where it lands")
        await pilot.pause(0.3)
        rows = [i for i, ln in enumerate(screen_text(app).splitlines()) if "a toast" in ln]
        assert rows, "the toast is not shown"
        assert max(rows) < app.run_log.region.y, "the toast is over the log"


# -- the : hint, the rebuild dialog, the keymap -----------------------------------------------


async def test_command_line_hint_names_a_group_of_this_run(paused_run) -> None:
    app = ConsoleApp(paused_run)
    async with app.run_test(size=SIZE) as pilot:
        await open_app(pilot, app)
        await pilot.press("colon")
        await pilot.pause()
        assert "lr features 1e-3" in screen_text(app)
        groups = [g.name for g in app.snap.groups]
        assert app.command_line.input.placeholder.startswith(f"lr {groups[0]} ")


async def test_rebuild_first_tab_after_choosing_reaches_lr(paused_run) -> None:
    app = ConsoleApp(paused_run)
    async with app.run_test(size=(80, 24)) as pilot:
        await open_app(pilot, app)
        await pilot.press("R")
        await pilot.pause()
        await pilot.press("enter", "down", "enter")  # open the class list, choose the next
        await pilot.pause()
        assert str(app.screen.query_one("#rebuild-class").value) != "SGD"
        await pilot.press("tab")
        await pilot.pause()
        assert app.focused is not None and app.focused.id == "rebuild-lr"


async def test_user_keymap_rebinds_by_id_and_reports_bad_entries(paused_run, tmp_path) -> None:
    keymap = tmp_path / "keymap.toml"
    keymap.write_text('pause = "p"\nresume = "p"\nfrobnicate = "x"\n')
    app = ConsoleApp(paused_run, keymap_file=keymap)
    async with app.run_test(size=SIZE) as pilot:
        await open_app(pilot, app)
        assert "no binding has the id 'frobnicate'" in log_text(app)
        await wait_until(pilot, lambda: "p Resume" in footer_text(app), what="the new key shown")
        await pilot.press("p")
        assert (await paused_run.settle())[-1].ok
        assert paused_run.texts == ["resume"]
        await until_shown(pilot, app, lambda s: s.status.state == RunState.RUNNING, "RUNNING")
        assert trainer_of(paused_run).alive


async def test_a_keymap_that_is_not_toml_keeps_the_defaults(paused_run, tmp_path) -> None:
    keymap = tmp_path / "keymap.toml"
    keymap.write_text("pause = \n")
    app = ConsoleApp(paused_run, keymap_file=keymap)
    async with app.run_test(size=SIZE) as pilot:
        await open_app(pilot, app)
        notes = [ln for ln in app.run_log.lines_text if "not valid TOML" in ln]
        assert len(notes) == 1 and "default keys kept" in notes[0]
        await wait_until(pilot, lambda: "␣ Resume" in footer_text(app), what="the default key")


async def test_while_the_script_loads_nothing_to_steer_is_offered() -> None:
    """The LOADING view (what LaunchSession shows while the script imports): a frozen
    snapshot in that state is enough to see what the footer offers."""
    from dataclasses import replace

    from tests.ui.fake_session import FakeSession, frozen_snapshot

    snap = frozen_snapshot()
    session = FakeSession(replace(snap, status=replace(snap.status, state=RunState.LOADING)))
    app = ConsoleApp(session)
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(pilot, lambda: "q Quit" in footer_text(app), what="the footer")
        shown = footer_text(app)
        for gone in ("Pause", "Resume", "Decay", "Split", "Undo", "Ckpt"):
            assert gone not in shown, (gone, shown)
        await pilot.press("space", "d")
        await pilot.pause()
        assert session.submitted == []
