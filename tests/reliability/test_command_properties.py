"""Property test: random command sequences (1,000 in total) on a real model and
optimizer, through the trainer's own command path (``apply_now``) with real
training steps in between, over several optimizer classes (rebuild moves between
SGD, Adam, AdamW, RMSprop and NAdam) and over the decay / no_decay grouping that
Hugging Face scripts use (every module's weights in one group, its biases in
another with weight_decay=0).

After every command: each trainable parameter is in exactly one group, no
frozen parameter is in a group, group names are unique, in-place commands keep
every optimizer state tensor (same object, same values), and the groups (names,
members, lr and hyper-parameters) equal what a pure-Python model of the command
semantics predicts — every key of every group, including which commands must
fail — and the journal's record of the groups equals the real ``param_groups``.
After the sequence the journal, replayed on a fresh run, reproduces the same
groups and weights.
"""

from __future__ import annotations

import inspect
import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from tuiconsole.engine import groups as G
from tuiconsole.engine.commands import jsonable
from tuiconsole.engine.snapshot import RunState
from tuiconsole.engine.trainer import RunConfig, Trainer
from tuiconsole.script import TrainingSpec

pytestmark = pytest.mark.slow  # 1,000 random sequences

SHM = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(3, 4)
        self.b = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4))
        self.c = nn.Linear(4, 2)
        self.frozen = nn.Linear(2, 2)
        for p in self.frozen.parameters():
            p.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.frozen(self.c(self.b(self.a(x)).relu()))


MODULES = ["a", "b", "b.0", "b.1", "b.2", "c", "frozen", "nosuch"]
TARGETS = ["all", "body", "head", "s1", "s2", "s1.2", "c", "weight_decay:0", *MODULES]
NAMES = ["s1", "s2", "c", "head", "all"]
LRS = ["1e-4", "0.003", "0.05", "0.5", "2.0"]
BAD_NUMBERS = ["0", "-1", "nan", "inf", "abc"]
FACTORS = ["0.1", "0.5", "2.0", "3.0"]


def make_spec(optimizer: str) -> TrainingSpec:
    torch.manual_seed(0)
    model = Tiny()
    body = [*model.a.parameters(), *model.b.parameters()]
    groups = [
        {"params": body, "name": "body"},
        {"params": list(model.c.parameters()), "name": "head", "lr": 0.1},
    ]
    sched = None
    if optimizer == "adamw_decay":
        # The Hugging Face grouping: unnamed groups spanning every module.
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        groups = [
            {"params": [p for n, p in named if n.endswith("weight")], "weight_decay": 0.01},
            {"params": [p for n, p in named if n.endswith("bias")], "weight_decay": 0.0},
        ]
        opt: torch.optim.Optimizer = torch.optim.AdamW(groups, lr=0.01)
    elif optimizer == "sgd":
        opt = torch.optim.SGD(groups, lr=0.01, momentum=0.9)
        # a scheduler whose schedule is flat, so lrs stay predictable while its
        # per-group lists must follow every split/rebuild
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    elif optimizer == "rmsprop":
        opt = torch.optim.RMSprop(groups, lr=0.01, momentum=0.5)
    else:
        opt = torch.optim.Adam(groups, lr=0.01, weight_decay=0.001)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(32, 3, generator=g)
    y = (x[:, 0] > 0).long()
    data = [(x[i : i + 8], y[i : i + 8]) for i in range(0, 32, 8)]
    return TrainingSpec(
        model=model,
        optimizer=opt,
        criterion=nn.CrossEntropyLoss(),
        train_loader=data,
        epochs=1_000_000,
        scheduler=sched,
        scheduler_interval="step",
    )


# --------------------------------------------------------------------------- model


@dataclass
class Group:
    name: str
    params: list[str]
    hp: dict[str, Any] = field(default_factory=dict)  # every key but params and name

    @property
    def lr(self) -> float:
        return float(self.hp["lr"])

    def set_lr(self, v: float) -> None:
        self.hp["lr"] = v
        if "initial_lr" in self.hp:  # LambdaLR's anchor; the schedule here is flat
            self.hp["initial_lr"] = v


class Rejected(Exception):
    pass


F32 = torch.finfo(torch.float32)
CARRY = ("name", "initial_lr", "max_lr", "min_lr", "base_momentum", "max_momentum")


def num(text: str) -> float:
    v = float(text)  # the strategies only draw parseable or clearly bad numbers
    if not math.isfinite(v):
        raise Rejected
    return v


