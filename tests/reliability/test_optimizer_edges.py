"""Edges of the optimizer surgery a code review found: tensor lrs, cycling schedulers,
half precision, a split from an lr of 0, names that hide a module, and what the
snapshot says about the state."""

from __future__ import annotations

import pytest
import torch

from tests.reliability.helpers import hf_grouping_spec, loader_spec, sync_trainer
from tuiconsole.engine import commands as C
from tuiconsole.engine.snapshot import RunState


def test_snapshots_do_not_step_a_tensor_lr():
    """The look-ahead at the scheduler's next lrs shared the group's lr tensor."""
    spec = loader_spec("adam")
    spec.optimizer = torch.optim.Adam(spec.model.parameters(), lr=torch.tensor(0.01))
    spec.scheduler = torch.optim.lr_scheduler.ExponentialLR(spec.optimizer, 0.5)
    t = sync_trainer(spec)
    for _ in range(5):
        snap = t._build_snapshot()
    lr = torch.tensor(0.01).item()  # float32's 0.01
    assert float(t.optimizer.param_groups[0]["lr"]) == lr  # was 0.0003 after 5 snapshots
    assert snap.scheduler is not None and snap.scheduler.next_lrs == (lr * 0.5,)


@pytest.mark.parametrize(
    "optimizer, cycler, target, key",
    [("adam", "onecycle", "SGD", "momentum"), ("sgd", "cyclic", "Adam", "betas")],
)
def test_rebuild_under_a_momentum_cycling_scheduler_cycles_the_new_key(
    tmp_path, optimizer, cycler, target, key
):
    spec = loader_spec(optimizer, "onecycle" if cycler == "onecycle" else None)
    if cycler == "cyclic":
        spec.scheduler = torch.optim.lr_scheduler.CyclicLR(
            spec.optimizer, base_lr=1e-4, max_lr=1e-2, step_size_up=5
        )
    t = sync_trainer(spec, tmp_path / "run")
    t.step_now(2)
    r = t.apply_now(f"rebuild {target}")
    assert r.ok, r.message
    before = [g[key] for g in t.optimizer.param_groups]
    t.step_now(3)  # was: KeyError 'betas' in the scheduler, ERROR, no checkpoint
    assert t.state == RunState.RUNNING, t.error
    other = "betas" if key == "momentum" else "momentum"
    assert all(other not in g for g in t.optimizer.param_groups)
    assert [g[key] for g in t.optimizer.param_groups] != before  # it cycles


def test_rebuild_to_a_class_without_momentum_or_betas_under_onecycle_is_refused(tmp_path):
    t = sync_trainer(loader_spec("adam", "onecycle"), tmp_path / "run")
    r = t.apply_now("rebuild Adagrad")
    assert not r.ok and "OneCycleLR cycles momentum / beta1" in r.message, r.message
    t.step_now(2)
    assert t.state == RunState.RUNNING


def test_half_precision_parameters_take_the_lrs_their_updates_can():
    """float16's own range (6e-5 .. 65504) is not the update's: that is float32."""
    spec = loader_spec("sgd")
    spec.model.half()
    t = sync_trainer(spec)
    assert t.apply_now("lr all 1e-5").ok
    assert t.apply_now("rebuild ASGD").ok  # t0=1e6 > 65504
    assert not t.apply_now("lr all 1e39").ok


def test_split_with_lr_from_an_lr_of_zero(tmp_path):
    """A warm-up's first step has lr 0: `split ... lr=` divided by it."""
    spec = loader_spec("sgd")
    spec.scheduler = torch.optim.lr_scheduler.LambdaLR(spec.optimizer, lambda s: min(1.0, s / 10))
    t = sync_trainer(spec, tmp_path / "run")
    assert t.optimizer.param_groups[0]["lr"] == 0.0
    r = t.apply_now("split fc classifier.0 lr=0.05")
    assert r.ok, r.message
    g = t.optimizer.param_groups[-1]
    assert g["lr"] == 0.05 and g["initial_lr"] == 0.05
    assert t.scheduler.base_lrs[-1] == 0.05  # the schedule continues from the user's lr
    t.step_now(3)
    assert t.state == RunState.RUNNING
    assert 0 < g["lr"] <= 0.05


def test_a_split_name_that_would_hide_another_module_is_refused(tmp_path):
    t = sync_trainer(hf_grouping_spec(), tmp_path / "run")
    # 'blk' and 'blk.2' would be fine; 'features' would name only the weights of the
    # module features, so `lr features ...` would no longer reach its biases
    r = t.apply_now("split features features")
    assert not r.ok and "'features' is also the path of another module" in r.message, r.message
    # 'features.0' holds one of each: its split would make 'features.0' (its weight)
    # and 'features.0.2', both paths of other things
    r = t.apply_now("split features.0 features.0")
    assert not r.ok and "is also the path of another module" in r.message, r.message
    r = t.apply_now("split feat features")
    assert r.ok, r.message
    assert t.apply_now("lr features 0.003").ok  # the module path reaches both halves
    assert [g["lr"] for g in t.optimizer.param_groups if g["name"].startswith("feat")] == [
        0.003,
        0.003,
    ]


class Schedule:
    """A scheduler function bound to an object that holds a lot (a dataset, a model)."""

    def __init__(self) -> None:
        self.big = torch.zeros(1000)

    def __deepcopy__(self, memo):  # the look-ahead must never copy this
        raise AssertionError("the scheduler's function owner was deep-copied")

    def factor(self, step: int) -> float:
        return 0.9**step


def test_the_next_lr_look_ahead_copies_no_function_owner():
    spec = loader_spec("sgd")
    owner = Schedule()
    spec.scheduler = torch.optim.lr_scheduler.LambdaLR(spec.optimizer, owner.factor)
    t = sync_trainer(spec)
    t.step_now(2)
    sched = t._build_snapshot().scheduler
    assert sched is not None and None not in sched.next_lrs


def test_adamw_to_nadam_lists_decoupled_weight_decay_once(tmp_path):
    t = sync_trainer(loader_spec("adam"), tmp_path / "run")
    assert t.apply_now("rebuild AdamW").ok
    r = t.apply_now("rebuild NAdam")
    assert r.ok, r.message
    note = r.message.split("dropped; ", 1)[1]  # after "state of N parameter(s) dropped"
    assert "decoupled_weight_decay" not in note.split("NAdam's defaults")[0], note
    assert "NAdam's defaults for momentum_decay=0.004, decoupled_weight_decay=false" in note


def test_state_counts_follow_state_that_appears_after_a_set(tmp_path):
    spec = loader_spec("sgd")
    spec.optimizer = torch.optim.SGD(spec.model.parameters(), lr=0.01)  # no momentum: no buffers
    t = sync_trainer(spec, tmp_path / "run")
    t.step_now(2)
    assert sum(g.state_tensors for g in t._build_snapshot().groups) == 0
    assert t.apply_now("set all momentum=0.9").ok
    t.step_now(1)
    n = len(list(spec.model.parameters()))
    assert sum(g.state_tensors for g in t._build_snapshot().groups) == n


def test_a_command_whose_journal_text_is_too_long_is_refused():
    name = "'" * 2000
    line = f'split "{name}" features.0'
    assert len(line) < C.MAX_LINE_CHARS
    with pytest.raises(Exception, match="too long once written to the journal"):
        C.parse(line)
