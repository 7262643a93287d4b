"""``rollback [CHECKPOINT]``: a checkpoint loaded into the paused run, live; continuing
equals a straight run from it bit for bit; what does not fit is refused with nothing
changed; a journal with undo, at and rollback replays bit for bit."""

from __future__ import annotations

import copy
import json
import math
import struct
from pathlib import Path

import torch
from torch import nn

from tests.unit.models import make_spec
from tuiconsole.engine.journal import read_sessions
from tuiconsole.engine.snapshot import RunState
from tuiconsole.engine.trainer import RunConfig, Trainer
from tuiconsole.script import TrainingSpec


def weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def same_tensors(a: object, b: object) -> bool:
    """Deep equality of state_dicts (tensors bit for bit)."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return (
            isinstance(b, dict)
            and a.keys() == b.keys()
            and all(same_tensors(a[k], b[k]) for k in a)
        )
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(same_tensors(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def bits(x: float) -> bytes:
    return struct.pack("<d", x)


def test_continuing_after_a_rollback_equals_a_straight_run(drive):
    d = drive()
    d.steps(5)
    assert d.cmd("checkpoint").ok
    assert d.cmd("lr all 0.5").ok  # another future, then back
    d.steps(6)
    r = d.cmd("rollback")
    assert r.ok and "rolled back from step 11 to step 5" in r.message, r.message
    assert d.trainer.step == 5 and d.trainer.state == RunState.PAUSED
    assert [g["lr"] for g in d.opt.param_groups] == [1e-3, 1e-2]
    snap = d.trainer.latest_snapshot()
    assert snap.loss_history.steps and max(snap.loss_history.steps) <= 5  # the present's
    assert snap.status.step == 5 and snap.changes[-1].step == 11
    d.steps(10)
    straight = drive()
    straight.steps(15)
    assert same_tensors(weights(d.trainer.model), weights(straight.trainer.model))
    assert same_tensors(d.opt.state_dict(), straight.opt.state_dict())
    d.trainer._flush_losses(), straight.trainer._flush_losses()
    assert bits(d.trainer._losses.last) == bits(straight.trainer._losses.last)
    assert d.trainer.latest_snapshot().changes[-1].kind == "rollback"
    assert not d.cmd("undo").ok  # the history before a rollback is gone with it


def test_after_a_nan_rollback_goes_to_the_checkpoint_before_it(drive, tmp_path):
    d = drive(nan="pause")
    d.steps(4)
    assert d.cmd("checkpoint").ok
    d.steps(2)
    assert d.cmd("checkpoint").ok  # step 6
    assert d.cmd("lr all 1e4").ok
    assert d.cmd("resume").ok
    d.trainer.step_now(50)
    t = d.trainer
    assert t.state == RunState.NAN_PAUSED and t.nan_event is not None
    nan_line = [e.text for e in t.latest_snapshot().log if e.kind == "nan"][-1]
    assert "`rollback`" in nan_line
    r = d.cmd("rollback")
    assert r.ok and f"from step {t.nan_event.step} to step 6" in r.message, r.message
    assert t.state == RunState.PAUSED and t.step == 6
    assert [g["lr"] for g in d.opt.param_groups] == [1e-3, 1e-2]
    assert d.cmd("decay 0.5").ok  # lower an lr and go on
    d.steps(20)
    assert math.isfinite(t._losses.last)
    assert d.cmd("stop").ok
    t.close()
    # the replay meets the same NaN, rolls back there, and goes on as the run did
    replay = Trainer(
        make_spec(),
        RunConfig(run_dir=tmp_path / "replay", replay=t.run_dir / "journal.jsonl", nan="pause"),
    ).prepare()
    replay.step_now(1000)
    replay.close()
    assert replay.state == RunState.STOPPED and replay.step == t.step == 26
    assert same_tensors(weights(replay.model), weights(t.model))
    assert same_tensors(replay.optimizer.state_dict(), t.optimizer.state_dict())


def other_model_spec() -> TrainingSpec:
    spec = make_spec()
    model = nn.Sequential(nn.Linear(8, 3))
    spec.model = model
    spec.optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    return spec


def test_a_checkpoint_of_another_model_or_a_bad_file_is_refused_with_nothing_changed(
    drive, tmp_path
):
    other = drive(other_model_spec())
    other.steps(2)
    assert other.cmd("checkpoint").ok
    foreign = other.trainer.last_checkpoint
    d = drive()
    d.steps(3)
    assert d.cmd("checkpoint").ok
    good = d.trainer.last_checkpoint
    d.steps(2)
    w, sd = weights(d.trainer.model), copy.deepcopy(d.opt.state_dict())
    damaged = tmp_path / "damaged.pt"
    data = bytearray(Path(good).read_bytes())
    data[len(data) // 2] ^= 0xFF
    damaged.write_bytes(bytes(data))
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all")
    for cmd, why in [
        (f"rollback {foreign}", "a checkpoint of another model"),
        ("rollback nosuch.pt", "no such checkpoint file"),
        (f"rollback {damaged}", "damaged checkpoint"),
        (f"rollback {garbage}", "not a readable tuiconsole checkpoint"),
        (f"rollback {good} digest={'0' * 64}", "changed since it was journaled"),
    ]:
        r = d.cmd(cmd)
        assert not r.ok and why in r.message and "\n" not in r.message, (cmd, r.message)
        assert d.trainer.step == 5 and d.trainer.state == RunState.PAUSED
        assert same_tensors(weights(d.trainer.model), w)
        assert same_tensors(d.opt.state_dict(), sd)
    assert d.cmd("resume").ok
    r = d.cmd("rollback")
    assert not r.ok and "pause the run first" in r.message and d.trainer.step == 5


def test_a_rollback_to_another_optimizer_class_comes_back(drive):
    d = drive()
    d.steps(3)
    assert d.cmd("checkpoint").ok
    sd = copy.deepcopy(d.opt.state_dict())
    assert d.cmd("rebuild Adam lr=0.003").ok
    d.steps(2)
    assert d.cmd("rollback").ok
    assert type(d.opt) is torch.optim.SGD
    assert same_tensors(d.opt.state_dict(), sd)


def test_a_journal_with_undo_at_and_rollback_replays_bit_for_bit(drive, tmp_path):
    d = drive()
    d.steps(3)
    assert d.cmd("lr features 0.01").ok
    assert d.cmd("split head classifier.3").ok
    d.steps(2)
    assert d.cmd("at 8 decay 0.5").ok
    assert d.cmd("checkpoint").ok  # step 5, the `at` pending
    d.steps(4)  # the decay applied at 8
    assert d.cmd("undo").ok  # takes back the decay
    assert d.cmd("undo").ok  # and the split
    d.steps(1)
    assert d.cmd("rollback").ok  # to step 5: the split is back, the `at` pending again
    assert d.trainer.step == 5
    assert [g["name"] for g in d.opt.param_groups] == ["features", "classifier", "head"]
    assert d.cmd("lr classifier *0.5").ok
    d.steps(6)
    assert d.cmd("stop").ok
    original = d.trainer
    original.close()
    journal = original.run_dir / "journal.jsonl"
    (session,) = read_sessions(journal)  # steps go back after the rollback: still valid
    rollback = next(e for e in session.entries if e.cmd.startswith("rollback"))
    assert rollback.step == 10 and "digest=" in rollback.cmd
    recs = [json.loads(x) for x in journal.read_text().splitlines()]
    assert [r["step"] for r in recs if r.get("source") == "at"] == [8, 8]

    replay = Trainer(make_spec(), RunConfig(run_dir=tmp_path / "replay", replay=journal)).prepare()
    replay.step_now(1000)
    replay.close()
    assert replay.state == RunState.STOPPED and replay.step == original.step == 11
    assert same_tensors(weights(replay.model), weights(original.model))
    assert same_tensors(replay.optimizer.state_dict(), original.optimizer.state_dict())
    assert bits(replay._losses.last) == bits(original._losses.last)
    assert [c.kind for c in replay.latest_snapshot().changes] == [
        c.kind for c in original.latest_snapshot().changes
    ]


def two_lambdas_spec() -> TrainingSpec:
    """LambdaLR with a function per group: a checkpoint cannot hold them."""
    spec = make_spec()
    spec.scheduler = torch.optim.lr_scheduler.LambdaLR(
        spec.optimizer, [lambda s: 1.0 / (1 + 0.05 * s), lambda s: 0.97**s]
    )
    return spec


def test_a_rollback_across_a_split_gives_each_group_its_own_schedule_back(drive):
    """The split moved all of `features` away (the group is gone, the lists shifted):
    the checkpoint's groups get their functions from the script's, by lineage."""
    d = drive(two_lambdas_spec())
    d.steps(3)
    assert d.cmd("checkpoint").ok
    assert d.cmd("split body features classifier.0").ok
    assert [g["name"] for g in d.opt.param_groups] == ["classifier", "body", "body.2"]
    d.steps(4)
    assert d.cmd("rollback").ok
    assert [g["name"] for g in d.opt.param_groups] == ["features", "classifier"]
    d.steps(6)
    straight = drive(two_lambdas_spec())
    straight.steps(9)
    assert [g["lr"] for g in d.opt.param_groups] == [g["lr"] for g in straight.opt.param_groups]
    assert same_tensors(weights(d.trainer.model), weights(straight.trainer.model))


def test_a_rollback_says_which_at_commands_it_dropped_and_keeps_the_files_it_names(drive, tmp_path):
    """The checkpoint's `at` queue replaces the run's: a command queued after that
    checkpoint is named as dropped, and its id is not handed out again. A checkpoint
    written when the run is back at that step does not overwrite the file the journal's
    rollback names, so the journal still replays."""
    d = drive()
    d.steps(5)
    assert d.cmd("checkpoint").ok
    first = d.trainer.run_dir / "checkpoint-step5.pt"
    content = first.read_bytes()
    d.steps(3)
    assert d.cmd("at 20 lr features 1e-5").ok
    r = d.cmd("rollback")
    assert r.ok and d.trainer.step == 5, r.message
    assert "dropped 1 `at` command(s) queued after it (#1 at 20: lr features 1e-05)" in r.message
    assert d.cmd("at 30 decay 0.5").message.startswith("#2:")
    assert d.cmd("lr all 0.05").ok
    assert d.cmd("checkpoint").ok
    assert first.read_bytes() == content
    assert (d.trainer.run_dir / "checkpoint-step5-2.pt").is_file()
    d.steps(2)
    assert d.cmd("stop").ok
    original = d.trainer
    original.close()
    journal = original.run_dir / "journal.jsonl"
    replay = Trainer(make_spec(), RunConfig(run_dir=tmp_path / "replay", replay=journal)).prepare()
    try:
        replay.step_now(1000)
        assert replay.state == RunState.STOPPED and replay.step == original.step == 7
        assert same_tensors(weights(replay.model), weights(original.model))
    finally:
        replay.close()


def test_a_checkpoint_whose_scheduler_differs_is_refused_with_nothing_changed(drive):
    """The check resume runs (checkpoint.check_scheduler), before anything changes."""
    scheduled = drive(two_lambdas_spec())
    scheduled.steps(2)
    assert scheduled.cmd("checkpoint").ok
    theirs = scheduled.trainer.last_checkpoint
    d = drive()
    d.steps(3)
    w, sd = weights(d.trainer.model), copy.deepcopy(d.opt.state_dict())
    r = d.cmd(f"rollback {theirs}")
    assert not r.ok and "has scheduler but the script does not; nothing changed" in r.message
    assert d.trainer.step == 3 and same_tensors(weights(d.trainer.model), w)
    assert same_tensors(d.opt.state_dict(), sd)
