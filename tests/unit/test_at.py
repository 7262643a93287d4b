"""``at STEP COMMAND``: checked when queued, applied at exactly that step's boundary,
journaled then with source "at"; cancellable; kept by checkpoints."""

from __future__ import annotations

import json

from tests.unit.models import Driver, make_spec
from tuiconsole.engine.snapshot import PendingCommand, RunState
from tuiconsole.engine.trainer import RunConfig, Trainer


def lrs(d) -> list[float]:
    return [g["lr"] for g in d.opt.param_groups]


def records(run_dir) -> list[dict]:
    lines = (run_dir / "journal.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["type"] == "command"]


def test_at_applies_at_exactly_its_step(drive):
    d = drive()
    d.steps(2)
    r = d.cmd("at 6 lr features 1e-4")
    assert r.ok and r.message.startswith("#1: `lr features 0.0001` at step 6"), r.message
    assert d.trainer.latest_snapshot().pending == (
        PendingCommand(1, 6, "lr features 0.0001", "test"),
    )
    d.steps(3)
    assert d.trainer.step == 5 and lrs(d) == [1e-3, 1e-2]  # step N-1: not yet
    d.steps(1)
    assert d.trainer.step == 6 and lrs(d) == [1e-4, 1e-2]  # step N: applied at its boundary
    assert d.trainer.latest_snapshot().pending == ()
    fired = [r for r in records(d.trainer.run_dir) if r["source"] == "at"]
    assert [(r["step"], r["cmd"], r["ok"]) for r in fired] == [(6, "lr features 0.0001", True)]
    change = d.trainer.latest_snapshot().changes[-1]
    assert (change.step, change.source, change.kind, change.groups) == (
        6,
        "at",
        "lr",
        ("features",),
    )
    assert d.cmd("undo").ok and lrs(d) == [1e-3, 1e-2]  # a scheduled change is undoable too


def test_at_refuses_past_steps_and_what_would_fail_now(drive):
    d = drive()
    d.steps(3)
    for bad, why in [
        ("at 3 lr all 0.1", "the run is at step 3"),
        ("at 2 lr all 0.1", "the run is at step 3"),
        ("at 9 lr nosuch 0.1", "nosuch"),
        ("at 9 set all nosuchkey=1", "nosuchkey"),
        ("at 9 split x nosuch.module", "nosuch.module"),
        ("at 9 undo", "cannot be scheduled"),
        ("at 9 rollback", "cannot be scheduled"),
        ("at 9 :undo", "cannot be scheduled"),  # the ':' a typed line may carry
        ("at 9 :at 12 lr all 0.1", "cannot be scheduled"),
        ("at 9 :lrfind", "cannot be scheduled"),
        ("at 9 ROLLBACK", "cannot be scheduled"),
        ("at nine lr all 0.1", "whole number"),
    ]:
        r = d.cmd(bad)
        assert not r.ok and why in r.message, (bad, r.message)
    assert d.trainer.latest_snapshot().pending == ()


def test_at_cancel(drive):
    d = drive()
    assert d.cmd("at 4 lr all 0.5").ok
    assert d.cmd("at 4 decay 0.5").ok
    r = d.cmd("at cancel 1")
    assert r.ok and "cancelled #1" in r.message
    bad = d.cmd("at cancel 7")
    assert not bad.ok and "no pending command #7" in bad.message and "#2" in bad.message
    assert [p.id for p in d.trainer.latest_snapshot().pending] == [2]
    d.steps(4)
    assert lrs(d) == [5e-4, 5e-3]  # only the decay was applied


def test_pending_commands_survive_a_checkpoint_and_resume(drive, tmp_path):
    d = drive()
    d.steps(2)
    assert d.cmd("at 7 lr classifier 0.03").ok
    assert d.cmd("at 9 set all momentum=0.5").ok
    assert d.cmd("at cancel 2").ok
    assert d.cmd("at 8 eval").ok
    assert d.cmd("checkpoint").ok
    ckpt = d.trainer.last_checkpoint
    resumed = Driver(
        Trainer(
            make_spec(), RunConfig(run_dir=tmp_path / "resumed", resume=ckpt, start_paused=True)
        )
    )
    try:
        pending = resumed.trainer.latest_snapshot().pending
        assert [(p.id, p.step, p.text) for p in pending] == [
            (1, 7, "lr classifier 0.03"),
            (3, 8, "eval"),
        ]
        assert (
            resumed.cmd("at 10 stop").ok and resumed.trainer.latest_snapshot().pending[-1].id == 4
        )
        resumed.steps(4)
        assert resumed.trainer.step == 6 and lrs(resumed) == [1e-3, 1e-2]
        resumed.steps(1)
        assert lrs(resumed) == [1e-3, 0.03]
        resumed.steps(1)
        assert resumed.trainer.latest_snapshot().status.last_eval.step == 8
    finally:
        resumed.trainer.close()


def test_a_replay_does_not_apply_scheduled_control_commands(drive, tmp_path):
    """As journaled control commands are not: the replay neither pauses where the
    original paused (it would wait for a resume it is never given) nor writes a
    checkpoint over the original's file."""
    mine = tmp_path / "mine.pt"
    d = drive()
    assert d.cmd("at 3 pause").ok and d.cmd(f"at 4 checkpoint {mine}").ok
    d.steps(3)  # the pause fires at 3: still paused, as the step ended there anyway
    d.steps(3)
    assert mine.is_file()
    written = mine.read_bytes()
    assert d.cmd("stop").ok
    d.trainer.close()
    journal = d.trainer.run_dir / "journal.jsonl"
    replay = Trainer(make_spec(), RunConfig(run_dir=tmp_path / "replay", replay=journal)).prepare()
    try:
        replay.step_now(1000)
        assert replay.state == RunState.STOPPED and replay.step == 6
        assert mine.read_bytes() == written
        notes = [e.text for e in replay.latest_snapshot().log]
        assert any("`at 3 pause` not applied (control)" in t for t in notes), notes
    finally:
        replay.close()
