"""pause / step N block the loop at its boundary while commands are served; ``stop``
ends it with StopTraining (a ``with`` block swallows it); the final checkpoint and
the journal's end record are written whatever ended the run."""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
from pathlib import Path

import pytest
import torch

import tuiconsole
from tests.library.steerloop import (
    Beside,
    commands,
    end_record,
    journal,
    make,
    train,
    wait_state,
)
from tuiconsole.engine.checkpoint import load_checkpoint
from tuiconsole.engine.snapshot import RunState
from tuiconsole.errors import StopTraining
from tuiconsole.remote.client import RemoteSession
from tuiconsole.remote.registry import ENV_DIR


def test_pause_blocks_at_the_boundary_while_commands_are_served(new_steer):
    parts = make()
    steer = new_steer(parts)
    taken: list[int] = []
    seen: dict[str, object] = {}

    def front_end() -> None:
        wait_state(steer, RunState.PAUSED)
        seen["lr"] = steer.session.submit("lr head 0.5").result(20)
        seen["taken while paused"] = list(taken)
        seen["step"] = steer.session.submit("step 2").result(20)
        wait_state(steer, RunState.PAUSED)  # after the two steps, paused again
        seen["taken after step 2"] = list(taken)
        seen["resume"] = steer.session.submit("resume").result(20)

    beside: list[Beside] = []

    def at(step: int) -> None:
        taken.append(step)
        if step == 2:
            steer.session.submit("pause")
            beside.append(Beside(front_end))

    train(steer, parts, 20, before_boundary=at)
    beside[0].result()
    assert seen["lr"].ok and seen["step"].ok and seen["resume"].ok, seen
    assert seen["taken while paused"] == [0, 1, 2]  # blocked in step 3's boundary
    assert seen["taken after step 2"] == [0, 1, 2, 3, 4]  # two steps, then blocked again
    assert taken == list(range(20))
    applied = commands(steer.run_dir)
    assert [c for c in applied if c[1].startswith("lr")] == [(3, "lr head 0.5", True)]
    assert parts.optimizer.param_groups[1]["lr"] == 0.5


def test_paused_waits_in_steer_until_a_front_end_resumes(tmp_path, monkeypatch):
    """steer(paused=True) serves commands before the first step: here from a client
    on the run's socket, in this process (any front-end is the same)."""
    runtime = Path(tempfile.mkdtemp(prefix="tcrt-", dir="/tmp"))  # socket paths are short
    monkeypatch.setenv(ENV_DIR, str(runtime))
    parts = make()

    def front_end():
        deadline = time.monotonic() + 20
        while not (socks := list(runtime.glob("*.sock"))):
            assert time.monotonic() < deadline, "the run was never served"
            time.sleep(0.01)
        client = RemoteSession(socks[0])
        try:
            # served from steer(), which publishes STARTING first, then PAUSED at begin()
            while (state := client.snapshot().status.state) == RunState.STARTING:
                assert time.monotonic() < deadline, "the run never left STARTING"
                time.sleep(0.01)
            return state, [client.submit(c).result(20) for c in ("lr head 0.3", "resume")]
        finally:
            client.close()

    beside = Beside(front_end)
    try:
        steer = tuiconsole.steer(
            parts.model, parts.optimizer, run_dir=tmp_path / "run", paused=True
        )
        state, results = beside.result()
        assert state == RunState.PAUSED
        assert all(r.ok for r in results), results
        assert parts.optimizer.param_groups[1]["lr"] == 0.3  # before any step was taken
        train(steer, parts, 3)
        steer.close()
    finally:
        shutil.rmtree(runtime, ignore_errors=True)
    assert [c[:2] for c in commands(tmp_path / "run")] == [(0, "lr head 0.3"), (0, "resume")]
    assert end_record(tmp_path / "run")["step"] == 3


def test_stop_raises_stoptraining_at_the_boundary_and_writes_the_end(new_steer):
    parts = make("steplr")
    steer = new_steer(parts)
    with pytest.raises(StopTraining) as stopped:
        train(
            steer,
            parts,
            100,
            before_boundary=lambda s: s == 6 and steer.session.submit("stop"),
        )
    assert stopped.value.code == 0
    assert isinstance(stopped.value, SystemExit)  # `python train.py` exits without a traceback
    assert "stopped at step 7" in str(stopped.value)
    assert steer.steps == 7 and steer.stopped
    end = end_record(steer.run_dir)  # written at the boundary, before StopTraining left it
    assert end["state"] == "STOPPED" and end["step"] == 7
    ckpt = load_checkpoint(end["checkpoint"])
    assert ckpt["step"] == 7 and ckpt["optimizer_class"] == "SGD"
    assert torch.equal(ckpt["model"]["head.1.weight"], parts.model.head[1].weight)
    with pytest.raises(StopTraining):  # a loop that goes on meets the end again
        steer.step(parts.take(7))


