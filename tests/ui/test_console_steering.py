"""The console against the real engine: real keys in, real optimizer out.

Every test drives ConsoleApp with Pilot over a real Trainer and a real torch
model, then checks what the user sees *and* the real optimizer. The optimizer
is read only while the run is paused and every command the console sent has
been answered (RecordingSession.settle), so the trainer thread is idle.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from textual.command import CommandList

from tests.helpers import trainer_of
from tests.ui.real_run import (
    RecordingSession,
    footer_text,
    log_text,
    lrs,
    screen_text,
    until_shown,
    wait_until,
)
from tuiconsole.engine.snapshot import RunState
from tuiconsole.ui.app import ConsoleApp
from tuiconsole.ui.screens.confirm import ConfirmScreen, GuardScreen, RebuildScreen
from tuiconsole.ui.screens.edit_lr import EditLrScreen
from tuiconsole.ui.screens.split_name import SplitNameScreen

pytestmark = pytest.mark.slow  # a real trainer thread under each console

SIZE = (120, 40)


# -- helpers ----------------------------------------------------------------------------------


async def open_app(pilot, app: ConsoleApp) -> None:
    await until_shown(pilot, app, lambda s: s.status.state != RunState.STARTING, "first snapshot")


async def select_module(pilot, app: ConsoleApp, path: str) -> None:
    """Move the tree cursor with the arrow keys until ``path`` is selected."""
    app.layer_tree.focus()
    await pilot.pause()
    for _ in range(40):
        if app.layer_tree.selected_path == path:
            return
        await pilot.press("down")
    raise AssertionError(f"could not reach {path!r} with the arrow keys")


async def select_group(pilot, app: ConsoleApp, name: str) -> None:
    """Tab to the group table and move to ``name`` with the arrow keys."""
    while not app.group_table.has_focus:
        await pilot.press("tab")
    for _ in range(10):
        if app.group_table.selected_group == name:
            return
        await pilot.press("down")
    raise AssertionError(f"could not reach group {name!r}")


async def steps(pilot, app: ConsoleApp, session: RecordingSession, n: int) -> None:
    """Press n, n times, waiting for each step to land (builds momentum buffers)."""
    for _ in range(n):
        target = trainer_of(session).step + 1
        await pilot.press("n")
        await session.settle()
        await until_shown(
            pilot,
            app,
            lambda s, t=target: s.status.step == t and s.status.state == RunState.PAUSED,
            "the step",
        )


async def later_frames(pilot, app: ConsoleApp, n: int = 3) -> None:
    """Wait until the console has shown ``n`` snapshots newer than the one on screen.

    The positive event before a check that something did *not* happen: the trainer's
    loop builds a fresh snapshot for each of the console's polls while it is paused or
    has ended, so n newer ones shown means both loops went round n times since.
    """
    seq0 = app.snap.seq
    await until_shown(pilot, app, lambda s: s.seq >= seq0 + n, f"{n} newer snapshots shown")


async def say_yes_to_big_change(pilot, app: ConsoleApp) -> None:
    """A 10x-or-more lr change asks first (the guard rail); say yes."""
    await wait_until(pilot, lambda: isinstance(app.screen, GuardScreen), what="the lr question")
    await pilot.press("y")


def notified(app: ConsoleApp, text: str) -> bool:
    return any(text in str(n.message) for n in app._notifications)


def state_copy(opt: torch.optim.Optimizer) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """id(param) -> (the live momentum buffer object, a copy of its values)."""
    return {
        id(p): (st["momentum_buffer"], st["momentum_buffer"].clone())
        for p, st in opt.state.items()
        if "momentum_buffer" in st
    }


def assert_state_kept(opt: torch.optim.Optimizer, before) -> None:
    after = {id(p): st["momentum_buffer"] for p, st in opt.state.items()}
    assert after.keys() == before.keys()
    for pid, (buf, values) in before.items():
        assert after[pid] is buf, "the momentum buffer tensor was replaced"
        assert torch.equal(after[pid], values), "the momentum buffer values changed"


def cell(app: ConsoleApp, group: str, column: str) -> str:
    return app.group_table.get_cell(group, column).plain


# -- run control ------------------------------------------------------------------------------


async def test_space_pauses_and_n_steps_exactly_one(run_factory) -> None:
    session = run_factory(paused=False)
    app = ConsoleApp(session)
    async with app.run_test(size=SIZE) as pilot:
        await until_shown(pilot, app, lambda s: s.status.step >= 5, "training to run")
        assert "RUNNING" in app.status_bar.text.plain

        await pilot.press("space")
        assert (await session.settle())[-1].ok
        await until_shown(pilot, app, lambda s: s.status.state == RunState.PAUSED, "PAUSED")
        paused_at = trainer_of(session).step
        await later_frames(pilot, app, 4)
        assert trainer_of(session).step == paused_at, "the step count advanced while paused"
        assert f"step {paused_at}" in app.status_bar.text.plain
        assert "PAUSED" in app.status_bar.text.plain

        await pilot.press("n")
        await session.settle()
        await until_shown(
            pilot,
            app,
            lambda s: s.status.step == paused_at + 1 and s.status.state == RunState.PAUSED,
            "one step",
        )
        await later_frames(pilot, app, 3)
        assert trainer_of(session).step == paused_at + 1, "n must advance exactly one step"
        assert f"step {paused_at + 1}" in app.status_bar.text.plain

        await pilot.press("space")
        await session.settle()
        await until_shown(pilot, app, lambda s: s.status.step > paused_at + 5, "resumed")
        assert session.texts == ["pause", "step", "resume"]
        assert "pause: paused at step" in log_text(app)


async def test_n_while_running_only_explains(run_factory) -> None:
    session = run_factory(paused=False)
    app = ConsoleApp(session)
    async with app.run_test(size=SIZE) as pilot:
        await until_shown(pilot, app, lambda s: s.status.state == RunState.RUNNING, "RUNNING")
        await pilot.press("n")
        await wait_until(
            pilot, lambda: notified(app, "press space to pause"), what="the explanation"
        )
        assert session.texts == []


async def test_v_evaluates_and_shows_the_eval(paused_run) -> None:
    app = ConsoleApp(paused_run)
    async with app.run_test(size=SIZE) as pilot:
        await open_app(pilot, app)
        await pilot.press("v")
        assert (await paused_run.settle())[-1].ok
        await until_shown(pilot, app, lambda s: len(s.evals) == 1, "the eval")
        await wait_until(
            pilot, lambda: "eval at step 0: loss" in log_text(app), what="the eval's log line"
        )
        assert "eval @0: loss" in app.status_bar.text.plain
        assert "eval at step 0: loss" in log_text(app)


async def test_modal_does_not_block_training_or_refresh(run_factory) -> None:
    session = run_factory(paused=False)
    app = ConsoleApp(session)
    async with app.run_test(size=SIZE) as pilot:
        await until_shown(pilot, app, lambda s: s.status.state == RunState.RUNNING, "RUNNING")
        await select_group(pilot, app, "features")
        await pilot.press("e")
        await pilot.pause()
        assert isinstance(app.screen, EditLrScreen)
        step0, frames0 = trainer_of(session).step, app.frames
        # A deadline, not a fixed pause: on a loaded CI box 0.8 s may hold only two polls.
        await wait_until(
            pilot,
            lambda: trainer_of(session).step > step0 + 5 and app.frames > frames0 + 2,
            what="training and the view to go on under the modal",
        )
        assert isinstance(app.screen, EditLrScreen), "the modal closed by itself"
        assert f"step {app.snap.status.step}" in app.status_bar.text.plain
        await pilot.press("escape")
        assert session.texts == []


# -- learning rates ---------------------------------------------------------------------------


async def test_e_on_group_row_sets_exactly_that_groups_lr(paused_run) -> None:
    app = ConsoleApp(paused_run)
    async with app.run_test(size=SIZE) as pilot:
        await open_app(pilot, app)
        await steps(pilot, app, paused_run, 2)
        before = state_copy(paused_run.optimizer)
        assert lrs(paused_run) == [0.01, 0.1]

        await select_group(pilot, app, "classifier")
        await pilot.press("e")
        await pilot.pause()
        assert isinstance(app.screen, EditLrScreen)
        await pilot.press(*"1e-3", "enter")
        await say_yes_to_big_change(pilot, app)  # 0.1 -> 1e-3 is 100x
        results = await paused_run.settle()
        assert results[-1].ok, results[-1]
        assert paused_run.texts[-1] == "lr classifier 1e-3"
        assert lrs(paused_run) == [0.01, 1e-3]
        assert_state_kept(paused_run.optimizer, before)

        await until_shown(pilot, app, lambda s: s.group("classifier").lr == 1e-3, "the lr")
        await wait_until(
            pilot, lambda: "lr classifier 0.001:" in log_text(app), what="the lr's log line"
        )
        assert cell(app, "classifier", "lr") == "1e-3"
        assert cell(app, "features", "lr") == "0.01"
        assert "lr classifier 0.001: lr classifier 0.1->0.001" in log_text(app)
        assert "momentum/Adam state kept" in log_text(app)


async def test_enter_on_tree_node_scales_lr_relatively(paused_run) -> None:
    app = ConsoleApp(paused_run)
    async with app.run_test(size=SIZE) as pilot:
        await open_app(pilot, app)
        await select_module(pilot, app, "features")
        await pilot.press("enter")
        await pilot.pause()
        assert isinstance(app.screen, EditLrScreen)
        await pilot.press(*"*0.5", "enter")
        assert (await paused_run.settle())[-1].ok
        assert lrs(paused_run) == [0.01 * 0.5, 0.1]
        await pilot.press("enter")
        await pilot.pause()
        await pilot.press(*"/10", "enter")
        await say_yes_to_big_change(pilot, app)
        assert (await paused_run.settle())[-1].ok
        assert lrs(paused_run) == [0.01 * 0.5 / 10, 0.1]
        await until_shown(pilot, app, lambda s: s.group("features").lr == 0.0005, "the lr")
        await wait_until(
            pilot,
            lambda: "■features 5e-4" in app.layer_tree.label_of("features"),
            what="the new lr in the tree",
        )


async def test_bad_lr_shows_inline_error_and_changes_nothing(paused_run) -> None:
    app = ConsoleApp(paused_run)
    async with app.run_test(size=SIZE) as pilot:
        await open_app(pilot, app)
        await steps(pilot, app, paused_run, 1)
        before = state_copy(paused_run.optimizer)
        await select_group(pilot, app, "features")
        await pilot.press("e")
        await pilot.pause()
        for bad, message in [("-1", "must be > 0"), ("abc", "must be a number"), ("*0", "> 0")]:
            await pilot.press("ctrl+a", "ctrl+k", *bad, "enter")
            await pilot.pause()
            assert isinstance(app.screen, EditLrScreen), f"{bad!r} closed the modal"
            error = str(app.screen.query_one("#lr-error").render())
            assert message in error and "nothing applied" in error
        await pilot.press("escape")
        await pilot.pause()
        assert not isinstance(app.screen, EditLrScreen)
        assert paused_run.texts[-1] == "step", "a bad value or a cancel sent a command"
        assert lrs(paused_run) == [0.01, 0.1]
        assert_state_kept(paused_run.optimizer, before)


async def test_d_decays_selected_group_and_D_all_keeping_state(paused_run) -> None:
    app = ConsoleApp(paused_run)
    async with app.run_test(size=SIZE) as pilot:
        await open_app(pilot, app)
        await steps(pilot, app, paused_run, 2)
        before = state_copy(paused_run.optimizer)
        await select_group(pilot, app, "features")
        await pilot.press("d")
        await say_yes_to_big_change(pilot, app)  # a decay by 0.1 is a 10x change
        assert (await paused_run.settle())[-1].ok
        assert paused_run.texts[-1] == "decay 0.1 features"
        assert lrs(paused_run) == [0.01 * 0.1, 0.1]
        assert_state_kept(paused_run.optimizer, before)

        await pilot.press("D")
        await say_yes_to_big_change(pilot, app)  # D always asks
        assert (await paused_run.settle())[-1].ok
        assert lrs(paused_run) == [0.01 * 0.1 * 0.1, 0.1 * 0.1]
        assert_state_kept(paused_run.optimizer, before)
        await until_shown(pilot, app, lambda s: s.group("classifier").lr == 0.1 * 0.1, "the lr")
        await wait_until(
            pilot, lambda: "decay 0.1 all:" in log_text(app), what="the decay's log line"
        )
        assert "decay 0.1 all: lr features" in log_text(app)
        assert "momentum/Adam state kept" in log_text(app)


async def test_decay_factor_option_is_used(run_factory) -> None:
    session = run_factory(paused=True)
    app = ConsoleApp(session, decay_factor=0.5)
    async with app.run_test(size=SIZE) as pilot:
        await open_app(pilot, app)
        await select_module(pilot, app, "classifier.0")
        await pilot.press("d")  # a module: decays the group it belongs to
        assert (await session.settle())[-1].ok
        assert lrs(session) == [0.01, 0.05]


# -- groups: split and rebuild ---------------------------------------------------------------


async def test_m_and_s_split_marked_modules_keeping_momentum(paused_run) -> None:
    app = ConsoleApp(paused_run)
    async with app.run_test(size=SIZE) as pilot:
        await open_app(pilot, app)
        await steps(pilot, app, paused_run, 2)
        before = state_copy(paused_run.optimizer)
        model = trainer_of(paused_run).model
        fc_params = {id(p) for p in model.classifier[0].parameters()} | {
            id(p) for p in model.classifier[3].parameters()
        }

        await select_module(pilot, app, "classifier.0")
        await pilot.press("m")  # marks and moves down
        await select_module(pilot, app, "classifier.3")
        await pilot.press("m")
        assert app.layer_tree.marked == {"classifier.0", "classifier.3"}
        assert app.layer_tree.label_of("classifier.0").startswith("● ")
        await pilot.press("s")
        await pilot.pause()
        assert isinstance(app.screen, SplitNameScreen)
        assert app.screen.query_one("#split-name").value == "classifier-2"
        await pilot.press("ctrl+a", "ctrl+k", *"fc", "enter")
        result = (await paused_run.settle())[-1]
        assert result.ok, result
        assert paused_run.texts[-1] == "split fc classifier.0 classifier.3"

        groups = paused_run.optimizer.param_groups
        assert [g["name"] for g in groups] == ["features", "classifier", "fc"]
        assert {id(p) for p in groups[2]["params"]} == fc_params
        assert not fc_params & {id(p) for p in groups[1]["params"]}
        assert groups[2]["lr"] == 0.1 and groups[2]["momentum"] == 0.9
        assert_state_kept(paused_run.optimizer, before)

        await until_shown(pilot, app, lambda s: s.group("fc") is not None, "the new group")
        await wait_until(
            pilot,
            lambda: "■fc 0.1" in app.layer_tree.label_of("classifier.0"),
            what="the new group in the tree",
        )
        assert cell(app, "fc", "lr") == "0.1"
        assert "■fc 0.1" in app.layer_tree.label_of("classifier.0")
        assert app.layer_tree.marked == set()


async def test_e_on_part_of_a_group_offers_split_first(paused_run) -> None:
    app = ConsoleApp(paused_run)
    async with app.run_test(size=SIZE) as pilot:
        await open_app(pilot, app)
        await steps(pilot, app, paused_run, 1)
        before = state_copy(paused_run.optimizer)
        await select_module(pilot, app, "classifier.0")
        await pilot.press("e")
        await pilot.pause()
        assert isinstance(app.screen, EditLrScreen)
        checkbox = app.screen.query_one("#lr-split")
        assert checkbox.value is True
        assert "classifier.0" in str(checkbox.label)
        await pilot.press("ctrl+a", "ctrl+k", *"1e-3", "enter")
        await say_yes_to_big_change(pilot, app)
        assert (await paused_run.settle())[-1].ok
        assert paused_run.texts[-1] == "split classifier.0 classifier.0 lr=1e-3"
        groups = paused_run.optimizer.param_groups
        assert [(g["name"], g["lr"]) for g in groups] == [
            ("features", 0.01),
            ("classifier", 0.1),
            ("classifier.0", 1e-3),
        ]
        model = trainer_of(paused_run).model
        assert {id(p) for p in groups[2]["params"]} == {
            id(p) for p in model.classifier[0].parameters()
        }
        assert_state_kept(paused_run.optimizer, before)


async def test_e_on_part_of_a_group_relative_value_splits_then_scales(paused_run) -> None:
    app = ConsoleApp(paused_run)
    async with app.run_test(size=SIZE) as pilot:
        await open_app(pilot, app)
        await select_module(pilot, app, "classifier.3")
        await pilot.press("e")
        await pilot.pause()
        await pilot.press("ctrl+a", "ctrl+k", *"*0.5", "enter")
        await wait_until(pilot, lambda: len(paused_run.sent) == 2, what="the chained lr")
        assert all(r.ok for r in await paused_run.settle())
        assert paused_run.texts == ["split classifier.3 classifier.3", "lr classifier.3 *0.5"]
        assert lrs(paused_run) == [0.01, 0.1, 0.05]


async def test_R_confirm_rebuilds_and_drops_state(paused_run) -> None:
    app = ConsoleApp(paused_run)
    async with app.run_test(size=SIZE) as pilot:
        await open_app(pilot, app)
        await steps(pilot, app, paused_run, 2)
        assert len(paused_run.optimizer.state) > 0
        old = paused_run.optimizer
        await pilot.press("R")
        await pilot.pause()
        assert isinstance(app.screen, RebuildScreen)
        warning = str(app.screen.query_one(".warning").render())
        assert "LOST" in warning
        # Pick Adam from the class list with the keyboard, then type the lr.
        await pilot.press("enter", "down", "enter")
        await pilot.pause()
        assert app.screen.query_one("#rebuild-class").value == "Adam"
        await pilot.press("tab", *"0.002", "enter")
        result = (await paused_run.settle())[-1]
        assert result.ok, result
        assert paused_run.texts[-1] == "rebuild Adam lr=0.002"
        new = paused_run.optimizer
        assert new is not old and type(new).__name__ == "Adam"
        assert len(new.state) == 0
        assert [g["lr"] for g in new.param_groups] == [0.002, 0.002]
        assert [g["name"] for g in new.param_groups] == ["features", "classifier"]
        await until_shown(pilot, app, lambda s: s.optimizer == "Adam", "the new optimizer")
        await wait_until(pilot, lambda: "dropped" in log_text(app), what="the rebuild's log line")
        assert "Adam" in app.status_bar.text.plain
        assert "state of" in log_text(app) and "dropped" in log_text(app)
        assert cell(app, "features", "mom") == "0.9,0.999"


async def test_R_cancel_and_bad_input_leave_everything_unchanged(paused_run) -> None:
    app = ConsoleApp(paused_run)
    async with app.run_test(size=SIZE) as pilot:
        await open_app(pilot, app)
        await steps(pilot, app, paused_run, 1)
        old = paused_run.optimizer
        before = state_copy(old)
        await pilot.press("R")
        await pilot.pause()
        await pilot.press("tab", *"-3", "enter")
        await pilot.pause()
        assert isinstance(app.screen, RebuildScreen)
        assert "must be > 0" in str(app.screen.query_one("#rebuild-error").render())
        await pilot.press("escape")
        await pilot.pause()
        assert not isinstance(app.screen, RebuildScreen)
        assert paused_run.texts == ["step"]
        assert paused_run.optimizer is old
        assert lrs(paused_run) == [0.01, 0.1]
        assert_state_kept(old, before)


# -- command line, palette, help --------------------------------------------------------------


async def test_command_line_completes_runs_and_remembers(paused_run) -> None:
    app = ConsoleApp(paused_run)
    async with app.run_test(size=SIZE) as pilot:
        await open_app(pilot, app)
        await pilot.press("colon")
        await pilot.pause()
        line = app.command_line.input
        assert line.has_focus
        await pilot.press(*"l", "tab")
        assert line.value == "lr"  # the prefix lr and lrfind share
        await pilot.press("space", *"fe", "tab")
        assert line.value == "lr features"
        # features.0, features.2: "features" prefix is shared by module paths too
        await pilot.press(*" 0.02", "enter")
        assert (await paused_run.settle())[-1].ok
        assert paused_run.texts == ["lr features 0.02"]
        assert lrs(paused_run) == [0.02, 0.1]
        assert not app.command_line.is_open

        await pilot.press("colon")
        await pilot.press("up")
        assert line.value == "lr features 0.02"
        # A line that does not parse: inline error, nothing sent, the line stays.
        await pilot.press("ctrl+a", "ctrl+k", *"lr features", "enter")
        await pilot.pause()
        assert app.command_line.is_open
        assert "usage: lr TARGET VALUE" in str(app.command_line.query_one("#cmd-hint").render())
        assert len(paused_run.sent) == 1
        # A line that parses but the engine refuses: a red log line, nothing changed.
        await pilot.press("ctrl+a", "ctrl+k", *"lr nosuch 1", "enter")
        result = (await paused_run.settle())[-1]
        assert not result.ok
        assert lrs(paused_run) == [0.02, 0.1]
        await wait_until(pilot, lambda: "lr nosuch 1.0:" in log_text(app), what="the error line")
        await pilot.press("escape")


async def until_first_hit(pilot, app, text: str) -> None:
    """The palette searches in a worker: wait until its top hit is the one typed for
    (until then enter would run the previous query's top hit)."""

    def first_hit() -> str:
        hits = app.screen.query_one(CommandList)
        return str(hits.get_option_at_index(0).prompt) if hits.option_count else ""

    await wait_until(pilot, lambda: text in first_hit(), what=f"the palette hit {text!r}")


async def test_palette_runs_console_actions(paused_run) -> None:
    app = ConsoleApp(paused_run)
    async with app.run_test(size=SIZE) as pilot:
        await open_app(pilot, app)
        await pilot.press("ctrl+p")
        await pilot.pause()
        await pilot.press(*"decay group cla")
        await until_first_hit(pilot, app, "classifier")
        await pilot.press("enter")
        await say_yes_to_big_change(pilot, app)
        await wait_until(pilot, lambda: paused_run.sent, what="the palette command")
        assert (await paused_run.settle())[-1].ok
        assert paused_run.texts == ["decay 0.1 classifier"]
        assert lrs(paused_run) == [0.01, 0.1 * 0.1]

        await pilot.press("ctrl+p")
        await pilot.pause()
        await pilot.press(*"lr features .03")
        await until_first_hit(pilot, app, "run: lr features .03")
        await pilot.press("enter")
        await wait_until(pilot, lambda: len(paused_run.sent) == 2, what="the typed command")
        await paused_run.settle()
        assert lrs(paused_run)[0] == 0.03


async def test_help_is_generated_from_the_bindings(paused_run) -> None:
    app = ConsoleApp(paused_run)
    async with app.run_test(size=SIZE) as pilot:
        await open_app(pilot, app)
        await pilot.press("question_mark")
        await pilot.pause()
        rows = {r.action: r for r in app.screen.rows if r.section == "console"}
        assert "detach" not in rows  # nothing serves this run: ctrl+d is off
        # What does not apply here is not listed: ctrl+d (nothing serves this run), the
        # log's filter (the tree has focus), Pause (paused), taking control (not attached).
        off = {"detach", "log_filter", "toggle_pause('pause')", "take_control"}
        off.add("request_quit('detach')")
        assert not off & rows.keys()
        for binding in ConsoleApp.BINDINGS:
            if binding.action in off:
                continue
            row = rows[binding.action]
            assert app.get_key_display(binding) in row.keys.split(", "), binding
        assert rows["edit_lr"].keys == "e, ⏎"
        assert rows["edit_lr"].description == "Edit the lr of the selected group/module"
        assert rows["toggle_pause('resume')"].keys == "␣"  # paused: "Resume" is offered
        assert rows["request_quit"].keys.startswith("q")
        assert "model tree" in {r.section for r in app.screen.rows}  # the focused tree's keys
        shown = screen_text(app)
        assert "Rebuild the optimizer (drops its state)" in shown
        app.screen.query_one("#help-body").scroll_end(animate=False)
        await pilot.pause()
        shown = screen_text(app)
        assert "lr TARGET VALUE" in shown and "at STEP COMMAND" in shown  # the grammar too
        await pilot.press("escape")
        await pilot.pause()
        assert app.screen is app.screen_stack[0]


# -- quitting and the end of a run -----------------------------------------------------------


async def test_q_asks_then_stops_training_cleanly(run_factory) -> None:
    session = run_factory(paused=False)
    app = ConsoleApp(session)
    async with app.run_test(size=SIZE) as pilot:
        await until_shown(pilot, app, lambda s: s.status.state == RunState.RUNNING, "RUNNING")
        await pilot.press("q")
        await pilot.pause()
        assert isinstance(app.screen, ConfirmScreen)
        await pilot.press("escape")
        await pilot.pause()
        assert not isinstance(app.screen, ConfirmScreen)
        assert trainer_of(session).alive and session.texts == []

        await pilot.press("q")
        await pilot.pause()
        await pilot.press("q")
        await wait_until(pilot, lambda: not app.is_running, what="the app to exit")
    assert session.texts == ["stop"]
    assert session.wait(5)
    assert trainer_of(session).state == RunState.STOPPED
    journal = (trainer_of(session).run_dir / "journal.jsonl").read_text()
    assert '"cmd": "stop"' in journal and '"source": "ui"' in journal


async def test_ctrl_c_in_the_quit_confirm_quits(run_factory) -> None:
    session = run_factory(paused=True)
    app = ConsoleApp(session)
    async with app.run_test(size=SIZE) as pilot:
        await open_app(pilot, app)
        await pilot.press("q")
        await pilot.pause()
        await pilot.press("ctrl+c")
        await wait_until(pilot, lambda: not app.is_running, what="the app to exit")
    assert session.texts == ["stop"]


async def test_finished_run_keeps_final_state_and_refuses_steering(run_factory) -> None:
    session = run_factory(paused=False, max_steps=5)
    app = ConsoleApp(session)
    async with app.run_test(size=SIZE) as pilot:
        await until_shown(pilot, app, lambda s: s.status.state == RunState.FINISHED, "FINISHED")
        assert "FINISHED" in app.status_bar.text.plain
        assert "step 5/5" in app.status_bar.text.plain
        await pilot.press("space", "d")
        await later_frames(pilot, app, 3)
        assert session.texts == []  # nothing offered, nothing sent
        assert "FINISHED" in app.status_bar.text.plain
        footer = footer_text(app)
        assert "Pause" not in footer and "Decay" not in footer and "Quit" in footer


async def test_error_shows_type_message_and_step(run_factory) -> None:
    from tests.ui.real_run import Exploding, make_spec

    session = run_factory(paused=False, spec=make_spec(Exploding()))
    app = ConsoleApp(session)
    async with app.run_test(size=SIZE) as pilot:
        await until_shown(pilot, app, lambda s: s.status.state == RunState.ERROR, "ERROR")
        await wait_until(
            pilot, lambda: "training raised RuntimeError" in log_text(app), what="the error line"
        )
        text = app.status_bar.text.plain
        assert "ERROR" in text
        assert "RuntimeError at step 4: boom: activations went sideways" in text
        await later_frames(pilot, app, 3)
        assert "RuntimeError at step 4" in app.status_bar.text.plain


async def test_stop_on_the_command_line_asks_then_keeps_the_final_view(paused_run) -> None:
    app = ConsoleApp(paused_run)
    async with app.run_test(size=SIZE) as pilot:
        await open_app(pilot, app)
        await pilot.press("colon", *"stop", "enter")
        await pilot.pause()
        assert isinstance(app.screen, ConfirmScreen)
        await pilot.press("n")
        await pilot.pause()
        assert paused_run.texts == [] and trainer_of(paused_run).alive
        await pilot.press("colon", *"stop", "enter")
        await pilot.pause()
        await pilot.press("y")
        assert (await paused_run.settle())[-1].ok
        await until_shown(pilot, app, lambda s: s.status.state == RunState.STOPPED, "STOPPED")
        # The loop has ended (no newer snapshots will come): a key answered after it is
        # the positive event that proves the console stayed open.
        await pilot.press("space")
        await pilot.pause()
        assert app.is_running, "stopping the run must not close the console"
        assert paused_run.texts == ["stop"]
        assert "Resume" not in footer_text(app)
        assert "STOPPED" in app.status_bar.text.plain


async def test_attached_console_q_only_detaches(paused_run) -> None:
    paused_run.owns_run = False  # what a RemoteSession says; the run here is real
    app = ConsoleApp(paused_run)
    async with app.run_test(size=SIZE) as pilot:
        await open_app(pilot, app)
        await pilot.press("q")
        await wait_until(pilot, lambda: "Detach" in screen_text(app), what="the detach question")
        await pilot.press("q")
        await wait_until(pilot, lambda: not app.is_running, what="the app to exit")
    assert paused_run.texts == [], "q on an attached console must not stop the run"
    assert trainer_of(paused_run).alive


async def test_ctrl_d_detaches_a_served_run(paused_run) -> None:
    from tuiconsole.session import DETACHED

    app = ConsoleApp(paused_run, can_detach=True)
    async with app.run_test(size=SIZE) as pilot:
        await open_app(pilot, app)
        await pilot.press("ctrl+d")
        await wait_until(pilot, lambda: not app.is_running, what="the app to exit")
    assert app.return_value == DETACHED
    assert paused_run.texts == [] and trainer_of(paused_run).alive


async def test_lost_connection_is_shown_not_a_crash(paused_run) -> None:
    app = ConsoleApp(paused_run)
    async with app.run_test(size=SIZE) as pilot:
        await open_app(pilot, app)
        # What a RemoteSession reports when its socket closes (the run itself is real).
        paused_run.disconnected, paused_run.disconnect_reason = True, "the run's socket closed"
        await wait_until(
            pilot, lambda: "the run's socket closed" in screen_text(app), what="the lost state"
        )
        assert "DISCONNECTED" in screen_text(app)
        assert app.is_running


async def test_c_writes_a_checkpoint(paused_run) -> None:
    app = ConsoleApp(paused_run)
    async with app.run_test(size=SIZE) as pilot:
        await open_app(pilot, app)
        await steps(pilot, app, paused_run, 1)
        await pilot.press("c")
        result = (await paused_run.settle())[-1]
        assert result.ok, result
        assert paused_run.texts[-1] == "checkpoint"
        path = Path(result.message.rsplit("written to ", 1)[1])
        assert path.is_file() and path.stat().st_size > 0
        await wait_until(
            pilot, lambda: f"written to {path}" in log_text(app), what="the checkpoint line"
        )


async def test_an_lr_wider_than_its_column_is_shown_whole(paused_run) -> None:
    """The table sized the lr column for "0.01"; a longer lr must widen it, not be cut
    to a different-looking number ("9.92e-5" shown as "9.92")."""
    app = ConsoleApp(paused_run)
    async with app.run_test(size=SIZE) as pilot:
        await open_app(pilot, app)
        await pilot.press("colon", *"lr classifier 9.92e-5", "enter")
        await say_yes_to_big_change(pilot, app)
        assert (await paused_run.settle())[-1].ok
        await until_shown(pilot, app, lambda s: s.groups[1].lr == 9.92e-5, "the new lr")

        def row() -> str:
            return next(ln for ln in screen_text(app).splitlines() if "■ classifier" in ln)

        await wait_until(pilot, lambda: "9.92e-5" in row(), what="the whole lr in the table")
