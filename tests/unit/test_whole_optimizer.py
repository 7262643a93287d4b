"""Targets a user can name, and the whole optimizer state in every view of the run."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from tests.reliability.helpers import hf_grouping_spec, loader_spec, sync_trainer
from tuiconsole.engine import groups as G
from tuiconsole.engine.snapshot import RunState
from tuiconsole.script import TrainingSpec


class Loose(nn.Module):
    """Parameters that belong to no submodule: a root ``scale`` and a ParameterList."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(4, 3)
        self.scale = nn.Parameter(torch.ones(3))
        self.extra = nn.ParameterList([nn.Parameter(torch.zeros(3)), nn.Parameter(torch.ones(3))])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) * self.scale + self.extra[0] + self.extra[1]


def loose_spec() -> TrainingSpec:
    torch.manual_seed(0)
    model = Loose()
    x = torch.randn(32, 4)
    y = (x[:, 0] > 0).long()
    return TrainingSpec(
        model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9),
        criterion=nn.CrossEntropyLoss(),
        train_loader=[(x[i : i + 8], y[i : i + 8]) for i in range(0, 32, 8)],
        epochs=100,
    )


def test_parameters_outside_submodules_are_targets(tmp_path):
    t = sync_trainer(loose_spec(), tmp_path / "run")
    t.step_now(2)
    scale = t.model.scale
    buf = t.optimizer.state[scale]["momentum_buffer"]
    r = t.apply_now("split s scale")  # was: no module or group named 'scale'
    assert r.ok, r.message
    g = t.optimizer.param_groups[-1]
    assert g["name"] == "s" and g["params"] == [scale]
    assert t.optimizer.state[scale]["momentum_buffer"] is buf
    assert t.apply_now("lr scale 1e-3").ok
    assert g["lr"] == 1e-3
    assert t.apply_now("split x extra.0 lr=0.02").ok
    assert t.optimizer.param_groups[-1]["params"] == [t.model.extra[0]]
    assert t.apply_now("lr body.weight 0.5").ok  # a parameter's path inside a module
    assert t.optimizer.param_groups[0]["lr"] == 0.5
    t.step_now(2)
    assert t.state == RunState.RUNNING


def test_groups_spanning_the_whole_model_are_named_by_what_sets_them_apart():
    model = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4), nn.Linear(4, 2))
    named = list(model.named_parameters())
    decay = [p for n, p in named if n.endswith("weight") and p.dim() > 1]
    no_decay = [p for n, p in named if not (n.endswith("weight") and p.dim() > 1)]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}]
    )
    G.ensure_names(opt, model)
    assert G.group_names(opt) == ["weight_decay:0.01", "weight_decay:0"]
    # identical values: nothing sets them apart, the old rule stays
    opt = torch.optim.SGD([{"params": decay}, {"params": no_decay}], lr=0.1)
    G.ensure_names(opt, model)
    assert G.group_names(opt) == ["group0", "group1"]
    # groups apart only by lr are not named by it (the lr is what a user changes)
    opt = torch.optim.SGD([{"params": decay}, {"params": no_decay, "lr": 0.5}], lr=0.1)
    G.ensure_names(opt, model)
    assert G.group_names(opt) == ["group0", "group1"]


def test_split_of_a_decay_no_decay_grouping_keeps_each_weight_decay(tmp_path):
    """The Hugging Face grouping: `split` used to give biases the weights' decay."""
    t = sync_trainer(hf_grouping_spec(), tmp_path / "run")
    t.step_now(2)
    state = {id(p): s["exp_avg"] for p, s in t.optimizer.state.items()}
    r = t.apply_now("split blk0 features.0 lr=0.002")
    assert r.ok, r.message
    assert "'blk0' (1 tensors from 'weight_decay:0.01')" in r.message, r.message
    assert "'blk0.2' (1 tensors from 'weight_decay:0')" in r.message, r.message
    groups = {g["name"]: g for g in t.optimizer.param_groups}
    layer = t.model.features[0]
    assert groups["blk0"]["params"] == [layer.weight] and groups["blk0"]["weight_decay"] == 0.01
    assert groups["blk0.2"]["params"] == [layer.bias] and groups["blk0.2"]["weight_decay"] == 0.0
    assert groups["blk0"]["lr"] == groups["blk0.2"]["lr"] == 0.002
    assert all(t.optimizer.state[p]["exp_avg"] is state[id(p)] for p in t.optimizer.state)
    # every other parameter keeps its group and value
    for name, wd in (("weight_decay:0.01", 0.01), ("weight_decay:0", 0.0)):
        assert groups[name]["weight_decay"] == wd and groups[name]["lr"] == 1e-3
    t.step_now(2)
    assert t.state == RunState.RUNNING