def positive(text: str) -> float:
    try:
        v = num(text)
    except ValueError:
        raise Rejected from None
    if v <= 0:
        raise Rejected
    return v


def check_lr(v: float) -> float:
    if not math.isfinite(v) or v <= 0 or not F32.tiny <= v <= F32.max:
        raise Rejected
    return v


def takes(cls: type) -> dict[str, Any]:
    """What the class's constructor takes: the rule rebuild must follow."""
    sig = inspect.signature(cls.__init__)  # type: ignore[misc]
    return {k: p.default for k, p in list(sig.parameters.items())[1:] if k != "params"}


class Model:
    """What the command language promises, in plain Python over parameter names."""

    def __init__(self, trainer: Trainer) -> None:
        model = trainer.model
        self.cls = type(trainer.optimizer).__name__
        self.defaults = dict(trainer.optimizer.defaults)
        self.all_params = {n: p for n, p in model.named_parameters()}
        self.trainable = [n for n, p in self.all_params.items() if p.requires_grad]
        self.modules = {
            path: [n for n, _ in m.named_parameters(prefix=path)]
            for path, m in model.named_modules()
            if path
        }
        self.groups = [
            Group(
                str(g["name"]),
                [self._name(p) for p in g["params"]],
                {k: v for k, v in g.items() if k not in ("params", "name")},
            )
            for g in trainer.optimizer.param_groups
        ]

    def _name(self, p: torch.Tensor) -> str:
        return next(n for n, q in self.all_params.items() if q is p)

    def module_params(self, path: str) -> list[str]:
        if path in self.modules:
            return self.modules[path]
        if path in self.all_params:  # a parameter's own path
            return [path]
        raise Rejected

    def resolve(self, target: str) -> list[int]:
        if target == "all":
            return list(range(len(self.groups)))
        names = [g.name for g in self.groups]
        if target in names:
            return [names.index(target)]
        ps = set(self.module_params(target))
        hit = [i for i, g in enumerate(self.groups) if ps & set(g.params)]
        if not hit:
            raise Rejected
        return hit

    # each returns True if the optimizer is rebuilt (state dropped)
    def lr(self, target: str, value: str) -> bool:
        op = value[0] if value[0] in "*/" else "="
        v = positive(value[1:] if op != "=" else value)
        idx = self.resolve(target)
        new = {}
        for i in idx:
            old = self.groups[i].lr
            new[i] = check_lr(v if op == "=" else old * v if op == "*" else old / v)
        for i, lr in new.items():
            self.groups[i].set_lr(lr)
        return False

    def decay(self, factor: str, target: str) -> bool:
        return self.lr(target, "*" + factor)

    def set(self, target: str, key: str, value: str) -> bool:
        try:
            v = num(value)
        except ValueError:
            raise Rejected from None
        idx = self.resolve(target)
        if key == "lr":
            check_lr(v)
        elif any(self.groups[i].hp.get(key) is None for i in idx) or v < 0:
            raise Rejected
        for i in idx:
            if key == "lr":
                self.groups[i].set_lr(v)
            else:
                cur = self.groups[i].hp[key]
                self.groups[i].hp[key] = int(v) if type(cur) is int and v.is_integer() else v
        return False

    def split(self, name: str, modules: list[str], lr: str | None) -> bool:
        if name in [g.name for g in self.groups] or name == "all":
            raise Rejected
        chosen: list[str] = []
        for path in modules:
            params = self.module_params(path)
            trainable = [p for p in params if p in self.trainable]
            if not params or not trainable:
                raise Rejected
            chosen += [p for p in trainable if p not in chosen]
        moving = [p for g in self.groups for p in g.params if p in chosen]
        if any(set(g.params) == set(moving) for g in self.groups):
            raise Rejected
        new_lr = None
        if lr is not None:
            try:
                new_lr = check_lr(num(lr))
            except ValueError:
                raise Rejected from None
        # one new group per source group; sources left with equal values share one
        made: list[Group] = []
        for g in self.groups:
            mine = [p for p in g.params if p in chosen]
            if not mine:
                continue
            cand = Group(name, mine, dict(g.hp))
            if new_lr is not None:
                cand.set_lr(new_lr)
            twin = next((m for m in made if m.hp == cand.hp), None)
            if twin is not None:
                twin.params += mine
            else:
                made.append(cand)
        for k, m in enumerate(made[1:], start=2):
            m.name = f"{name}.{k}"
        if any(m.name in [g.name for g in self.groups] for m in made):
            raise Rejected
        for m in made:  # a group name must not hide another module's or parameter's path
            if m.name in self.modules or m.name in self.all_params:
                under = [p for p in self.module_params(m.name) if p in self.trainable]
                if set(under) != set(m.params):
                    raise Rejected
        rest = [Group(g.name, [p for p in g.params if p not in chosen], g.hp) for g in self.groups]
        self.groups = [g for g in rest if g.params] + made
        return False

    def rebuild(self, cls: str | None, lr: str | None) -> bool:
        new_lr = None
        if lr is not None:
            try:
                new_lr = check_lr(num(lr))
            except ValueError:
                raise Rejected from None
        target = cls or self.cls
        klass = getattr(torch.optim, target)
        accepted = takes(klass)
        same = target == self.cls
        ctor = {k: v for k, v in self.defaults.items() if k in accepted} if same else {}
        dummy = [torch.zeros(1, requires_grad=True)]
        defaults = dict(klass(dummy, **ctor).defaults)
        # a key the old class sets for itself (AdamW: decoupled_weight_decay) is its
        # identity, not a hyper-parameter to carry
        own = set(self.defaults) - set(takes(getattr(torch.optim, self.cls)))
        for g in self.groups:
            kept = {
                k: v
                for k, v in g.hp.items()
                if same or (k in accepted and k not in own) or k in CARRY
            }
            g.hp = {**defaults, **kept}
            if new_lr is not None:
                g.set_lr(new_lr)
        self.cls, self.defaults = target, defaults
        return True


