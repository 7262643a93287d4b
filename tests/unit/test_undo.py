"""``undo``: the last optimizer change taken back on the real optimizer, state kept;
``rebuild`` is where it stops; repeated undo walks further back."""

from __future__ import annotations

import torch

from tests.unit.models import make_spec
from tuiconsole.engine.journal import read_journal


def hparams(opt: torch.optim.Optimizer) -> list[dict[str, object]]:
    return [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups]


def members(opt: torch.optim.Optimizer) -> list[list[int]]:
    return [[id(p) for p in g["params"]] for g in opt.param_groups]


def state_objects(opt: torch.optim.Optimizer) -> dict[int, dict[str, int]]:
    return {id(p): {k: id(v) for k, v in st.items()} for p, st in opt.state.items()}


def state_values(opt: torch.optim.Optimizer) -> dict[int, dict[str, torch.Tensor]]:
    return {id(p): {k: v.clone() for k, v in st.items()} for p, st in opt.state.items()}


def same_values(a, b) -> bool:
    return a.keys() == b.keys() and all(
        a[p].keys() == b[p].keys() and all(torch.equal(a[p][k], b[p][k]) for k in a[p]) for p in a
    )


def test_undo_of_an_lr_edit_puts_the_lr_back_and_keeps_the_momentum(drive):
    d = drive()
    d.steps(4)
    before = hparams(d.opt)
    assert d.cmd("lr features 0.05").ok
    d.steps(3)
    objects, values = state_objects(d.opt), state_values(d.opt)
    r = d.cmd("undo")
    assert r.ok and "undid `lr features 0.05` on features" in r.message, r.message
    assert hparams(d.opt) == before  # 0.001 exactly, the rest untouched
    assert state_objects(d.opt) == objects  # the same momentum buffers ...
    assert same_values(state_values(d.opt), values)  # ... with their values
    d.steps(1)  # and training goes on with them
    change = d.trainer.latest_snapshot().changes[-1]
    assert (change.kind, change.text, change.groups, change.step) == (
        "undo",
        "undo",
        ("features",),
        7,
    )
    _, entries = read_journal(d.trainer.run_dir / "journal.jsonl")
    assert [(e.step, e.cmd, e.ok) for e in entries if e.cmd == "undo"] == [(7, "undo", True)]


def test_repeated_undo_walks_back_until_nothing_is_left(drive):
    d = drive()
    d.steps(2)
    start = hparams(d.opt)
    assert d.cmd("lr classifier 0.02").ok
    after_lr = hparams(d.opt)
    assert d.cmd("decay 0.5").ok
    after_decay = hparams(d.opt)
    assert d.cmd("set all weight_decay=0.001 momentum=0.8").ok
    assert d.cmd("clip 2.5").ok
    d.steps(2)
    assert d.cmd("undo").ok and d.trainer._stepping.clip is None
    assert d.cmd("undo").ok and hparams(d.opt) == after_decay
    assert d.cmd("undo").ok and hparams(d.opt) == after_lr
    assert d.cmd("undo").ok and hparams(d.opt) == start
    r = d.cmd("undo")
    assert not r.ok and "nothing to undo" in r.message
    assert hparams(d.opt) == start


def test_undo_of_a_split_merges_back_with_the_adam_state_kept(drive):
    d = drive(make_spec("adam"))
    d.steps(3)
    before_members, before_h = members(d.opt), hparams(d.opt)
    assert d.cmd("split head classifier.3 features.0 lr=0.004").ok
    assert [g["name"] for g in d.opt.param_groups] == ["features", "classifier", "head"]
    split = d.trainer.latest_snapshot().changes[-1]  # one group made, of both sources
    assert (split.kind, split.groups) == ("split", ("head", "features", "classifier"))
    d.steps(4)
    objects, values = state_objects(d.opt), state_values(d.opt)
    r = d.cmd("undo")
    assert r.ok and "merged back" in r.message, r.message
    assert members(d.opt) == before_members  # group order and each parameter's place
    assert hparams(d.opt) == before_h  # lr, betas, eps... as before the split
    assert state_objects(d.opt) == objects and same_values(state_values(d.opt), values)
    d.steps(2)
    assert all(st["step"] == 9 for st in d.opt.state.values())  # one Adam state throughout


