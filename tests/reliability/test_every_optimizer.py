"""Rebuild into every class torch.optim has, on a real model, and back.

For each class that can hold an ordinary model's parameters: SGD -> CLASS -> SGD
-> CLASS with training steps between, a checkpoint under CLASS, and a resume that
continues bit for bit; after every command the journal's record of the groups is
the real ``param_groups``, and each group holds exactly the keys the class's
constructor takes (plus the names and scheduler anchors every group keeps).
Classes that cannot hold the model are refused up front, with the reason, and
nothing changes.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from tests.reliability.helpers import loader_spec, optimizer_state, sync_trainer
from tests.reliability.test_resume import assert_same_run
from tuiconsole.engine import groups as G
from tuiconsole.engine.snapshot import RunState
from tuiconsole.engine.trainer import Trainer
from tuiconsole.script import TrainingSpec, seed_everything

ALL = sorted(
    name
    for name in dir(torch.optim)
    if isinstance(getattr(torch.optim, name), type)
    and issubclass(getattr(torch.optim, name), torch.optim.Optimizer)
    and name != "Optimizer"
)
# What the engine's training step cannot give these classes, and what they say.
REFUSED = {
    "LBFGS": "needs a closure",
    "SparseAdam": "takes only sparse gradients",
    "Muon": "2D parameters",
}
HOLDS_ANY = [name for name in ALL if name not in REFUSED]


def test_the_list_is_every_class_the_installed_torch_has():
    assert {"SGD", "Adam", "AdamW", "Adafactor", "ASGD", "Rprop", "LBFGS", "SparseAdam"} <= set(ALL)
    assert len(HOLDS_ANY) >= 12


CARRIED = {"name", "initial_lr", "max_lr", "min_lr", "base_momentum", "max_momentum"}


def jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def takes(cls: type) -> set[str]:
    sig = inspect.signature(cls.__init__)  # type: ignore[misc]
    return {k for k in list(sig.parameters)[1:] if k != "params"}


def command(t: Trainer, text: str) -> str:
    r = t.apply_now(text, source="test")
    assert r.ok, (text, r.message)
    journaled = [x for x in jsonl(t.run_dir / "journal.jsonl") if x["type"] == "command"][-1]
    assert journaled["cmd"] == text and journaled["groups"] == G.groups_record(t.optimizer)
    return r.message


def check_keys(t: Trainer, cls_name: str) -> None:
    opt = t.optimizer
    assert type(opt).__name__ == cls_name
    accepted = takes(type(opt))
    for g in opt.param_groups:
        extra = set(g) - {"params"} - accepted - CARRIED
        # what the class puts into its own defaults (AdamW: decoupled_weight_decay=True)
        assert extra <= set(opt.defaults) - accepted, (cls_name, extra)
        for k in extra:
            assert g[k] == opt.defaults[k], (cls_name, k)


@pytest.mark.parametrize("source", ["sgd", "adam"])
@pytest.mark.parametrize("cls", HOLDS_ANY)
def test_rebuild_there_and_back_then_resume_bit_for_bit(tmp_path, cls, source):
    a = sync_trainer(loader_spec(source, "step"), tmp_path / "a")
    home = type(a.optimizer).__name__
    a.step_now(3)
    message = command(a, f"rebuild {cls}")
    check_keys(a, cls)
    if source == "sgd" and cls != "SGD":
        assert "dropped momentum" in message or "dropped dampening" in message, message
    a.step_now(3)
    command(a, f"rebuild {home}")
    check_keys(a, home)
    a.step_now(2)
    command(a, f"rebuild {cls} lr=0.002")
    check_keys(a, cls)
    assert all(g["lr"] == 0.002 for g in a.optimizer.param_groups)
    a.step_now(2)
    assert a.state == RunState.RUNNING, a.error
    command(a, f"checkpoint {tmp_path / 'ck.pt'}")
    a.step_now(4)
    b = sync_trainer(loader_spec(source, "step"), tmp_path / "b", resume=tmp_path / "ck.pt")
    assert type(b.optimizer).__name__ == cls
    assert b.state_reset == a.state_reset == [8, 8]
    b.step_now(4)
    assert b.state == RunState.RUNNING, b.error
    assert_same_run(a, b)


def test_a_key_both_classes_take_as_different_kinds_is_not_carried(tmp_path):
    """Adam's eps is a float, Adafactor's a (None, 1e-3) pair: carrying it broke step()."""
    t = sync_trainer(loader_spec("adam"), tmp_path / "a")
    message = command(t, "rebuild Adafactor")
    assert "eps not carried (Adafactor takes another kind of value)" in message, message
    assert all(g["eps"] == (None, 1e-3) for g in t.optimizer.param_groups)
    t.step_now(3)
    assert t.state == RunState.RUNNING, t.error


def test_adam_to_adamw_is_adamw_and_back(tmp_path):
    """The defect: AdamW built from Adam's groups kept decoupled_weight_decay=False."""
    t = sync_trainer(loader_spec("adam"), tmp_path / "a")
    t.step_now(2)
    message = command(t, "rebuild AdamW")
    assert all(g["decoupled_weight_decay"] is True for g in t.optimizer.param_groups)
    assert "dropped decoupled_weight_decay (AdamW does not take it)" in message
    command(t, "rebuild AdamW")  # failed before: AdamW() got decoupled_weight_decay
    message = command(t, "rebuild Adam")  # kept true before: AdamW under Adam's name
    assert all(g["decoupled_weight_decay"] is False for g in t.optimizer.param_groups)
    assert "Adam's defaults for decoupled_weight_decay=false" in message
    command(t, "rebuild AdamW weight_decay=0.05")
    command(t, f"checkpoint {tmp_path / 'ck.pt'}")
    t.step_now(3)
    b = sync_trainer(loader_spec("adam"), resume=tmp_path / "ck.pt")  # exited 2 before
    assert type(b.optimizer) is torch.optim.AdamW
    assert [g["weight_decay"] for g in b.optimizer.param_groups] == [0.05, 0.05]
    b.step_now(3)
    assert_same_run(t, b)