# --------------------------------------------------------------------------- strategies

values = st.one_of(st.sampled_from(LRS), st.sampled_from(BAD_NUMBERS))
rel = st.builds(lambda op, f: op + f, st.sampled_from("*/"), st.sampled_from(FACTORS))
commands = st.one_of(
    st.tuples(st.just("lr"), st.sampled_from(TARGETS), st.one_of(values, rel)),
    st.tuples(st.just("decay"), st.sampled_from([*FACTORS, "0", "nan"]), st.sampled_from(TARGETS)),
    st.tuples(
        st.just("set"),
        st.sampled_from(TARGETS),
        st.sampled_from(["lr", "momentum", "weight_decay"]),
        st.sampled_from(["0.0", "0.5", "0.01", "-1", "nan", *LRS[:2]]),
    ),
    st.tuples(
        st.just("split"),
        st.sampled_from(NAMES),
        st.lists(
            st.sampled_from([*MODULES, "a.bias", "c.weight"]), min_size=1, max_size=3, unique=True
        ),
        st.one_of(st.none(), values),
    ),
    st.tuples(
        st.just("rebuild"),
        st.sampled_from([None, "SGD", "Adam", "AdamW", "RMSprop", "NAdam"]),
        st.one_of(st.none(), st.sampled_from(LRS)),
    ),
    st.tuples(st.just("train"), st.integers(1, 3)),
)


def text_of(c: tuple) -> str:
    kind = c[0]
    if kind == "lr":
        return f"lr {c[1]} {c[2]}"
    if kind == "decay":
        return f"decay {c[1]} {c[2]}"
    if kind == "set":
        return f"set {c[1]} {c[2]}={c[3]}"
    if kind == "split":
        return " ".join(["split", c[1], *c[2], *([f"lr={c[3]}"] if c[3] else [])])
    return " ".join(["rebuild", *([c[1]] if c[1] else []), *([f"lr={c[2]}"] if c[2] else [])])


def predict(model: Model, c: tuple) -> bool | None:
    """True: rebuilds, False: in place, None: must be rejected (nothing changes)."""
    try:
        if c[0] == "lr":
            return model.lr(c[1], c[2])
        if c[0] == "decay":
            return model.decay(c[1], c[2])
        if c[0] == "set":
            return model.set(c[1], c[2], c[3])
        if c[0] == "split":
            return model.split(c[1], c[2], c[3])
        return model.rebuild(c[1], c[2])
    except Rejected:
        return None


# --------------------------------------------------------------------------- checks


def state_tensors(opt: torch.optim.Optimizer) -> dict[tuple[int, str], torch.Tensor]:
    return {(id(p), k): v for p, s in opt.state.items() for k, v in s.items() if torch.is_tensor(v)}


