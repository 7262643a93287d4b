"""Every command against the real optimizer of a real (paused) training run."""

from __future__ import annotations

import copy
import time

import pytest
import torch

from tests.unit.models import make_spec, wait_for
from tuiconsole.engine.snapshot import RunState
from tuiconsole.engine.trainer import RunConfig, Trainer


def state_tensors(opt):
    """(param id, key) -> the state tensor object itself."""
    return {
        (id(p), k): v
        for p, s in opt.state.items()
        for k, v in s.items()
        if isinstance(v, torch.Tensor)
    }


def frozen_copy(opt):
    groups = [
        {k: (list(map(id, v)) if k == "params" else copy.deepcopy(v)) for k, v in g.items()}
        for g in opt.param_groups
    ]
    state = {k: v.clone() for k, v in state_tensors(opt).items()}
    return groups, state


def assert_unchanged(opt, before):
    groups, state = frozen_copy(opt)
    assert groups == before[0]
    assert state.keys() == before[1].keys()
    for k in state:
        assert torch.equal(state[k], before[1][k])


def test_lr_sets_only_that_group_and_keeps_state(drive):
    d = drive()
    d.steps(3)
    opt = d.opt
    tensors = state_tensors(opt)
    values = {k: v.clone() for k, v in tensors.items()}
    assert tensors, "momentum buffers exist after 3 steps"
    r = d.cmd("lr classifier 0.005")
    assert r.ok, r.message
    assert [g["lr"] for g in opt.param_groups] == [1e-3, 0.005]
    after = state_tensors(opt)
    assert after.keys() == tensors.keys()
    assert all(after[k] is tensors[k] for k in tensors)  # the same buffers...
    assert all(torch.equal(after[k], values[k]) for k in tensors)  # ...with the same values


def test_lr_by_module_path_and_relative_forms(drive):
    d = drive()
    assert d.cmd("lr features.2 2e-3").ok
    assert d.opt.param_groups[0]["lr"] == 2e-3
    assert d.cmd("lr all *0.5").ok
    assert [g["lr"] for g in d.opt.param_groups] == [1e-3, 5e-3]
    assert d.cmd("lr classifier /5").ok
    assert d.opt.param_groups[1]["lr"] == pytest.approx(1e-3)


def test_decay_multiplies_in_place_keeping_momentum(drive):
    d = drive()
    d.steps(4)
    opt = d.opt
    bufs = {k: (v, v.clone()) for k, v in state_tensors(opt).items()}
    r = d.cmd("decay 0.1")
    assert r.ok and "state kept" in r.message
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([1e-4, 1e-3])
    for k, (obj, val) in bufs.items():
        assert state_tensors(opt)[k] is obj
        assert torch.equal(obj, val)
    assert d.cmd("decay 0.5 features").ok
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([5e-5, 1e-3])


def test_set_hyperparameters(drive):
    d = drive()
    assert d.cmd("set all weight_decay=1e-4 momentum=0.8").ok
    assert all(g["weight_decay"] == 1e-4 and g["momentum"] == 0.8 for g in d.opt.param_groups)
    assert d.cmd("set features lr=0.02").ok
    assert d.opt.param_groups[0]["lr"] == 0.02


def test_set_betas_on_adam(drive):
    d = drive(make_spec("adam"))
    assert d.cmd("set classifier betas=0.8,0.95").ok
    assert d.opt.param_groups[1]["betas"] == (0.8, 0.95)
    assert d.opt.param_groups[0]["betas"] == (0.9, 0.999)


def test_split_moves_params_and_keeps_momentum_buffers(drive):
    d = drive()
    d.steps(5)
    opt = d.opt
    model = d.trainer.model
    fc = model.classifier[0]
    bufs = {id(p): opt.state[p]["momentum_buffer"] for p in fc.parameters()}
    vals = {k: v.clone() for k, v in bufs.items()}
    r = d.cmd("split fc1 classifier.0 lr=1e-3")
    assert r.ok, r.message
    names = [g["name"] for g in opt.param_groups]
    assert names == ["features", "classifier", "fc1"]
    new = opt.param_groups[2]
    assert {id(p) for p in new["params"]} == {id(p) for p in fc.parameters()}
    assert new["lr"] == 1e-3 and new["momentum"] == 0.9
    assert not {id(p) for p in fc.parameters()} & {id(p) for p in opt.param_groups[1]["params"]}
    for p in fc.parameters():
        assert opt.state[p]["momentum_buffer"] is bufs[id(p)]
        assert torch.equal(opt.state[p]["momentum_buffer"], vals[id(p)])
    # training goes on with the new group, and the buffers keep updating
    d.steps(2)
    assert not torch.equal(opt.state[fc.weight]["momentum_buffer"], vals[id(fc.weight)])
    # every trainable parameter is in exactly one group
    ids = [id(p) for g in opt.param_groups for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in model.parameters())


