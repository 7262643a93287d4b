"""The optimizer operations: ``lr``, ``decay``, ``set``, ``split``, ``rebuild``.

Each is a small function over an :class:`Optimization` (the optimizer, the
scheduler, the model and the group bookkeeping) that either changes it and
returns an :class:`OpResult`, or raises a CommandError having changed nothing.
:data:`OPS` maps each command type to its function; :func:`apply` is the one
entry point, and arms the undo: if the first ``optimizer.step()`` after
accepted commands fails before touching any parameter or state tensor,
:func:`guarded_step` puts the optimizer back as it was and takes that step.
A new operation (clip, an explicit undo...) is a function and one entry in OPS.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from tuiconsole.engine import commands as C
from tuiconsole.engine import groups as G
from tuiconsole.engine.faults import one_line
from tuiconsole.engine.snapshot import SchedulerView


@dataclass
class Optimization:
    """What the operations change, as plain values; the trainer adopts what they leave.

    ``group_origin``: for each group, the index of the script's group it descends
    from (split copies its source's scheduler entries); a checkpoint needs it to
    rebuild per-group scheduler functions such as LambdaLR's lr_lambdas.
    ``state_reset``: for each group, the step its optimizer state was last dropped
    (rebuild), or None.
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    group_origin: list[int]
    state_reset: list[int | None]
    # rebuild turns the optimizer object itself into the new one (G.become): for a
    # loop that is not ours, whose code (and scheduler, and framework) hold it.
    in_place: bool = False

    @classmethod
    def of(
        cls,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: Any,
        *,
        in_place: bool = False,
    ) -> Optimization:
        """The script's own optimizer: each group its own origin, no state reset yet.

        Several optimizers joined into one (engine/joined.py) get a JoinedOptimization.
        """
        from tuiconsole.engine import joined  # it builds on this module

        if isinstance(optimizer, joined.JoinedOptimizer):
            return joined.JoinedOptimization.of_joined(model, optimizer, scheduler)
        n = len(optimizer.param_groups)
        return cls(model, optimizer, scheduler, list(range(n)), [None] * n, in_place)

    def sync_groups(self) -> list[str]:
        """Groups the training code added (``optimizer.add_param_group``, as Lightning's
        BaseFinetuning does mid-fit): named, and given their own bookkeeping (their own
        origin, no state reset). Returns their names; [] (at the cost of a len()) when
        none were added."""
        groups = self.optimizer.param_groups
        n = len(self.group_origin)
        if len(groups) <= n:
            return []
        G.ensure_names(self.optimizer, self.model)
        self.group_origin += list(range(n, len(groups)))
        self.state_reset += [None] * (len(groups) - n)
        return [str(g["name"]) for g in groups[n:]]

    def operation(self, kind: type[C.Command]) -> Op:
        """The function that applies an optimizer command of this kind here."""
        return OPS[kind]

    def scheduler_view(self, interval: str) -> SchedulerView | None:
        """The scheduler as the console shows it (None without one)."""
        return G.scheduler_view(self.scheduler, self.optimizer, interval)


@dataclass(frozen=True)
class OpResult:
    message: str
    structure_changed: bool = False  # groups added/removed/replaced: views must be rebuilt


# ----------------------------------------------------------------------------- operations


def _lr_change(o: Optimization, target: str, value: float, op: str) -> OpResult:
    opt = o.optimizer
    indices = G.resolve_target(target, o.model, opt)
    before = {i: float(opt.param_groups[i]["lr"]) for i in indices}
    new = {
        i: value if op == "=" else old * value if op == "*" else old / value
        for i, old in before.items()
    }
    G.set_lrs(opt, o.scheduler, new)
    changes = ", ".join(
        f"{opt.param_groups[i]['name']} {before[i]:.3g}->{new[i]:.3g}" for i in indices
    )
    return OpResult(f"lr {changes} (in place; momentum/Adam state kept)")


def lr(cmd: C.Lr, o: Optimization, step: int) -> OpResult:
    """Set (``=``), multiply or divide the lr of the target's groups, in place."""
    return _lr_change(o, cmd.target, cmd.value, cmd.op)


def decay(cmd: C.Decay, o: Optimization, step: int) -> OpResult:
    """Multiply the lr of the target's groups, in place."""
    return _lr_change(o, cmd.target, cmd.factor, "*")


def set_hparams(cmd: C.Set, o: Optimization, step: int) -> OpResult:
    """Any hyper-parameter of the target's groups, in place."""
    opt = o.optimizer
    indices = G.resolve_target(cmd.target, o.model, opt)
    G.set_hparams(opt, o.scheduler, indices, cmd.items)
    names = ", ".join(str(opt.param_groups[i]["name"]) for i in indices)
    return OpResult(f"set {C._items_text(cmd.items)} on {names} (in place; state kept)")


def split(cmd: C.Split, o: Optimization, step: int) -> OpResult:
    """Move modules' parameters into new group(s), live: their state stays attached."""
    opt = o.optimizer
    plan = G.plan_split(o.model, opt, cmd.group, cmd.modules, cmd.items, o.scheduler)
    G.apply_split(opt, o.scheduler, plan)
    o.group_origin = [o.group_origin[old] for old, _ in plan.origin]
    o.state_reset = [o.state_reset[old] for old, _ in plan.origin]
    made = opt.param_groups[len(opt.param_groups) - plan.n_new :]
    if len(made) == 1:
        g = made[0]
        into = f"group {cmd.group!r} ({len(g['params'])} tensors, lr {float(g['lr']):.3g})"
    else:
        parts = ", ".join(
            f"{g['name']!r} ({len(g['params'])} tensors from {src!r})"
            for g, src in zip(made, plan.source_names, strict=True)
        )
        into = (
            f"{len(made)} groups, one per source group so each parameter keeps its "
            f"hyper-parameters: {parts}"
        )
    return OpResult(f"split {' '.join(cmd.modules)} into {into}; momentum/Adam state kept", True)


def rebuild(cmd: C.Rebuild, o: Optimization, step: int) -> OpResult:
    """A fresh optimizer (same or another class) over the current groups; state dropped."""
    opt, sched = o.optimizer, o.scheduler
    for key, value in cmd.items:
        G.check_not_cycled(sched, key, value, opt.param_groups[0].get(key))
    old_lrs = [float(g["lr"]) for g in opt.param_groups]
    G.check_rebuild_scheduler(sched, G.optimizer_class(cmd.cls, opt))
    rebuilt = G.build_optimizer(opt, cmd.cls, cmd.items, o.model)
    new_opt = rebuilt.optimizer
    had_state = len(opt.state)
    if o.in_place:
        G.check_become(opt, new_opt)  # may refuse: nothing changed yet
    G.rescale_after_rebuild(new_opt, sched, old_lrs)  # may refuse: nothing attached yet
    if o.in_place:
        new_opt = G.become(opt, new_opt)  # the same object, now the new optimizer
    G.reattach_scheduler(sched, new_opt)
    o.optimizer = new_opt
    o.state_reset = [step] * len(new_opt.param_groups)
    note = rebuilt.note()
    return OpResult(
        f"rebuilt optimizer as {type(new_opt).__name__} with "
        f"{len(new_opt.param_groups)} group(s); momentum/Adam state of "
        f"{had_state} parameter(s) dropped" + (f"; {note}" if note else ""),
        True,
    )


Op = Callable[[Any, Optimization, int], OpResult]

# Each optimizer command type and the function that applies it.
OPS: dict[type[C.Command], Op] = {
    C.Lr: lr,
    C.Decay: decay,
    C.Set: set_hparams,
    C.Split: split,
    C.Rebuild: rebuild,
}


def is_op(cmd: C.Command) -> bool:
    return type(cmd) in OPS


# ----------------------------------------------------------------------------- undo


@dataclass
class Undo:
    """What the optimizer was before the commands since the last good step.

    Armed by an accepted optimizer command; used if the next ``optimizer.step()``
    raises before it changed any parameter or state tensor (their version
    counters say so): the previous optimizer, its groups and the scheduler's view
    of them are put back and that step is taken with them.
    """

    optimizer: torch.optim.Optimizer
    groups: list[dict[str, Any]]
    sched_lists: list[tuple[Any, str, Any]]  # (scheduler, attribute, its value)
    had_state: set[int]
    group_origin: list[int]
    state_reset: list[int | None]
    commands: list[str] = field(default_factory=list)
    restored: bool = False  # put back (the groups changed shape again)

    @classmethod
    def capture(cls, o: Optimization) -> Undo:
        opt = o.optimizer
        lists: list[tuple[Any, str, Any]] = []
        for sched in G.scheduler_chain(o.scheduler):
            lists.append((sched, "optimizer", sched.optimizer))
            for attr in G.SCHED_GROUP_LISTS:
                value = getattr(sched, attr, None)
                if isinstance(value, list):
                    lists.append((sched, attr, list(value)))
        return cls(
            optimizer=opt,
            groups=[
                {k: (v.detach().clone() if torch.is_tensor(v) else v) for k, v in g.items()}
                | {"params": list(g["params"])}
                for g in opt.param_groups
            ],
            sched_lists=lists,
            had_state={id(p) for p in opt.state},
            group_origin=list(o.group_origin),
            state_reset=list(o.state_reset),
        )

    def restore(self, o: Optimization) -> None:
        opt = self.optimizer
        opt.param_groups[:] = self.groups
        for p in [p for p in opt.state if id(p) not in self.had_state]:
            del opt.state[p]  # state the failed step created
        for sched, attr, value in self.sched_lists:
            setattr(sched, attr, value)
        o.optimizer = opt
        o.group_origin = self.group_origin
        o.state_reset = self.state_reset
        self.restored = True


def apply(cmd: C.Command, o: Optimization, step: int, undo: Undo | None) -> tuple[OpResult, Undo]:
    """Apply an optimizer command; returns its result and the undo that now covers it
    (``undo`` itself when one was armed by an earlier command since the last step).

    A refused command raises (CommandError, or anything the optimizer raised) and
    changed nothing: the caller keeps its ``undo`` as it was.
    """
    armed = undo if undo is not None else Undo.capture(o)
    result = o.operation(type(cmd))(cmd, o, step)
    armed.commands.append(cmd.text)
    return result, armed


def guarded_step(
    o: Optimization,
    undo: Undo,
    device: torch.device,
    take: Callable[[torch.optim.Optimizer], object] | None = None,
) -> str | None:
    """The first optimizer.step() after command(s): None if it worked. If it failed
    before changing any parameter or state tensor, the command(s) are undone, the
    step is taken as it would have been, and the error is returned; if it changed
    something, its exception propagates (an ordinary failure).

    ``take(optimizer)`` takes the step (a GradScaler's ``step``; engine/step.py);
    default ``optimizer.step()``."""
    take = take or _step
    opt = o.optimizer
    watched = [p for g in opt.param_groups for p in g["params"]]
    watched += [v for st in opt.state.values() for v in st.values() if torch.is_tensor(v)]
    versions = [t._version for t in watched]
    try:
        take(opt)
        return None
    except Exception as exc:
        if [t._version for t in watched] != versions:
            raise
        error = f"{type(exc).__name__}: {one_line(str(exc), 300)}"
    del watched
    if opt is not undo.optimizer:
        opt.state.clear()  # a rebuilt optimizer's partial state: free it before re-stepping
        if device.type == "cuda":
            torch.cuda.empty_cache()
    del opt
    undo.restore(o)
    take(o.optimizer)  # the step the run would have taken without the command(s)
    return error


def _step(optimizer: torch.optim.Optimizer) -> None:
    optimizer.step()


def undone_text(undo: Undo, error: str) -> str:
    return (
        f"undone `{'; '.join(undo.commands)}`: the next optimizer.step() failed before "
        f"changing any parameter ({error}); the optimizer is as it was before, training goes on"
    )
