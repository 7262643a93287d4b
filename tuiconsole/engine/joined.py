"""Several optimizers steered as one run (a GAN's generator and discriminator).

The engine steers one optimizer: its groups are what a user names, what the
journal records and the console shows, and what a checkpoint holds. A
framework can hold several (a LightningModule's ``configure_optimizers``
returning two, stepped by its own ``training_step``). :class:`JoinedOptimizer`
is one ``torch.optim.Optimizer`` over them all for everything that *reads* the
optimizer: its ``param_groups`` list holds the members' own group dicts (the
same objects, in member order), ``state`` reads through to the members'
state, ``state_dict()`` is each member's. The group names are the caller's
(unique across the members: ``generator``, ``discriminator/head``...).

What *changes* an optimizer is routed to the member that holds the group
(:class:`JoinedOptimization` swaps in its own operations, ops.py's apply()
asks it): ``lr``, ``decay`` and ``set`` on any groups of any members, each
member's scheduler kept in step as for one optimizer, every member checked
before any is written; ``split`` within one member (the modules' parameters
must all be in that one), the new group's name unique across all;
``rebuild`` is refused: it makes *the* optimizer anew and can name none of
several. The joined object is never stepped by the engine: the framework steps
the members (``step()`` here steps each, for completeness).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from tuiconsole.engine import commands as C
from tuiconsole.engine import groups as G
from tuiconsole.engine import ops
from tuiconsole.engine.snapshot import SchedulerView
from tuiconsole.errors import CommandError


@dataclass(frozen=True)
class Member:
    name: str
    optimizer: torch.optim.Optimizer
    scheduler: Any = None  # an lr scheduler on ``optimizer``, or None


def member_names(model: nn.Module, optimizers: Sequence[torch.optim.Optimizer]) -> list[str]:
    """A name per optimizer a user can type: the module path all its parameters share
    (``generator``, ``discriminator``) where those are distinct, else ``opt0``, ``opt1``..."""
    owners = G.param_owners(model)
    paths = [
        G.common_path(
            owners[id(p)].rpartition(".")[0]
            for g in opt.param_groups
            for p in g["params"]
            if id(p) in owners
        )
        for opt in optimizers
    ]
    if all(paths) and len(set(paths)) == len(paths):
        return paths
    return [f"opt{i}" for i in range(len(optimizers))]


def name_groups(
    model: nn.Module, name: str, optimizer: torch.optim.Optimizer, only_new: bool = False
) -> None:
    """Name a member's groups after it: its one group is ``NAME``; of several, each is
    ``NAME/<its module path within the optimizer's>`` (``generator/head``), else
    ``NAME/<the hyper-parameter that sets it apart>`` or ``NAME/group<i>``. A name the
    code gave a group stays."""
    groups = optimizer.param_groups
    owners = G.param_owners(model)
    paths = [
        G.common_path(owners[id(p)].rpartition(".")[0] for p in g["params"] if id(p) in owners)
        for g in groups
    ]
    common = G.common_path(paths)
    for j, (group, path) in enumerate(zip(groups, paths, strict=True)):
        if group.get("name"):
            continue
        if len(groups) == 1 and not only_new:
            group["name"] = name
            continue
        if common and path.startswith(f"{common}."):
            path = path[len(common) + 1 :]
        elif path == common:
            path = ""
        group["name"] = f"{name}/{path or G.default_group_name(group, j, {}, groups)}"


def _shared_parameter(members: Sequence[Member]) -> str | None:
    """Why these cannot be joined, if two of them hold one parameter: a group would be
    in two optimizers, and a command on it could reach only one."""
    seen: dict[int, str] = {}
    for m in members:
        for g in m.optimizer.param_groups:
            for p in g["params"]:
                other = seen.setdefault(id(p), m.name)
                if other != m.name:
                    return (
                        f"optimizers {other} and {m.name} both hold a parameter of shape "
                        f"{tuple(p.shape)}; each parameter must be in one optimizer to steer them"
                    )
    return None


class _States(Mapping[Any, Any]):
    """The members' ``state`` read as one mapping. Not a ChainMap: a member's state is a
    defaultdict, and ChainMap's lookup would add an empty entry for another member's
    parameter to the first member's state (its state_dict() then fails)."""

    def __init__(self, members: Sequence[Member]) -> None:
        self._maps = [m.optimizer.state for m in members]

    def __getitem__(self, key: Any) -> Any:
        for state in self._maps:
            if key in state:
                return state[key]
        raise KeyError(key)

    def __iter__(self) -> Iterator[Any]:
        for state in self._maps:
            yield from state

    def __len__(self) -> int:
        return sum(len(state) for state in self._maps)