def check_invariants(t: Trainer, model: Model) -> None:
    opt = t.optimizer
    params = dict(t.model.named_parameters())
    trainable = {id(p) for p in params.values() if p.requires_grad}
    members = [id(p) for g in opt.param_groups for p in g["params"]]
    assert len(members) == len(set(members)), "a parameter is in two groups"
    assert set(members) == trainable, "trainable params != grouped params (or a frozen one grouped)"
    names = [g["name"] for g in opt.param_groups]
    assert len(names) == len(set(names)), names
    assert names == [g.name for g in model.groups]
    assert type(opt).__name__ == model.cls
    for g, m in zip(opt.param_groups, model.groups, strict=True):
        assert [model._name(p) for p in g["params"]] == m.params, g["name"]
        assert set(g) - {"params", "name"} == set(m.hp), (g["name"], sorted(g), sorted(m.hp))
        for k, v in m.hp.items():
            if k in ("lr", "initial_lr"):
                assert math.isclose(float(g[k]), v, rel_tol=1e-9), (g["name"], k, g[k], v)
            else:
                assert g[k] == v and type(g[k]) is type(v), (g["name"], k, g[k], v)
    journaled = [r for r in jsonl(t.run_dir / "journal.jsonl") if "groups" in r][-1]["groups"]
    assert journaled == G.groups_record(opt)
    assert journaled == [
        {"name": g["name"], "lr": jsonable(g["lr"])}
        | {k: jsonable(v) for k, v in g.items() if k not in ("params", "name", "lr")}
        | {"n_tensors": len(g["params"])}
        for g in opt.param_groups
    ]
    sched = t.scheduler
    if sched is not None:
        assert sched.optimizer is opt
        assert len(sched.base_lrs) == len(sched.lr_lambdas) == len(opt.param_groups)
        for base, g in zip(sched.base_lrs, opt.param_groups, strict=True):
            assert math.isclose(base, float(g["lr"]), rel_tol=1e-9)  # flat schedule


def run_sequence(optimizer: str, seq: list[tuple], folder: Path) -> None:
    t = Trainer(
        make_spec(optimizer),
        RunConfig(run_dir=folder / "run", log_every=0, final_checkpoint=False),
    ).prepare()
    t.step_now(2)  # real momentum buffers / Adam moments to keep or drop
    model = Model(t)
    check_invariants(t, model)
    for c in seq:
        if c[0] == "train":
            t.step_now(c[1])
            assert t.state == RunState.RUNNING, t.error
            check_invariants(t, model)
            continue
        opt_before = t.optimizer
        before = {k: (v, v.clone()) for k, v in state_tensors(opt_before).items()}
        expect = predict(model, c)
        r = t.apply_now(text_of(c), source="prop")
        assert r.ok == (expect is not None), (text_of(c), r.message)
        if expect is True:  # rebuilt: fresh optimizer, state dropped
            assert t.optimizer is not opt_before and not t.optimizer.state
        else:  # in place or rejected: the very same state tensors, same values
            assert t.optimizer is opt_before
            after = state_tensors(t.optimizer)
            assert after.keys() == before.keys()
            for k, (obj, val) in before.items():
                assert after[k] is obj and torch.equal(obj, val), text_of(c)
        check_invariants(t, model)
    t.close()

    replay = Trainer(
        make_spec(optimizer),
        RunConfig(replay=folder / "run" / "journal.jsonl", log_every=0, final_checkpoint=False),
    ).prepare()
    replay.step_now(t.step)
    assert replay.state == RunState.RUNNING and replay.step == t.step, replay.error
    assert type(replay.optimizer) is type(t.optimizer)
    for g1, g2 in zip(t.optimizer.param_groups, replay.optimizer.param_groups, strict=True):
        assert g1.keys() == g2.keys()
        for k in g1:
            if k == "params":
                assert [id(p) for p in g2[k]] == [
                    id(dict(replay.model.named_parameters())[model._name(p)]) for p in g1[k]
                ]
            else:
                assert g1[k] == g2[k], k
    for k, v in t.model.state_dict().items():
        assert torch.equal(v, replay.model.state_dict()[k]), k


PROP = settings(
    max_examples=250,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


def jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# 4 x 250 = 1,000 sequences: SGD with a LambdaLR schedule, Adam, RMSprop, and AdamW
# over the decay / no_decay grouping.
@pytest.mark.parametrize("optimizer", ["sgd", "adam", "rmsprop", "adamw_decay"])
@PROP
@given(seq=st.lists(commands, min_size=1, max_size=10))
def test_random_commands(optimizer, seq):
    with tempfile.TemporaryDirectory(dir=SHM) as d:
        run_sequence(optimizer, seq, Path(d))
