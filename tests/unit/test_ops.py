"""The optimizer operations over a plain Optimization value, without a trainer."""

from __future__ import annotations

import pytest
import torch

from tests.unit.models import Net, make_data, seed_optimizer
from tuiconsole.engine import commands as C
from tuiconsole.engine import control, lrfind, ops, step
from tuiconsole.engine import groups as G
from tuiconsole.errors import CommandError


def optimization(cls: type | None = None) -> ops.Optimization:
    torch.manual_seed(0)
    model = Net()
    opt = seed_optimizer(model)
    if cls is not None:
        opt = cls([{**g} for g in opt.param_groups], lr=1e-3, momentum=0.9)
    G.ensure_names(opt, model)
    return ops.Optimization.of(model, opt, None)


def train_step(o: ops.Optimization) -> None:
    x, y = make_data()[0]
    torch.manual_seed(1)  # the same Dropout masks in every run
    o.optimizer.zero_grad()
    torch.nn.functional.cross_entropy(o.model(x), y).backward()


def test_every_command_has_exactly_one_handler():
    """No ladder to forget a command in: each type is an op, a control command or one
    of how steps are taken (engine/step.py: clip, accumulate), or one of the tuning
    commands the trainer applies itself (undo, at, rollback)."""
    from tuiconsole.engine.trainer import TUNING_COMMANDS

    kinds = set(C.Command.__subclasses__())
    steps = set(step.COMMANDS)
    sweeps = set(lrfind.COMMANDS)  # the lr range test (engine/lrfind.py): a control command
    tuning = set(TUNING_COMMANDS)
    assert set(ops.OPS) | set(control.CONTROLS) | steps | sweeps | tuning == kinds
    assert not (set(ops.OPS) | set(control.CONTROLS) | steps) & (sweeps | tuning)
    assert not sweeps & tuning
    assert all(k.control for k in sweeps)  # not replayed: it puts the run back
    assert not set(ops.OPS) & set(control.CONTROLS)
    assert not (set(ops.OPS) | set(control.CONTROLS)) & steps
    assert all(not k.control for k in set(ops.OPS) | steps)  # replayed: they change the maths


def test_results_say_what_changed_and_whether_the_groups_did():
    o = optimization()
    r, undo = ops.apply(C.parse("lr classifier 0.5"), o, 7, None)
    assert r == ops.OpResult("lr classifier 0.01->0.5 (in place; momentum/Adam state kept)")
    assert o.optimizer.param_groups[1]["lr"] == 0.5 and undo.commands == ["lr classifier 0.5"]
    r, again = ops.apply(C.parse("decay 0.5 all"), o, 7, undo)
    assert again is undo and undo.commands == ["lr classifier 0.5", "decay 0.5 all"]
    assert not r.structure_changed
    r, _ = ops.apply(C.parse("split fc1 classifier.0"), o, 7, None)
    assert r.structure_changed and o.group_origin == [0, 1, 1]
    assert o.state_reset == [None, None, None]
    r, _ = ops.apply(C.parse("rebuild Adam"), o, 7, None)
    assert r.structure_changed and type(o.optimizer) is torch.optim.Adam
    assert o.state_reset == [7, 7, 7] and o.group_origin == [0, 1, 1]


def test_a_refused_command_changes_nothing_and_arms_no_undo():
    o = optimization()
    opt, groups = o.optimizer, [dict(g) for g in o.optimizer.param_groups]
    with pytest.raises(CommandError, match="nosuch"):
        ops.apply(C.parse("lr nosuch 1"), o, 0, None)
    assert o.optimizer is opt and [dict(g) for g in opt.param_groups] == groups


class Picky(torch.optim.SGD):
    """A user's own class: its step refuses a value before changing anything."""

    def step(self, closure=None):  # type: ignore[override]
        if any(g["momentum"] > 0.95 for g in self.param_groups):
            raise ValueError("Picky refuses momentum")
        return super().step(closure)


def test_guarded_step_undoes_what_the_step_refused_and_takes_the_step():
    o = optimization(Picky)
    ref = optimization(Picky)
    train_step(ref)
    ref.optimizer.step()  # the step without the command
    opt = o.optimizer
    _, undo = ops.apply(C.parse("set all momentum=0.99"), o, 0, None)
    train_step(o)
    error = ops.guarded_step(o, undo, torch.device("cpu"))
    assert error == "ValueError: Picky refuses momentum" and undo.restored
    assert o.optimizer is opt and [g["momentum"] for g in opt.param_groups] == [0.9, 0.9]
    for a, b in zip(o.model.parameters(), ref.model.parameters(), strict=True):
        assert torch.equal(a, b)
    assert ops.undone_text(undo, error).startswith("undone `set all momentum=0.99`")


def test_guarded_step_passes_a_good_step_through():
    o = optimization()
    _, undo = ops.apply(C.parse("lr all 0.1"), o, 0, None)
    before = [p.detach().clone() for p in o.model.parameters()]
    train_step(o)
    assert ops.guarded_step(o, undo, torch.device("cpu")) is None and not undo.restored
    assert o.optimizer.param_groups[0]["lr"] == 0.1
    assert any(not torch.equal(a, b) for a, b in zip(before, o.model.parameters(), strict=True))
