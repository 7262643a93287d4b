"""2-rank gloo jobs through torchrun: commands, NaN, faults, replay and resume.

Each test checks the ranks' real optimizers, weights and optimizer state (through each
rank's dump, see conftest.py) and rank 0's journal.
"""

from __future__ import annotations

import os
import signal
import time

import pytest

from tests.distributed.conftest import OWN_DDP, TINY

pytestmark = [pytest.mark.subprocess, pytest.mark.slow]


def same_run(ranks: list[dict]) -> dict:
    """Both ranks ended at the same step with the same optimizer, weights and state."""
    zero, one = ranks
    assert (zero["rank"], one["rank"]) == (0, 1)
    for key in ("step", "state", "optimizer", "groups", "weights", "optimizer_state", "applied"):
        assert zero[key] == one[key], key
    return zero


def test_commands_reach_every_rank_at_the_same_step(jobs):
    job = jobs("commands")
    session = job.detach(TINY, "--paused")
    assert session.snapshot().status.world_size == 2
    job.do("lr features 0.01")
    job.do("step 7")
    job.wait_step(7, "PAUSED")
    job.do("split mid 2 lr=0.02")
    job.do("rebuild Adam lr=1e-3")
    assert "accuracy" in job.do("eval")
    job.do("resume")
    job.wait_step(30)
    job.do("decay 0.5")
    job.do("checkpoint")
    job.do("stop")
    end = same_run(job.wait_ranks())
    assert end["state"] == "STOPPED" and end["optimizer"] == "Adam"
    assert [g["name"] for g in end["groups"]] == ["features", "classifier", "mid"]
    assert [g["n_params"] for g in end["groups"]] == [2, 2, 2]
    lrs = [g["lr"] for g in end["groups"]]
    assert lrs == pytest.approx([5e-4, 5e-4, 5e-4])
    applied = [(step, cmd.split()[0]) for step, cmd in end["applied"]]
    assert applied[:5] == [(0, "lr"), (0, "step"), (7, "split"), (7, "rebuild"), (7, "eval")]
    # rank 0 journaled each once, at the step every rank applied it
    journal = {r["cmd"].split()[0]: r["step"] for r in job.journal() if r["type"] == "command"}
    for step, cmd in end["applied"]:
        assert journal[cmd.split()[0]] == step
    assert job.journal()[0]["world_size"] == 2


def test_nan_on_rank_1_pauses_both_at_the_same_step(jobs):
    job = jobs("nan")
    # sample 97 is rank 1's (unshuffled: rank r takes r, r+2, ...), in its 4th batch
    job.env["TINY_NAN"] = "97"
    session = job.detach(TINY)
    job.wait_step(4, "NAN-PAUSED")
    nan = session.snapshot().status.nan
    assert nan is not None and nan.rank == 1 and nan.step == 4 and nan.skipped
    job.do("stop")
    end = same_run(job.wait_ranks())
    assert end["step"] == 4 and end["applied"][0] == [4, "nan on rank 1"]
    records = [r for r in job.journal() if r["type"] == "nan"]
    assert len(records) == 1 and records[0]["rank"] == 1 and records[0]["step"] == 4


def test_a_killed_rank_ends_the_job_with_an_error_naming_it(jobs):
    job = jobs("killed")
    job.detach(TINY, "--epochs", "100000")
    job.wait_step(20)
    pids = job.pids()
    os.kill(pids["1"], signal.SIGKILL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and any(_alive(p) for p in pids.values()):
        time.sleep(0.1)
    assert not any(_alive(p) for p in pids.values()), "the job did not end"
    records = job.journal()
    error = next(r for r in records if r["type"] == "error")
    assert f"rank 1 (pid {pids['1']}) exited" in error["message"]
    assert records[-1]["type"] == "end" and records[-1]["state"] == "ERROR"


def test_a_rank_that_hangs_stops_the_others_at_the_timeout(jobs):
    job = jobs("hung")
    job.env["TUICONSOLE_DIST_TIMEOUT"] = "4"
    session = job.detach(TINY, "--epochs", "100000")
    job.wait_step(20)
    os.kill(job.pids()["1"], signal.SIGSTOP)
    job.wait_step(0, "ERROR", timeout=40)
    error = session.snapshot().status.error
    assert error is not None and "within 4 s" in error.message, error


def test_sigterm_to_torchrun_stops_every_rank_with_a_final_checkpoint(jobs):
    job = jobs("sigterm")
    proc = job.headless(TINY, "--epochs", "100000")
    deadline = time.monotonic() + 60
    while not (job.run_dir / "metrics.jsonl").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)  # this process is torchrun now (exec)
    job.finish()
    end = same_run(job.wait_ranks())
    assert end["state"] == "STOPPED"
    last = job.journal()[-1]
    assert last["type"] == "end" and last["state"] == "STOPPED"
    assert last["checkpoint"] and last["step"] == end["step"]


def test_replay_of_a_distributed_journal_is_exact(jobs):
    original = jobs("original")
    original.detach(TINY, "--paused", "--max-steps", "40")
    original.do("step 10")
    original.wait_step(10, "PAUSED")
    original.do("lr features 0.01")
    original.do("step 10")
    original.wait_step(20, "PAUSED")
    original.do("decay 0.5")
    original.do("split mid 2 lr=0.03")
    original.do("resume")
    original.wait_step(40, "FINISHED")
    original.do("stop")
    first = same_run(original.wait_ranks())
    replay = jobs("replay")
    replay.headless(TINY, "--replay", str(original.run_dir), "--max-steps", "40")
    code, out = replay.finish()
    assert code == 0, out
    again = same_run(replay.wait_ranks())
    assert again["weights"] == first["weights"]
    assert again["optimizer_state"] == first["optimizer_state"]
    assert again["groups"] == first["groups"]


def test_resume_of_a_distributed_checkpoint_continues_exactly(jobs):
    straight = jobs("straight")
    straight.headless(TINY, "--max-steps", "44")
    assert straight.finish()[0] == 0
    whole = same_run(straight.wait_ranks())
    first = jobs("first")  # 20 steps: 2.5 epochs of 8 batches a rank
    first.headless(TINY, "--max-steps", "20")
    assert first.finish()[0] == 0
    ckpt = first.run_dir / "checkpoint-step20.pt"
    second = jobs("second")
    second.headless(TINY, "--resume", str(ckpt), "--max-steps", "44")
    code, out = second.finish()
    assert code == 0, out
    resumed = same_run(second.wait_ranks())
    assert resumed["weights"] == whole["weights"]
    assert resumed["optimizer_state"] == whole["optimizer_state"]


def test_a_loop_of_its_own_is_steered_on_every_rank(jobs):
    job = jobs("own")
    job.detach(OWN_DDP, "--paused")
    job.do("lr group0 0.02")
    job.do("step 5")
    job.wait_step(5, "PAUSED")
    job.do("rebuild Adam lr=1e-3")
    assert "accuracy" in job.do("eval")
    job.do("resume")
    job.wait_step(25)
    job.do("stop")
    end = same_run(job.wait_ranks())
    assert end["optimizer"] == "Adam" and end["state"] == "STOPPED"
    assert [s for s, _ in end["applied"][:3]] == [0, 0, 5]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