def test_split_of_modules_across_groups_keeps_each_lr(drive):
    # features (lr 1e-3) and classifier (lr 1e-2): one group would give one of them
    # the other's lr, so the split makes one new group per source group.
    d = drive()
    r = d.cmd("split everything features classifier")
    assert r.ok, r.message
    assert [(g["name"], g["lr"]) for g in d.opt.param_groups] == [
        ("everything", 1e-3),
        ("everything.2", 1e-2),
    ]
    assert "'everything'" in r.message and "'everything.2'" in r.message


def test_split_of_modules_across_groups_drops_emptied_group(drive):
    # lr= makes both sources' values equal: then they share one group.
    d = drive()
    assert d.cmd("split everything features classifier lr=0.001").ok
    assert [g["name"] for g in d.opt.param_groups] == ["everything"]
    assert d.opt.param_groups[0]["lr"] == 1e-3


def test_rebuild_drops_state_and_can_change_class(drive):
    d = drive()
    d.steps(3)
    old = d.opt
    assert old.state
    r = d.cmd("rebuild")
    assert r.ok and "dropped" in r.message
    assert d.opt is not old and type(d.opt) is torch.optim.SGD
    assert not d.opt.state
    assert [g["lr"] for g in d.opt.param_groups] == [1e-3, 1e-2]
    assert [g["name"] for g in d.opt.param_groups] == ["features", "classifier"]
    r = d.cmd("rebuild Adam lr=3e-4")
    assert r.ok, r.message
    assert type(d.opt) is torch.optim.Adam
    assert all(g["lr"] == 3e-4 and g["betas"] == (0.9, 0.999) for g in d.opt.param_groups)
    assert "momentum" not in d.opt.param_groups[0]
    d.steps(2)
    assert d.opt.state and "exp_avg" in next(iter(d.opt.state.values()))


def test_rebuild_same_class_keeps_hyperparameters(drive):
    d = drive()
    assert d.cmd("rebuild SGD nesterov=true").ok
    assert all(g["nesterov"] and g["momentum"] == 0.9 for g in d.opt.param_groups)


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("lr nosuch 1e-3", "no module, parameter or group named 'nosuch'"),
        ("lr classifier.1 1e-3", "has no parameters"),
        ("set all bogus=1", "no hyper-parameter 'bogus'"),
        ("set all momentum=-1", "momentum must be >= 0"),
        ("set all nesterov=0.5", "true/false"),
        ("set all params=1", "cannot be set"),
        ("split features features.0", "already exists"),
        ("split x nosuch", "no module, parameter or group named 'nosuch'"),
        ("split x classifier", "already is group 'classifier'"),
        ("split x classifier.2", "has no parameters"),
        ("rebuild Nope", "unknown optimizer class 'Nope'"),
        ("rebuild Adam momentum=0.9", "Adam has no hyper-parameter 'momentum'"),
        ("rebuild SGD momentum=0 nesterov=true", "cannot build SGD"),
        ("eval", None),
    ],
)
def test_bad_commands_change_nothing(drive, text, fragment):
    d = drive()
    d.steps(2)
    before = frozen_copy(d.opt)
    opt = d.opt
    r = d.cmd(text)
    if fragment is None:  # eval is fine, it just must not touch the optimizer
        assert r.ok
    else:
        assert not r.ok and fragment in r.message, r.message
    assert d.opt is opt
    assert_unchanged(opt, before)


def test_split_of_frozen_module_is_refused(drive):
    spec = make_spec()
    for p in spec.model.features[0].parameters():
        p.requires_grad_(False)
    d = drive(spec)
    r = d.cmd("split x features.0")
    assert not r.ok and "frozen" in r.message


def test_pause_step_resume(drive):
    d = drive()
    t = d.trainer
    assert t.step == 0 and t.state == RunState.PAUSED
    d.steps(1)
    assert t.step == 1
    d.steps(5)
    assert t.step == 6
    assert d.cmd("resume").ok and t.state == RunState.RUNNING
    t.step_now(15)
    assert t.step == 21 and t.state == RunState.RUNNING
    r = d.cmd("pause")
    assert r.ok and r.message == "paused at step 21" and t.state == RunState.PAUSED
    # a pause ends a `step N` at once
    assert d.cmd("step 10").ok and t.state == RunState.STEPPING
    t.step_now(3)
    assert d.cmd("pause").ok and t.state == RunState.PAUSED


def test_pause_holds_the_loop_thread(tmp_path):
    """The loop in its thread takes no step while paused, and trains after resume."""
    t = Trainer(make_spec(), RunConfig(run_dir=tmp_path, start_paused=True)).start()
    try:
        assert t.submit("resume").result(timeout=20).ok
        wait_for(lambda: t.step > 20)
        assert t.submit("pause").result(timeout=20).ok
        s = t.step  # the loop answered at a boundary, so it is idle now
        time.sleep(0.1)  # nothing to wait for: the point is that nothing happens
        assert t.step == s and t.state == RunState.PAUSED
    finally:
        t.close()


def test_eval_restores_train_mode_and_reports(drive):
    d = drive()
    r = d.cmd("eval")
    assert r.ok and "accuracy" in r.message
    assert d.trainer.model.training and d.trainer.state == RunState.PAUSED
    snap = d.trainer._build_snapshot()
    assert snap.status.last_eval is not None and snap.status.last_eval.step == 0
