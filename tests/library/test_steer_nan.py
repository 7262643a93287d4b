"""The NaN policy of `tuiconsole run` for an own loop: --nan pause blocks at the
boundary (NAN-PAUSED) until `resume`, stop ends with StopTraining(code 1), ignore
notes it and goes on."""

from __future__ import annotations

import math

import pytest
import torch

from tests.library.steerloop import Beside, commands, end_record, journal, make, train, wait_state
from tuiconsole.engine.snapshot import RunState
from tuiconsole.errors import StopTraining

BAD = 4  # the loss the loop passes after step 4 (journal step 5) is not finite


def _nan_at(as_float: bool):
    def loss_of(step: int, loss: torch.Tensor):
        # Only the value handed to steer is bad: the weights stay finite, so a later
        # pause could only come from this one loss being found again.
        value = loss.detach() * math.nan if step == BAD else loss.detach()
        return float(value) if as_float else value

    return loss_of


@pytest.mark.parametrize("first", [[], ["decay 0.1"]], ids=["resume", "decay-then-resume"])
@pytest.mark.parametrize("as_float", [False, True], ids=["tensor", "float"])
def test_nan_pause_blocks_at_that_boundary_until_resume_and_only_once(new_steer, as_float, first):
    parts = make()
    steer = new_steer(parts, nan="pause")
    taken: list[int] = []
    seen: dict[str, object] = {}

    def front_end() -> None:
        wait_state(steer, RunState.NAN_PAUSED)
        seen["taken"] = list(taken)
        seen["status"] = steer.session.snapshot().status
        # served while NaN-paused, then the resume
        seen["results"] = [steer.session.submit(c).result(20) for c in [*first, "resume"]]

    beside: list[Beside] = []

    def at(step: int) -> None:
        taken.append(step)
        if step == BAD:
            beside.append(Beside(front_end))

    train(steer, parts, 40, before_boundary=at, loss_of=_nan_at(as_float))
    beside[0].result()
    assert seen["taken"] == list(range(BAD + 1))  # blocked in the boundary of the bad step
    assert seen["status"].step == BAD + 1
    assert all(r.ok for r in seen["results"]), seen["results"]
    assert taken == list(range(40))  # and it went on to the end
    steer.close()  # reads every loss left: the bad one must not be found a second time
    nans = [r for r in journal(steer.run_dir) if r["type"] == "nan"]
    assert len(nans) == 1 and nans[0]["step"] == BAD + 1 and nans[0]["action"] == "pause"
    assert [c[1] for c in commands(steer.run_dir)] == [
        *(f"{c} all" for c in first),
        "resume",
    ]
    assert {c[0] for c in commands(steer.run_dir)} == {BAD + 1}
    end = end_record(steer.run_dir)
    assert end["step"] == 40 and end["state"] == "STOPPED" and end["checkpoint"]


@pytest.mark.parametrize("as_float", [False, True], ids=["tensor", "float"])
def test_nan_stop_ends_the_loop_with_code_1(new_steer, as_float):
    parts = make()
    steer = new_steer(parts, nan="stop")
    with pytest.raises(StopTraining) as stopped:
        train(steer, parts, 40, loss_of=_nan_at(as_float))
    assert stopped.value.code == 1
    assert "failed at step 5" in str(stopped.value)
    assert steer.steps == BAD + 1
    steer.close()
    end = end_record(steer.run_dir)
    assert end["state"] == "ERROR"
    assert [r["step"] for r in journal(steer.run_dir) if r["type"] == "nan"] == [BAD + 1]


def test_nan_ignore_notes_it_and_goes_on(new_steer):
    parts = make()
    steer = new_steer(parts, nan="ignore", log_every=1)
    train(steer, parts, 20, loss_of=_nan_at(False))
    steer.close()
    assert end_record(steer.run_dir)["state"] == "STOPPED"
    assert not [r for r in journal(steer.run_dir) if r["type"] == "nan"]
    noted = [e for e in steer.snapshot().log if e.kind == "nan"]
    assert len(noted) == 1 and "--nan=ignore" in noted[0].text


def test_a_run_that_is_not_served_stops_on_nan_by_default(new_steer):
    """No front-end could send `resume` to a NaN pause (listen=False): it stops."""
    parts = make()
    steer = new_steer(parts)  # listen=False
    with pytest.raises(StopTraining) as stopped:
        train(steer, parts, 40, loss_of=_nan_at(False))
    assert stopped.value.code == 1


def test_with_swallows_a_stop_but_not_a_failed_run(new_steer):
    """`with steer:` goes on after a clean stop (--max-steps); a failed run still leaves
    with code 1, as the process would without the block."""
    parts = make()
    with new_steer(parts, max_steps=3) as steer:
        train(steer, parts, 40)
    assert steer.steps == 3 and end_record(steer.run_dir)["state"] == "FINISHED"
    parts = make()
    with pytest.raises(StopTraining) as stopped, new_steer(parts, nan="stop") as failing:
        train(failing, parts, 40, loss_of=_nan_at(False))
    assert stopped.value.code == 1
    assert end_record(failing.run_dir)["state"] == "ERROR"