def test_a_with_block_swallows_stoptraining_and_code_after_it_runs(tmp_path):
    parts = make()
    after: list[int] = []
    with tuiconsole.steer(
        parts.model, parts.optimizer, run_dir=tmp_path / "run", listen=False
    ) as steer:
        train(steer, parts, 100, before_boundary=lambda s: s == 3 and steer.session.submit("stop"))
        after.append(-1)  # never reached: the loop ended by StopTraining
    after.append(steer.steps)
    assert after == [4]
    assert end_record(tmp_path / "run")["state"] == "STOPPED"


def test_a_loop_that_runs_out_finishes_the_run(tmp_path):
    parts = make()
    with tuiconsole.steer(
        parts.model, parts.optimizer, run_dir=tmp_path / "run", listen=False
    ) as steer:
        train(steer, parts, 12)
    end = end_record(tmp_path / "run")
    assert end["state"] == "FINISHED" and end["step"] == 12
    assert load_checkpoint(end["checkpoint"])["step"] == 12
    assert steer.stopped


def test_stop_from_another_thread_while_the_loop_trains(new_steer):
    parts = make()
    steer = new_steer(parts)
    go = threading.Event()
    stopper = Beside(lambda: (go.wait(20), steer.session.submit("stop"))[1])
    taken: list[int] = []

    def at(step: int) -> None:
        taken.append(step)
        if step == 5:
            go.set()
            stopper.result()  # the stop is queued: the next boundary applies it

    with pytest.raises(StopTraining):
        train(steer, parts, 10_000, before_boundary=at)
    assert len(taken) == 6
    assert [c for c in commands(steer.run_dir) if c[1] == "stop"] == [(6, "stop", True)]


def test_stop_while_paused_ends_the_blocked_boundary(new_steer):
    parts = make()
    steer = new_steer(parts)
    stopper: list[Beside] = []

    def at(step: int) -> None:
        if step == 1:
            steer.session.submit("pause")
            stopper.append(
                Beside(
                    lambda: (
                        wait_state(steer, RunState.PAUSED),
                        steer.session.submit("stop").result(20),
                    )[1]
                )
            )

    with pytest.raises(StopTraining):
        train(steer, parts, 100, before_boundary=at)
    assert stopper[0].result().ok
    end = end_record(steer.run_dir)
    assert end["state"] == "STOPPED" and end["step"] == 2 and end["checkpoint"]


def test_max_steps_ends_the_loop_with_a_finished_run(tmp_path):
    parts = make()
    with tuiconsole.steer(
        parts.model, parts.optimizer, run_dir=tmp_path / "run", listen=False, max_steps=5
    ) as steer:
        taken = train(steer, parts, 100)
        assert taken == [0, 1, 2, 3, 4, 5]  # pragma: no cover - StopTraining comes first
    assert steer.steps == 5
    end = end_record(tmp_path / "run")
    assert end["state"] == "FINISHED" and end["step"] == 5 and end["checkpoint"]


def test_an_error_in_the_loop_ends_the_run_in_error_and_goes_on_up(tmp_path):
    parts = make()

    def at(step: int) -> None:
        if step == 4:
            raise ValueError("the user's code broke")

    with (
        pytest.raises(ValueError, match="the user's code broke"),
        tuiconsole.steer(
            parts.model, parts.optimizer, run_dir=tmp_path / "run", listen=False
        ) as steer,
    ):
        train(steer, parts, 100, before_boundary=at)
    assert steer.stopped and steer.steps == 4
    records = journal(tmp_path / "run")
    error = next(r for r in records if r["type"] == "error")
    assert error["error"] == "ValueError" and error["step"] == 5
    # step 5's optimizer.step() had run: the weights are no longer step 4's
    assert error["checkpoint"] is None
    assert records[-1]["type"] == "end" and records[-1]["state"] == "ERROR"


def test_an_error_before_optimizer_step_keeps_the_last_good_step(tmp_path):
    parts = make()
    real_take = parts.take

    def take(step: int) -> torch.Tensor:
        if step == 4:
            raise RuntimeError("the loader broke")  # before this step's optimizer.step()
        return real_take(step)

    parts.take = take  # type: ignore[method-assign]
    with (
        pytest.raises(RuntimeError),
        tuiconsole.steer(
            parts.model, parts.optimizer, run_dir=tmp_path / "run", listen=False
        ) as steer,
    ):
        train(steer, parts, 100)
    error = next(r for r in journal(tmp_path / "run") if r["type"] == "error")
    assert error["phase"] == "forward"
    assert load_checkpoint(error["checkpoint"])["step"] == 4
    assert torch.equal(
        load_checkpoint(error["checkpoint"])["model"]["head.1.weight"], parts.model.head[1].weight
    )


