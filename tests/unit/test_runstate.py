"""The run state machine: each transition, and the ones it refuses."""

from __future__ import annotations

import pytest

from tests.reliability.helpers import sync_trainer
from tests.unit.models import make_spec
from tuiconsole.engine.runstate import RunControl
from tuiconsole.engine.snapshot import RunState as S
from tuiconsole.errors import CommandError


def started(paused: bool = False) -> RunControl:
    c = RunControl(start_paused=paused)
    assert c.state == S.STARTING and not c.can_step
    c.begin()
    return c


def test_begin_runs_or_pauses():
    assert started().state == S.RUNNING and started().can_step
    assert started(paused=True).state == S.PAUSED and not started(paused=True).can_step


def test_step_n_pauses_after_exactly_n_steps():
    c = started(paused=True)
    c.step(3)
    assert c.state == S.STEPPING and c.can_step and c.steps_left == 3
    assert [c.stepped(), c.stepped()] == [False, False] and c.state == S.STEPPING
    assert c.stepped() is True  # the step that ended it
    assert c.state == S.PAUSED and c.steps_left == 0 and not c.can_step
    assert c.stepped() is False and c.state == S.PAUSED  # a step_now while paused


def test_pause_and_resume():
    c = started()
    c.pause()
    assert c.state == S.PAUSED
    c.step(5)
    c.pause()  # ends a step N at once
    assert c.state == S.PAUSED and c.steps_left == 0
    c.resume()
    assert c.state == S.RUNNING and c.can_step


def test_nan_paused_leaves_by_resume_or_step_and_a_pause_keeps_it():
    c = started()
    c.nan_paused()
    assert c.state == S.NAN_PAUSED and not c.can_step
    c.pause()
    assert c.state == S.NAN_PAUSED  # still the NaN pause: the console says why
    c.step(2)
    assert c.state == S.STEPPING and c.steps_left == 2  # one transition, no PAUSED between
    c.nan_paused()
    c.resume()
    assert c.state == S.RUNNING
    c.nan_paused()
    c.nan_resumed()  # a replay, where the original run resumed
    assert c.state == S.RUNNING
    c.nan_resumed()
    assert c.state == S.RUNNING  # only from NAN-PAUSED


@pytest.mark.parametrize("end", ["finish", "fail", "stop"])
def test_terminal_states_refuse_pause_resume_and_step(end):
    c = started()
    getattr(c, end)()
    assert c.state.is_terminal and not c.can_step
    for command, args in (("pause", ()), ("resume", ()), ("step", (1,))):
        with pytest.raises(CommandError, match=f"the run is {c.state.value}"):
            getattr(c, command)(*args)
    state = c.state
    c.end()
    assert c.state == state


def test_stop_keeps_finished_and_error_and_end_stops_the_rest():
    for how, expected in (("finish", S.FINISHED), ("fail", S.ERROR)):
        c = started()
        getattr(c, how)()
        c.stop()
        assert c.state == expected
    c = started(paused=True)
    c.stop()
    assert c.state == S.STOPPED
    c = started()
    c.nan_paused()
    c.end()
    assert c.state == S.STOPPED


def test_evaluating_goes_back_where_it_was_even_on_error():
    c = started()
    c.step(4)
    with c.evaluating():
        assert c.state == S.EVALUATING and not c.can_step
    assert c.state == S.STEPPING and c.steps_left == 4
    with pytest.raises(ZeroDivisionError), c.evaluating():
        1 / 0  # noqa: B018
    assert c.state == S.STEPPING and c.steps_left == 4


def test_the_trainer_follows_the_machine(tmp_path):
    """The real loop path: step N through apply_now, the NaN pause, a stop."""
    t = sync_trainer(make_spec(), tmp_path / "run", start_paused=True)
    assert t.state == S.PAUSED
    assert t.apply_now("step 2").message == "stepping 2 step(s) from step 0"
    assert t.state == S.STEPPING
    t.step_now(2)
    assert t.state == S.PAUSED and t.step == 2
    r = t.apply_now("eval")
    assert r.ok and t.state == S.PAUSED
    assert t.apply_now("stop").ok and t.state == S.STOPPED
    r = t.apply_now("resume")
    assert not r.ok and r.message == "the run is STOPPED; nothing to resume"
    t.close()