def test_sgd_to_adam_says_what_took_the_new_class_defaults(tmp_path):
    t = sync_trainer(loader_spec("sgd"), tmp_path / "a")
    message = command(t, "rebuild Adam")
    assert "dropped momentum, dampening, nesterov (Adam does not take them)" in message
    assert "Adam's defaults for betas=0.9,0.999, eps=1e-08" in message
    message = command(t, "rebuild SGD")
    assert "SGD's defaults for momentum=0, dampening=0, nesterov=false" in message, message
    assert all(g["momentum"] == 0 for g in t.optimizer.param_groups)


@pytest.mark.parametrize("cls", [c for c in REFUSED if c in ALL])
def test_classes_that_cannot_hold_the_model_are_refused_up_front(tmp_path, cls):
    t = sync_trainer(loader_spec("sgd"), tmp_path / "a")
    t.step_now(2)
    before = optimizer_state(t.optimizer)
    opt = t.optimizer
    r = t.apply_now(f"rebuild {cls}")
    assert not r.ok and REFUSED[cls] in r.message, r.message
    assert "\n" not in r.message
    assert t.optimizer is opt
    groups, state = optimizer_state(t.optimizer)
    assert groups == before[0]
    t.step_now(2)
    assert t.state == RunState.RUNNING


class OnlyMatrices(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(8, 16, bias=False)
        self.b = nn.Linear(16, 3, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.a(x).relu())


def matrices_spec() -> TrainingSpec:
    seed_everything(0)
    model = OnlyMatrices()
    x = torch.randn(64, 8)
    y = (x[:, 0] > 0).long()
    return TrainingSpec(
        model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9),
        criterion=nn.CrossEntropyLoss(),
        train_loader=[(x[i : i + 16], y[i : i + 16]) for i in range(0, 64, 16)],
        epochs=1000,
    )


@pytest.mark.skipif("Muon" not in ALL, reason="this torch has no Muon")
def test_muon_holds_a_model_of_matrices_only(tmp_path):
    t = sync_trainer(matrices_spec(), tmp_path / "a")
    t.step_now(2)
    command(t, "rebuild Muon")
    check_keys(t, "Muon")
    t.step_now(3)
    assert t.state == RunState.RUNNING, t.error
    command(t, f"checkpoint {tmp_path / 'ck.pt'}")
    t.step_now(2)
    b = sync_trainer(matrices_spec(), resume=tmp_path / "ck.pt")
    b.step_now(2)
    assert_same_run(t, b)


def test_a_rebuild_before_the_schedulers_first_step_warns_nothing(tmp_path):
    """A warning printed over the console garbles it; torch warned "optimizer.step()
    has been overridden" when the rebuilt optimizer's step was not wrapped."""
    import warnings

    t = sync_trainer(loader_spec("sgd", "lambda"), tmp_path / "a")
    command(t, "rebuild Adam")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        t.step_now(3)
    assert t.state == RunState.RUNNING, t.error