def test_snapshot_journal_header_carry_the_whole_optimizer(tmp_path):
    t = sync_trainer(loader_spec("adam", "onecycle"), tmp_path / "run")
    t.step_now(3)
    snap = t._build_snapshot()
    g = snap.groups[0]
    keys = dict(g.hparams)
    for k in ("eps", "amsgrad", "maximize", "decoupled_weight_decay", "foreach", "betas"):
        assert k in keys, k
    assert keys["initial_lr"] == t.optimizer.param_groups[0]["initial_lr"]
    assert g.state_reset_step is None  # the script's own optimizer: never reset
    sizes = [
        sum(v.numel() * v.element_size() for v in s.values()) for s in t.optimizer.state.values()
    ]
    assert sum(x.state_bytes for x in snap.groups) == sum(sizes) > 0
    assert sum(x.state_tensors for x in snap.groups) == 3 * len(t.optimizer.state)
    sched = snap.scheduler
    assert sched is not None and sched.cls == "OneCycleLR" and sched.step == 3
    # the lrs its next step sets, without stepping it
    lrs_before = [float(x["lr"]) for x in t.optimizer.param_groups]
    t.scheduler.step()
    assert list(sched.next_lrs) == [float(x["lr"]) for x in t.optimizer.param_groups]
    assert list(sched.next_lrs) != lrs_before
    t.scheduler.last_epoch -= 1  # (put it back for the rest of the test)
    assert t.apply_now("rebuild").ok
    t.step_now(1)
    snap = t._build_snapshot()
    assert [x.state_reset_step for x in snap.groups] == [3, 3]
    state = snap.optimizer_state()
    json.dumps(state)  # JSON-ready: `ls --json` prints it
    assert state["class"] == "Adam" and state["scheduler"]["class"] == "OneCycleLR"
    assert state["groups"][0]["state_reset_step"] == 3
    header = json.loads(Path(t.run_dir / "journal.jsonl").read_text().splitlines()[0])
    assert header["optimizer_state"]["groups"][0]["eps"] == 1e-8
    assert header["optimizer_state"]["scheduler"]["class"] == "OneCycleLR"


def test_one_epoch_number_everywhere(tmp_path):
    """A resumed run said `29 batch(es) into epoch 8`, then `epoch 7`, then `(epoch 8)`."""
    spec = loader_spec("sgd")  # 11 batches an epoch
    a = sync_trainer(spec, tmp_path / "a")
    a.step_now(11 * 7 + 5)  # 5 batches into the 8th epoch
    assert a._build_snapshot().status.epoch == 8
    assert a.apply_now(f"checkpoint {tmp_path / 'ck.pt'}").ok
    b = sync_trainer(loader_spec("sgd"), tmp_path / "b", resume=tmp_path / "ck.pt", log_every=1)
    log = [e.text for e in b._build_snapshot().log]
    assert any("5 batch(es) into epoch 8" in line for line in log), log
    assert b._build_snapshot().status.epoch == 8
    b.step_now(2)
    log = [e.text for e in b._log_tail() if e.kind == "metrics"]
    assert log and " epoch 8 " in log[-1], log
    b.step_now(11 - 7)  # the 8th epoch's last batch
    assert b._build_snapshot().status.epoch == 8
    b.step_now(1)
    assert b._build_snapshot().status.epoch == 9
    metrics = [json.loads(x) for x in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics if m["type"] == "train"][-1] == 9