def test_an_error_inside_optimizer_step_keeps_no_torn_checkpoint(tmp_path):
    """optimizer.step() raised halfway, having updated some parameters: no 'last good
    step' checkpoint is written from those weights."""
    parts = make()
    real_take = parts.take
    head_bias = parts.model.head[1].bias

    def take(step: int) -> torch.Tensor:
        if step == 4:  # SGD updates body's tensors, then fails on head's bias
            parts.optimizer.state[head_bias]["momentum_buffer"] = torch.zeros(7)
        return real_take(step)

    parts.take = take  # type: ignore[method-assign]
    with (
        pytest.raises(RuntimeError),
        tuiconsole.steer(
            parts.model, parts.optimizer, run_dir=tmp_path / "run", listen=False
        ) as steer,
    ):
        train(steer, parts, 100)
    assert steer.steps == 4
    error = next(r for r in journal(tmp_path / "run") if r["type"] == "error")
    assert error["phase"] == "optimizer" and error["checkpoint"] is None
    assert not list((tmp_path / "run").glob("*.pt"))


def test_ctrl_c_in_the_users_step_stops_the_run_with_a_final_checkpoint(tmp_path):
    """KeyboardInterrupt (Ctrl+C in `python train.py`) in the forward pass is a stop,
    not a failure: STOPPED, and the weights (still the last step's) are checkpointed."""
    parts = make()
    real_take = parts.take

    def take(step: int) -> torch.Tensor:
        if step == 6:
            raise KeyboardInterrupt
        return real_take(step)

    parts.take = take  # type: ignore[method-assign]
    with (
        pytest.raises(KeyboardInterrupt),
        tuiconsole.steer(
            parts.model, parts.optimizer, run_dir=tmp_path / "run", listen=False
        ) as steer,
    ):
        train(steer, parts, 100)
    end = end_record(tmp_path / "run")
    assert end["state"] == "STOPPED" and end["step"] == 6
    assert load_checkpoint(end["checkpoint"])["step"] == 6
    assert not [r for r in journal(tmp_path / "run") if r["type"] == "error"]
    assert any("interrupted" in e.text for e in steer.snapshot().log)


def test_ctrl_c_after_optimizer_step_stops_without_a_checkpoint_of_moved_weights(tmp_path):
    parts = make()

    def at(step: int) -> None:
        if step == 6:
            raise KeyboardInterrupt  # step 7's optimizer.step() has run, its boundary not

    with (
        pytest.raises(KeyboardInterrupt),
        tuiconsole.steer(
            parts.model, parts.optimizer, run_dir=tmp_path / "run", listen=False
        ) as steer,
    ):
        train(steer, parts, 100, before_boundary=at)
    end = end_record(tmp_path / "run")
    assert end["state"] == "STOPPED" and end["checkpoint"] is None
    assert not list((tmp_path / "run").glob("*.pt"))
    assert any("no final checkpoint" in e.text for e in steer.snapshot().log)


def test_close_ends_a_run_whose_loop_is_still_going(new_steer):
    parts = make()
    steer = new_steer(parts)
    train(steer, parts, 3)
    steer.close()
    steer.close()  # once is enough; twice is harmless
    end = end_record(steer.run_dir)
    assert end["state"] == "STOPPED" and end["step"] == 3
    with pytest.raises(StopTraining):
        steer.step(parts.take(3))
    assert steer.session.submit("lr head 0.1").result(5).ok is False


def test_boundary_returns_false_where_step_would_raise_for_a_frameworks_callback(new_steer):
    """Steer.boundary() / Steer.end(): the same boundary without an exception through
    a framework's loop."""
    parts = make()
    steer = new_steer(parts)
    went_on = []
    for step in range(100):
        loss = parts.take(step)
        if step == 4:
            steer.session.submit("stop")
        if not steer.boundary(loss):
            break
        went_on.append(step)
    assert went_on == [0, 1, 2, 3]
    assert isinstance(steer.ended, StopTraining) and steer.ended.code == 0
    steer.end()
    assert end_record(steer.run_dir)["state"] == "STOPPED"


@pytest.mark.parametrize(
    "error, state", [(None, "FINISHED"), (RuntimeError("the framework failed"), "ERROR")]
)
def test_end_says_how_the_frameworks_loop_ended(new_steer, error, state):
    parts = make()
    steer = new_steer(parts)
    for step in range(3):
        assert steer.boundary(parts.take(step))
    steer.end(error)
    end = end_record(steer.run_dir)
    assert end["state"] == state and end["step"] == 3
    assert (end["checkpoint"] is None) == (error is not None)