def test_undo_after_a_rebuild_is_refused_and_changes_nothing(drive):
    d = drive()
    d.steps(2)
    assert d.cmd("lr features 0.01").ok
    assert d.cmd("rebuild Adam lr=0.002").ok
    d.steps(2)
    h, objects = hparams(d.opt), state_objects(d.opt)
    for _ in range(2):  # it stays the barrier
        r = d.cmd("undo")
        assert not r.ok and "rebuild" in r.message and "cannot be given back" in r.message
        assert hparams(d.opt) == h and state_objects(d.opt) == objects
        assert type(d.opt) is torch.optim.Adam
    assert d.cmd("lr classifier 0.003").ok  # a change after it can be undone ...
    assert d.cmd("undo").ok and hparams(d.opt) == h
    assert not d.cmd("undo").ok  # ... and then the rebuild stops it again


def test_undo_under_a_scheduler_takes_the_factor_back(drive):
    """StepLR halves the lr every 5 steps: an edit undone after the scheduler moved it
    leaves the schedule as if the edit had never been made."""
    d = drive(make_spec(scheduler="step"))
    ref = drive(make_spec(scheduler="step"))
    d.steps(3)
    ref.steps(3)
    assert d.cmd("lr features *4").ok
    d.steps(4)  # the scheduler halved it at step 5
    ref.steps(4)
    assert d.cmd("undo").ok
    assert (
        [g["lr"] for g in d.opt.param_groups]
        == [g["lr"] for g in ref.opt.param_groups]
        == [
            5e-4,
            5e-3,
        ]
    )
    d.steps(5)
    ref.steps(5)
    assert [g["lr"] for g in d.opt.param_groups] == [g["lr"] for g in ref.opt.param_groups]
    assert d.trainer.scheduler.base_lrs == ref.trainer.scheduler.base_lrs


def test_undo_refuses_when_the_groups_changed_and_bad_input(drive):
    d = drive()
    d.steps(1)
    assert not d.cmd("undo 2").ok  # usage
    assert d.cmd("lr features 0.01").ok
    d.opt.param_groups[0]["name"] = "renamed"  # what only foreign code could do
    r = d.cmd("undo")
    assert not r.ok and "the groups changed since" in r.message
    assert d.opt.param_groups[0]["lr"] == 0.01


def test_a_change_the_engine_took_back_leaves_the_undo_stack_too(tmp_path):
    """ops' guard undid `set` (its first step failed cleanly): `undo` then takes back
    the change before it, not the one that is already gone."""
    from tests.reliability.helpers import sync_trainer
    from tests.reliability.test_accepted_commands import picky_spec

    t = sync_trainer(picky_spec(), tmp_path / "run")
    t.step_now(3)
    assert t.apply_now("lr all 0.002").ok
    t.step_now(1)
    assert t.apply_now("set all momentum=0.99").ok  # Picky refuses it at its step
    t.step_now(1)
    kinds = [c.kind for c in t._build_snapshot().changes]
    assert kinds == ["lr", "set", "undone"]
    assert [g["momentum"] for g in t.optimizer.param_groups] == [0.9, 0.9]
    r = t.apply_now("undo")
    assert r.ok and "undid `lr all 0.002`" in r.message, r.message
    assert [g["lr"] for g in t.optimizer.param_groups] == [1e-3, 1e-2]
    assert not t.apply_now("undo").ok
    t.close()


def test_undo_of_a_split_under_a_scheduler_goes_on_with_the_schedule(drive):
    d = drive(make_spec(scheduler="step"))
    ref = drive(make_spec(scheduler="step"))
    d.steps(3)
    ref.steps(3)
    assert d.cmd("split head classifier.3 lr=0.05").ok
    d.steps(4)  # StepLR halved every group at step 5, `head` from its own 0.05
    ref.steps(4)
    assert [g["lr"] for g in d.opt.param_groups] == [5e-4, 5e-3, 0.025]
    assert d.cmd("undo").ok
    sched, ref_sched = d.trainer.scheduler, ref.trainer.scheduler
    assert [g["lr"] for g in d.opt.param_groups] == [g["lr"] for g in ref.opt.param_groups]
    assert sched.base_lrs == ref_sched.base_lrs and sched.get_last_lr() == ref_sched.get_last_lr()
    d.steps(6)
    ref.steps(6)
    assert [g["lr"] for g in d.opt.param_groups] == [g["lr"] for g in ref.opt.param_groups]