class _Handles:
    """One hook registered on every member: removed from all at once."""

    def __init__(self, handles: list[Any]) -> None:
        self._handles = handles

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


class JoinedOptimizer(torch.optim.Optimizer):
    """The members' groups as one optimizer's (see the module's docstring)."""

    def __init__(self, members: Sequence[Member]) -> None:
        # Not torch's __init__: no groups of its own, no defaults, no state of its own.
        if len(members) < 2:
            raise ValueError("a JoinedOptimizer joins two or more optimizers")
        shared = _shared_parameter(members)
        if shared is not None:
            raise CommandError(shared)
        self.members = tuple(members)
        self.defaults = {}
        self.param_groups = []
        self.state = _States(members)  # type: ignore[assignment]
        self.refresh()

    @classmethod
    def of(cls, members: Sequence[Member]) -> JoinedOptimizer:
        """A joined optimizer whose class name says what it joins (``SGD+Adam``): the
        console and the journal's header show the optimizer's class name."""
        name = "+".join(type(m.optimizer).__name__ for m in members)
        joined: JoinedOptimizer = type(name, (cls,), {})(members)
        return joined

    def refresh(self) -> None:
        """Take the members' group lists again (after a split replaced their dicts)."""
        self.param_groups[:] = [g for m in self.members for g in m.optimizer.param_groups]

    def locate(self, index: int) -> tuple[int, int]:
        """(member, index in its param_groups) of the joined group ``index``."""
        for k, member in enumerate(self.members):
            n = len(member.optimizer.param_groups)
            if index < n:
                return k, index
            index -= n
        raise IndexError(index)

    def offset(self, member: int) -> int:
        return sum(len(m.optimizer.param_groups) for m in self.members[:member])

    # ------------------------------------------------------------------ as an optimizer

    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        if closure is not None:
            raise RuntimeError("a JoinedOptimizer steps its members, without a closure")
        for member in self.members:
            member.optimizer.step()
        return None

    def zero_grad(self, set_to_none: bool = True) -> None:
        for member in self.members:
            member.optimizer.zero_grad(set_to_none=set_to_none)

    def register_step_post_hook(self, hook: Callable[..., None]) -> Any:
        """The hook runs after each member's step (the engine counts steps with it)."""
        return _Handles([m.optimizer.register_step_post_hook(hook) for m in self.members])

    def register_step_pre_hook(self, hook: Callable[..., Any]) -> Any:
        return _Handles([m.optimizer.register_step_pre_hook(hook) for m in self.members])

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        raise RuntimeError("add a param group to one of the joined optimizers, not to all")

    def state_dict(self) -> dict[str, Any]:
        return {"members": {m.name: m.optimizer.state_dict() for m in self.members}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved = state_dict.get("members")
        names = [m.name for m in self.members]
        if not isinstance(saved, dict) or sorted(saved) != sorted(names):
            raise ValueError(
                f"this state dict is not of optimizers {', '.join(names)} "
                f"(it holds {', '.join(map(str, saved or {})) or 'none'})"
            )
        for m in self.members:
            m.optimizer.load_state_dict(saved[m.name])
        self.refresh()


class JoinedScheduler:
    """The members' lr schedulers, for what reads the run's scheduler: its state in a
    checkpoint, where it is, the lrs its next steps set. The framework steps them."""

    def __init__(self, optimizer: JoinedOptimizer) -> None:
        self.optimizer = optimizer
        self.members = tuple(m.scheduler for m in optimizer.members)

    @classmethod
    def of(cls, optimizer: JoinedOptimizer) -> JoinedScheduler | None:
        """None if no member has a scheduler; the class name says which have
        (``StepLR+none``)."""
        scheds = [m.scheduler for m in optimizer.members]
        if all(s is None for s in scheds):
            return None
        name = "+".join(type(s).__name__ if s is not None else "none" for s in scheds)
        joined: JoinedScheduler = type(name, (cls,), {})(optimizer)
        return joined

    @property
    def last_epoch(self) -> int:
        return next(int(s.last_epoch) for s in self.members if s is not None)

    def step(self) -> None:
        raise RuntimeError("the joined optimizers' schedulers are stepped by the framework")

    def state_dict(self) -> dict[str, Any]:
        return {
            "members": {
                m.name: s.state_dict() if s is not None else None
                for m, s in zip(self.optimizer.members, self.members, strict=True)
            }
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved = state_dict.get("members") or {}
        for m, s in zip(self.optimizer.members, self.members, strict=True):
            if s is not None and saved.get(m.name) is not None:
                s.load_state_dict(saved[m.name])


@dataclass
class JoinedOptimization(ops.Optimization):
    """An Optimization over a JoinedOptimizer: each command goes to the member(s)."""

    parts: list[ops.Optimization] | None = None  # one per member, each over its optimizer

    @classmethod
    def of_joined(
        cls, model: nn.Module, optimizer: JoinedOptimizer, scheduler: Any
    ) -> JoinedOptimization:
        if scheduler is not None and getattr(scheduler, "optimizer", None) is not optimizer:
            raise ValueError("the scheduler of a JoinedOptimizer is its JoinedScheduler")
        parts = [
            ops.Optimization.of(model, m.optimizer, m.scheduler, in_place=True)
            for m in optimizer.members
        ]
        n = len(optimizer.param_groups)
        return cls(model, optimizer, scheduler, list(range(n)), [None] * n, True, parts)

    @property
    def joined(self) -> JoinedOptimizer:
        assert isinstance(self.optimizer, JoinedOptimizer)
        return self.optimizer

    @property
    def members(self) -> list[ops.Optimization]:
        assert self.parts is not None
        return self.parts

    def sync_groups(self) -> list[str]:
        """Groups the training code added to a member: named after it, joined in."""
        counts = [len(part.group_origin) for part in self.members]
        if [len(part.optimizer.param_groups) for part in self.members] == counts:
            return []
        for member, part in zip(self.joined.members, self.members, strict=True):
            name_groups(self.model, member.name, part.optimizer, only_new=True)
        added = [name for part in self.members for name in part.sync_groups()]
        self.adopt_parts()
        G.ensure_names(self.joined, self.model)
        return added

    def operation(self, kind: type[C.Command]) -> ops.Op:
        return JOINED_OPS[kind]

    def scheduler_view(self, interval: str) -> SchedulerView | None:
        if self.scheduler is None:
            return None
        next_lrs: list[float | None] = []
        for part in self.members:
            n = len(part.optimizer.param_groups)
            ahead = G.next_lrs(part.scheduler, part.optimizer) if part.scheduler else (None,) * n
            next_lrs += ahead
        return SchedulerView(
            cls=type(self.scheduler).__name__,
            step=int(self.scheduler.last_epoch),
            next_lrs=tuple(next_lrs),
            interval=interval,
            chain=tuple(
                type(s).__name__ for part in self.members for s in G.scheduler_chain(part.scheduler)
            ),
        )

    def by_member(self, indices: Sequence[int]) -> dict[int, list[int]]:
        """Joined group indices, as member -> its own group indices."""
        out: dict[int, list[int]] = {}
        for i in indices:
            k, local = self.joined.locate(i)
            out.setdefault(k, []).append(local)
        return out

    def adopt_parts(self) -> None:
        """The members changed (a split): the joined groups and bookkeeping follow."""
        self.joined.refresh()
        self.group_origin = [
            self.joined.offset(k) + origin
            for k, part in enumerate(self.members)
            for origin in part.group_origin
        ]
        self.state_reset = [reset for part in self.members for reset in part.state_reset]


# ----------------------------------------------------------------------------- operations


def _routed(o: ops.Optimization) -> JoinedOptimization:
    assert isinstance(o, JoinedOptimization)
    return o


def _lr_change(o: JoinedOptimization, target: str, value: float, op: str) -> ops.OpResult:
    groups = o.joined.param_groups
    indices = G.resolve_target(target, o.model, o.joined)
    before = {i: float(groups[i]["lr"]) for i in indices}
    new = {
        i: value if op == "=" else old * value if op == "*" else old / value
        for i, old in before.items()
    }
    commits = []
    for k, locals_ in o.by_member(indices).items():
        part, base = o.members[k], o.joined.offset(k)
        commits.append(
            G.plan_lrs(part.optimizer, part.scheduler, {j: new[base + j] for j in locals_})
        )
    for commit in commits:  # every member checked: now write
        commit()
    changes = ", ".join(f"{groups[i]['name']} {before[i]:.3g}->{new[i]:.3g}" for i in indices)
    return ops.OpResult(f"lr {changes} (in place; momentum/Adam state kept)")


def lr(cmd: C.Lr, optimization: ops.Optimization, step: int) -> ops.OpResult:
    o = _routed(optimization)
    return _lr_change(o, cmd.target, cmd.value, cmd.op)


def decay(cmd: C.Decay, optimization: ops.Optimization, step: int) -> ops.OpResult:
    o = _routed(optimization)
    return _lr_change(o, cmd.target, cmd.factor, "*")


def set_hparams(cmd: C.Set, optimization: ops.Optimization, step: int) -> ops.OpResult:
    o = _routed(optimization)
    indices = G.resolve_target(cmd.target, o.model, o.joined)
    commits = [
        G.plan_hparams(o.members[k].optimizer, o.members[k].scheduler, locals_, cmd.items)
        for k, locals_ in o.by_member(indices).items()
    ]
    for commit in commits:
        commit()
    names = ", ".join(str(o.joined.param_groups[i]["name"]) for i in indices)
    return ops.OpResult(f"set {C._items_text(cmd.items)} on {names} (in place; state kept)")


def split(cmd: C.Split, optimization: ops.Optimization, step: int) -> ops.OpResult:
    """Within the one member that holds the modules' parameters."""
    o = _routed(optimization)
    chosen = {id(p) for path in cmd.modules for p in G.module_params(o.model, path)}
    holders = [
        k
        for k, part in enumerate(o.members)
        if any(id(p) in chosen for g in part.optimizer.param_groups for p in g["params"])
    ]
    joined = o.joined.members
    if len(holders) > 1:
        which = " and ".join(joined[k].name for k in holders)
        raise CommandError(
            f"split: the parameters of {' '.join(cmd.modules)} are in optimizers {which}; "
            "a group is one optimizer's, so split each one's modules on their own"
        )
    others = [
        str(g.get("name"))
        for k, part in enumerate(o.members)
        if k not in holders
        for g in part.optimizer.param_groups
    ]
    taken = [n for n in others if n == cmd.group or n.startswith(f"{cmd.group}.")]
    if taken:
        raise CommandError(f"a group named {taken[0]!r} already exists")
    k = holders[0] if holders else 0
    result = ops.split(cmd, o.members[k], step)
    o.adopt_parts()
    return ops.OpResult(f"{result.message} (in optimizer {joined[k].name})", True)


def rebuild(cmd: C.Rebuild, optimization: ops.Optimization, step: int) -> ops.OpResult:
    o = _routed(optimization)
    names = ", ".join(m.name for m in o.joined.members)
    raise CommandError(
        f"rebuild makes the optimizer anew, and this run has {len(o.members)} ({names}) that "
        "rebuild cannot name one of; lr, decay, set and split work on any of their groups"
    )


JOINED_OPS: dict[type[C.Command], ops.Op] = {
    C.Lr: lr,
    C.Decay: decay,
    C.Set: set_hparams,
    C.Split: split,
    C.Rebuild: rebuild,
}
assert JOINED_OPS.keys() == ops.OPS.keys(), "every optimizer command is routed here too"
