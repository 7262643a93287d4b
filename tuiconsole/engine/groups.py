"""Param groups as a user sees them: names, module -> group map, and the
optimizer surgery behind ``lr``, ``decay``, ``set``, ``split`` and ``rebuild``.

Every operation validates everything first and mutates last, so an error
leaves the optimizer and scheduler exactly as they were.

The scheduler trap: many schedulers compute the next lr from ``base_lrs`` (or
``initial_lr``/``max_lr`` in the group), not from the current lr, so a manual
edit silently reverts at the next ``scheduler.step()``. Every lr change here
scales those values by the same factor as the edit, so the schedule continues
*from* the user's value.
"""

from __future__ import annotations

import copy
import functools
import inspect
import math
import warnings
import weakref
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from tuiconsole.engine import optclass
from tuiconsole.engine.commands import Value, jsonable
from tuiconsole.engine.snapshot import GroupView, ModuleNode, SchedulerView
from tuiconsole.errors import CommandError

# Group keys that hold an lr the scheduler derives the schedule from.
SCHED_LR_KEYS = ("initial_lr", "max_lr", "min_lr")
# Per-group lists that schedulers keep, and whether their values are lrs.
SCHED_GROUP_LISTS = {
    "base_lrs": True,
    "max_lrs": True,
    "_last_lr": True,
    "min_lrs": False,
    "lr_lambdas": False,
    "base_momentums": False,
    "max_momentums": False,
}
# Keys torch.optim leaves None (it picks the implementation) that take true/false.
TRISTATE_KEYS = ("foreach", "fused")
# Shown apart from the other hyper-parameters (the name and lr have their own fields).
HIDDEN_KEYS = frozenset({"params", "name", "lr"})
NON_NEGATIVE_KEYS = ("momentum", "dampening", "weight_decay", "eps", "alpha", "lr_decay")


def param_owners(model: nn.Module) -> dict[int, str]:
    """id(param) -> dotted name of its first owner ("classifier.0.weight")."""
    return {id(p): name for name, p in model.named_parameters()}


def _module_of(param_name: str) -> str:
    return param_name.rpartition(".")[0]


def common_path(paths: Iterable[str]) -> str:
    """Longest common dotted prefix ("features.0", "features.3" -> "features")."""
    split = [p.split(".") if p else [] for p in paths]
    if not split:
        return ""
    prefix = split[0]
    for parts in split[1:]:
        n = 0
        while n < min(len(prefix), len(parts)) and prefix[n] == parts[n]:
            n += 1
        prefix = prefix[:n]
    return ".".join(prefix)


def default_group_name(
    group: dict[str, Any], index: int, owners: dict[int, str], others: Sequence[dict[str, Any]] = ()
) -> str:
    """The longest common module path of the group's parameters; if that is the whole
    model, the hyper-parameter that sets the group apart (``weight_decay:0``); else
    ``group<i>``."""
    paths = [_module_of(owners[id(p)]) for p in group["params"] if id(p) in owners]
    return common_path(paths) or _distinct_hparam(group, others) or f"group{index}"


def _distinct_hparam(group: dict[str, Any], others: Sequence[dict[str, Any]]) -> str | None:
    """``KEY:VALUE`` for the first hyper-parameter whose value no other group shares.

    The lr is left out: it is what a user changes, so a name built from it would
    soon lie.
    """
    rest = [g for g in others if g is not group]
    if not rest:
        return None
    for key, value in group.items():
        if key in HIDDEN_KEYS or key in SCHED_LR_KEYS or not _nameable(value):
            continue
        if all(key in g and g[key] != value for g in rest):
            return f"{key}:{_short(value)}"
    return None


def _nameable(value: Any) -> bool:
    if isinstance(value, tuple | list):
        return all(_nameable(v) for v in value)
    return isinstance(value, bool | int | float)


def _short(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple | list):
        return ",".join(_short(v) for v in value)
    return f"{value:g}"


def ensure_names(optimizer: torch.optim.Optimizer, model: nn.Module) -> None:
    """Give every group a unique ``'name'`` key (kept in the optimizer's state_dict).

    A name the script set wins; otherwise the longest common module path of the
    group's parameters; otherwise ``group<i>``. Duplicates get ``-2``, ``-3``...
    """
    owners = param_owners(model)
    used: set[str] = set()
    groups = optimizer.param_groups
    for i, group in enumerate(groups):
        base = str(group.get("name") or default_group_name(group, i, owners, groups))
        name, n = base, 2
        while name in used:
            name, n = f"{base}-{n}", n + 1
        group["name"] = name
        used.add(name)


def group_names(optimizer: torch.optim.Optimizer) -> list[str]:
    return [str(g.get("name", f"group{i}")) for i, g in enumerate(optimizer.param_groups)]


# --------------------------------------------------------------------------- views


def _plain(v: Any) -> Any:
    """A group value as a plain, immutable Python value (tensors -> floats)."""
    if isinstance(v, torch.Tensor):
        return float(v) if v.numel() == 1 else tuple(v.tolist())
    if isinstance(v, tuple | list):
        return tuple(_plain(x) for x in v)
    if v is None or isinstance(v, bool | int | float | str):
        return v
    return repr(v)  # a callable or object a custom class keeps in its groups


def group_hparams(group: dict[str, Any]) -> tuple[tuple[str, Any], ...]:
    """Every key of the group but params, name and lr, in the group's order: the
    whole optimizer state a user can set (eps, nesterov, foreach, initial_lr...)."""
    return tuple((k, _plain(v)) for k, v in group.items() if k not in HIDDEN_KEYS)


def state_sizes(optimizer: torch.optim.Optimizer) -> list[tuple[int, int]]:
    """(state tensors, state bytes) the optimizer holds for each group's parameters."""
    out = []
    state = optimizer.state
    for g in optimizer.param_groups:
        n = size = 0
        for p in g["params"]:
            for v in state.get(p, {}).values():
                if isinstance(v, torch.Tensor):
                    n += 1
                    size += v.numel() * v.element_size()
        out.append((n, size))
    return out


def group_views(
    optimizer: torch.optim.Optimizer,
    state_reset: Sequence[int | None] = (),
    sizes: Sequence[tuple[int, int]] = (),
) -> tuple[GroupView, ...]:
    views = []
    for i, g in enumerate(optimizer.param_groups):
        n_state, state_bytes = sizes[i] if i < len(sizes) else (0, 0)
        views.append(
            GroupView(
                index=i,
                name=str(g.get("name", f"group{i}")),
                lr=float(g["lr"]),
                hparams=group_hparams(g),
                n_tensors=len(g["params"]),
                n_params=sum(p.numel() for p in g["params"]),
                state_reset_step=state_reset[i] if i < len(state_reset) else None,
                state_tensors=n_state,
                state_bytes=state_bytes,
            )
        )
    return tuple(views)


def group_record(group: dict[str, Any]) -> dict[str, Any]:
    """One group as JSON: every key of the real group, ``params`` as its tensor count."""
    return (
        {"name": group.get("name"), "lr": jsonable(group["lr"])}
        | {k: jsonable(_plain(v)) for k, v in group.items() if k not in HIDDEN_KEYS}
        | {"n_tensors": len(group["params"])}
    )


def groups_record(optimizer: torch.optim.Optimizer) -> list[dict[str, Any]]:
    """Groups as JSON for the journal: every key the real param_groups hold."""
    return [group_record(g) for g in optimizer.param_groups]


def module_table(model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[ModuleNode, ...]:
    """The layer tree: each module, its own parameters' groups, frozen and tied params."""
    group_of = {id(p): str(g.get("name")) for g in optimizer.param_groups for p in g["params"]}
    first_owner: dict[int, str] = {}
    own: dict[str, tuple[int, tuple[str, ...], tuple[str, ...], tuple[tuple[str, str], ...]]] = {}
    modules = list(model.named_modules())
    for path, mod in modules:
        n, groups, frozen, shared = 0, [], [], []
        for pname, p in mod.named_parameters(recurse=False):
            if id(p) in first_owner:
                shared.append((pname, first_owner[id(p)]))
                continue
            first_owner[id(p)] = path
            if not p.requires_grad:
                frozen.append(pname)
                continue
            n += p.numel()
            g = group_of.get(id(p))
            if g is not None and g not in groups:
                groups.append(g)
        own[path] = (n, tuple(groups), tuple(frozen), tuple(shared))
    # Subtree totals bottom-up: named_modules is pre-order, so reverse it.
    totals: dict[str, tuple[int, tuple[str, ...]]] = {}
    children: dict[str, list[str]] = {path: [] for path, _ in modules}
    for path, _ in modules:
        if path:
            parent = path.rpartition(".")[0]
            # A child of a shared (deduplicated) module path may skip levels.
            while parent not in children and parent:
                parent = parent.rpartition(".")[0]
            children[parent].append(path)
    for path, _ in reversed(modules):
        n, own_groups, _, _ = own[path]
        sub_groups = list(own_groups)
        for c in children[path]:
            cn, cg = totals[c]
            n += cn
            sub_groups += [g for g in cg if g not in sub_groups]
        totals[path] = (n, tuple(sub_groups))
    return tuple(
        ModuleNode(
            path=path,
            cls=type(mod).__name__,
            n_params=own[path][0],
            n_params_total=totals[path][0],
            groups=own[path][1],
            subtree_groups=totals[path][1],
            frozen=own[path][2],
            shared=own[path][3],
            children=tuple(children[path]),
        )
        for path, mod in modules
    )


# --------------------------------------------------------------------------- targets


def module_params(model: nn.Module, path: str) -> list[nn.Parameter]:
    """The parameters under PATH: a module path (``features.0``) or one parameter's path
    (``scale``, ``extra.0`` in a ParameterList, ``head.weight``)."""
    try:
        mod = model.get_submodule(path) if path else model
    except AttributeError:
        pass
    else:
        return list(mod.parameters())
    try:
        return [model.get_parameter(path)]
    except AttributeError:
        raise CommandError(f"no module, parameter or group named {path!r}") from None


def resolve_target(target: str, model: nn.Module, optimizer: torch.optim.Optimizer) -> list[int]:
    """Group indices for TARGET: ``all``, a group name, or a module path."""
    groups = optimizer.param_groups
    if target == "all":
        return list(range(len(groups)))
    names = group_names(optimizer)
    if target in names:
        return [names.index(target)]
    ids = {id(p) for p in module_params(model, target)}
    hit = [i for i, g in enumerate(groups) if any(id(p) in ids for p in g["params"])]
    if not hit:
        raise CommandError(f"module {target!r} has no parameters in any group (frozen?)")
    return hit


# --------------------------------------------------------------------------- schedulers


def scheduler_chain(scheduler: Any) -> list[Any]:
    """The scheduler and any it wraps (SequentialLR, ChainedScheduler)."""
    if scheduler is None:
        return []
    out = [scheduler]
    for child in getattr(scheduler, "_schedulers", []) or []:
        out += scheduler_chain(child)
    return out


# A planned write: (container, key, value); a group dict or a scheduler's list.
_Write = tuple[Any, Any, Any]


def _lr_writes(
    optimizer: torch.optim.Optimizer, scheduler: Any, index: int, new_lr: float
) -> list[_Write]:
    """The writes that set one group's lr and keep the scheduler's idea of it in
    proportion, each value checked (finite, > 0) before any is made.

    A derived value moves by ``new_lr * (value / old)``: the ratio of two lrs of one
    schedule is moderate, where ``new_lr / old`` overflows after ``lr X 1e-320``.
    """
    group = optimizer.param_groups[index]
    name = str(group.get("name", f"group{index}"))
    old = float(group["lr"])

    def moved(value: float, what: str) -> float:
        v = new_lr * (value / old) if old > 0 else new_lr
        return check_derived(v, what, name)

    writes: list[_Write] = []
    for key in SCHED_LR_KEYS:
        if key in group and isinstance(group[key], int | float):
            writes.append((group, key, moved(group[key], key)))
    for sched in scheduler_chain(scheduler):
        for attr, is_lr in SCHED_GROUP_LISTS.items():
            values = getattr(sched, attr, None)
            if (
                is_lr
                and attr != "_last_lr"
                and isinstance(values, list)
                and index < len(values)
                and isinstance(values[index], int | float | torch.Tensor)
            ):
                writes.append((values, index, moved(float(values[index]), attr)))
        last = getattr(sched, "_last_lr", None)
        if isinstance(last, list) and index < len(last):
            writes.append((last, index, new_lr))
    return writes


def _apply_writes(writes: Iterable[_Write]) -> None:
    for container, key, value in writes:
        container[key] = value


def _set_group_lr(group: dict[str, Any], new_lr: float) -> None:
    if isinstance(group["lr"], torch.Tensor):
        group["lr"].fill_(new_lr)
    else:
        group["lr"] = new_lr


def _scale_group_lr(
    optimizer: torch.optim.Optimizer, scheduler: Any, index: int, new_lr: float
) -> None:
    """Set one group's lr and keep the scheduler's idea of it in proportion."""
    _apply_writes(_lr_writes(optimizer, scheduler, index, new_lr))
    _set_group_lr(optimizer.param_groups[index], new_lr)


def check_lr(value: float, group_name: str) -> float:
    if not math.isfinite(value) or value <= 0:
        raise CommandError(f"lr for {group_name!r} would be {value!r}; it must be > 0 and finite")
    return value


def check_derived(value: float, what: str, group_name: str) -> float:
    """A value the scheduler derives the lr from (base_lrs, initial_lr, max_lr...)."""
    low_ok = what in ("min_lr", "min_lrs")  # a floor may be 0
    if not math.isfinite(value) or value < 0 or (value == 0 and not low_ok):
        raise CommandError(
            f"the scheduler's {what} for {group_name!r} would become {value!r}; "
            "choose an lr nearer the current one"
        )
    return value


def _probe_groups(optimizer: torch.optim.Optimizer, candidates: dict[int, dict[str, Any]]) -> None:
    """Refuse values the optimizer class would reject at its next step (see optclass.probe)."""
    optclass.probe_all(
        type(optimizer),
        [
            (
                cand,
                str(optimizer.param_groups[i].get("name", f"group{i}")),
                optimizer.param_groups[i],
            )
            for i, cand in candidates.items()
        ],
    )


def _plan_lrs(
    optimizer: torch.optim.Optimizer, scheduler: Any, new_lrs: dict[int, float]
) -> list[_Write]:
    names = group_names(optimizer)
    writes: list[_Write] = []
    for i, v in new_lrs.items():
        check_lr(v, names[i])
        optclass.check_lr_range(v, optimizer.param_groups[i]["params"], names[i])
        writes += _lr_writes(optimizer, scheduler, i, v)
    return writes


def _commit_lrs(
    optimizer: torch.optim.Optimizer, writes: list[_Write], new_lrs: dict[int, float]
) -> None:
    _apply_writes(writes)
    for i, v in new_lrs.items():
        _set_group_lr(optimizer.param_groups[i], v)


def plan_lrs(
    optimizer: torch.optim.Optimizer, scheduler: Any, new_lrs: dict[int, float]
) -> Callable[[], None]:
    """:func:`set_lrs` in two halves: everything is checked now (CommandError), and
    nothing is written until the returned function is called (engine/joined.py
    checks several optimizers before it writes to any)."""
    writes = _plan_lrs(optimizer, scheduler, new_lrs)
    _probe_groups(
        optimizer, {i: {**optimizer.param_groups[i], "lr": v} for i, v in new_lrs.items()}
    )
    return functools.partial(_commit_lrs, optimizer, writes, new_lrs)


def set_lrs(optimizer: torch.optim.Optimizer, scheduler: Any, new_lrs: dict[int, float]) -> None:
    """Set several groups' lrs: everything is checked before anything is written."""
    plan_lrs(optimizer, scheduler, new_lrs)()


# --------------------------------------------------------------------------- set


def momentum_cycler(scheduler: Any) -> str | None:
    """The class name of a scheduler that rewrites momentum/beta1 every step, if any."""
    for sched in scheduler_chain(scheduler):
        if getattr(sched, "cycle_momentum", False):
            return type(sched).__name__
    return None


def check_not_cycled(scheduler: Any, key: str, value: Value, current: Any) -> None:
    """Refuse a momentum/beta1 edit that a cycling scheduler would silently overwrite."""
    if key not in ("momentum", "betas"):
        return
    cycler = momentum_cycler(scheduler)
    if cycler is None:
        return
    beta2_only = (
        key == "betas"
        and isinstance(value, tuple)
        and isinstance(current, tuple | list)
        and value[:1] == tuple(current[:1])
    )
    if beta2_only:
        return  # the scheduler leaves beta2 alone
    hint = (
        "set base_momentum=/max_momentum= (the range it cycles in) instead"
        if cycler == "OneCycleLR"
        else "its momentum range is fixed when it is built"
    )
    raise CommandError(
        f"{cycler} cycles {'beta1' if key == 'betas' else 'momentum'} every step, so "
        f"{key}={value!r} would be overwritten at its next step; {hint}"
    )


def check_hparam(key: str, value: Value, current: Any, group_name: str) -> Any:
    """Validate KEY=VALUE against the group's current value; return the value to store."""
    if key in ("params", "name"):
        raise CommandError(f"{key!r} cannot be set; use split or rebuild")
    if current is None and key in TRISTATE_KEYS:  # None: torch picks; true/false: you do
        if not isinstance(value, bool):
            raise CommandError(f"{key} is true/false, got {value!r}")
        return value
    if current is None and key not in ("lr",):
        raise CommandError(f"group {group_name!r} has no hyper-parameter {key!r}")
    if isinstance(current, bool):
        if not isinstance(value, bool):
            raise CommandError(f"{key} is true/false, got {value!r}")
        return value
    if isinstance(current, tuple | list):
        if not isinstance(value, tuple) or len(value) != len(current):
            raise CommandError(f"{key} needs {len(current)} comma-separated numbers")
        if key == "betas" and not all(0 <= b < 1 for b in value):
            raise CommandError(f"betas must each be in [0, 1), got {value!r}")
        return tuple(value)
    if isinstance(value, bool | tuple) or not isinstance(current, int | float | torch.Tensor):
        raise CommandError(f"{key} must be a number, got {value!r}")
    if key in NON_NEGATIVE_KEYS and value < 0:
        raise CommandError(f"{key} must be >= 0, got {value!r}")
    return type(current)(value) if isinstance(current, int) and float(value).is_integer() else value


def set_hparams(
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    indices: list[int],
    items: Sequence[tuple[str, Value]],
) -> None:
    plan_hparams(optimizer, scheduler, indices, items)()


def plan_hparams(
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    indices: list[int],
    items: Sequence[tuple[str, Value]],
) -> Callable[[], None]:
    """:func:`set_hparams` in two halves, as :func:`plan_lrs`."""
    names = group_names(optimizer)
    plan: list[tuple[int, str, Any]] = []
    lrs: dict[int, float] = {}
    for i in indices:
        group = optimizer.param_groups[i]
        for key, value in items:
            if key == "lr":
                if not isinstance(value, float):
                    raise CommandError(f"lr must be a number, got {value!r}")
                lrs[i] = check_lr(value, names[i])
            else:
                check_not_cycled(scheduler, key, value, group.get(key))
                plan.append((i, key, check_hparam(key, value, group.get(key), names[i])))
    writes = _plan_lrs(optimizer, scheduler, lrs)
    candidates = {i: dict(optimizer.param_groups[i]) for i in indices}
    for i, v in lrs.items():
        candidates[i]["lr"] = v
    for i, key, value in plan:
        candidates[i][key] = value
    _probe_groups(optimizer, candidates)

    def commit() -> None:
        _commit_lrs(optimizer, writes, lrs)
        for i, key, value in plan:
            optimizer.param_groups[i][key] = value

    return commit


# --------------------------------------------------------------------------- split


@dataclass(frozen=True)
class SplitPlan:
    new_groups: list[dict[str, Any]]
    # For each new group index: (old index it came from, lr scale factor)
    origin: list[tuple[int, float]]
    # The groups the split made (last in new_groups) and the names of their sources.
    source_names: tuple[str, ...] = ()
    new_lr: float = 0.0  # lr= of the command, if any

    @property
    def n_new(self) -> int:
        return len(self.source_names)


def plan_split(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    name: str,
    modules: Sequence[str],
    items: Sequence[tuple[str, Value]],
    scheduler: Any = None,
) -> SplitPlan:
    names = group_names(optimizer)
    if name in names:
        raise CommandError(f"a group named {name!r} already exists")
    if name == "all" or not name or any(c.isspace() for c in name):
        raise CommandError(f"{name!r} cannot be a group name")
    chosen: dict[int, nn.Parameter] = {}
    for path in modules:
        params = module_params(model, path)
        if not params:
            raise CommandError(f"module {path!r} has no parameters")
        trainable = [p for p in params if p.requires_grad]
        if not trainable:
            raise CommandError(f"module {path!r} is frozen (requires_grad=False): nothing to split")
        chosen.update((id(p), p) for p in trainable)
    groups = optimizer.param_groups
    in_optimizer = [p for g in groups for p in g["params"] if id(p) in chosen]
    if not in_optimizer:
        raise CommandError(f"parameters of {' '.join(modules)} are in no optimizer group")
    moving = {id(p) for p in in_optimizer}
    for i, g in enumerate(groups):
        if {id(p) for p in g["params"]} == moving:
            raise CommandError(f"{' '.join(modules)} already is group {names[i]!r} on its own")

    # One new group per source group: each parameter keeps its own hyper-parameters
    # (a decay / no_decay grouping stays so), except those the command sets. Sources
    # that end up with the same values (and the same scheduler entries) share one.
    made: list[tuple[dict[str, Any], int, float, list[int]]] = []  # group, source, scale, all
    for source, g in enumerate(groups):
        params = [p for p in g["params"] if id(p) in chosen]
        if not params:
            continue
        cand, scale = _with_items({**g, "params": params, "name": name}, items, scheduler)
        twin = next(
            (m for m in made if _same_values(m[0], cand, m[1], source, (m[2], scale), scheduler)),
            None,
        )
        if twin is not None:
            twin[0]["params"] = twin[0]["params"] + params
            twin[3].append(source)
            continue
        if items:
            optclass.probe_all(type(optimizer), [(cand, name, g)])
        made.append((cand, source, scale, [source]))
    new_names = [name] + [f"{name}.{k}" for k in range(2, len(made) + 1)]
    taken = [n for n in new_names if n in names]
    if taken:
        raise CommandError(f"a group named {taken[0]!r} already exists")
    for (cand, *_), new_name in zip(made, new_names, strict=True):
        _refuse_path_clash(model, new_name, cand["params"])
    new_groups: list[dict[str, Any]] = []
    origin: list[tuple[int, float]] = []
    for i, g in enumerate(groups):
        rest = [p for p in g["params"] if id(p) not in chosen]
        if rest:
            new_groups.append({**g, "params": rest})
            origin.append((i, 1.0))
    sources: list[str] = []
    for (cand, source, scale, merged), new_name in zip(made, new_names, strict=True):
        cand["name"] = new_name
        new_groups.append(cand)
        origin.append((source, scale))
        sources.append("+".join(names[i] for i in merged))
    lr_item = next((float(v) for k, v in items if k == "lr" and isinstance(v, float)), 0.0)
    return SplitPlan(new_groups, origin, tuple(sources), lr_item)


def _refuse_path_clash(model: nn.Module, name: str, params: Sequence[torch.Tensor]) -> None:
    """A group name wins over a module path as a target: refuse one that would hide
    another module's or parameter's path (``blocks.2`` for part of ``blocks``)."""
    try:
        under = module_params(model, name)
    except CommandError:
        return
    if {id(p) for p in under if p.requires_grad} != {id(p) for p in params}:
        raise CommandError(
            f"{name!r} is also the path of another module or parameter; a group of that "
            "name would hide it from lr/set/decay: choose another NAME"
        )


def _same_values(
    a: dict[str, Any], b: dict[str, Any], ia: int, ib: int, scales: tuple[float, float], sched: Any
) -> bool:
    """Two candidate groups that may be one: equal values, equal scheduler entries
    (lr-valued ones compared after the split's lr scaling; the last lr is not state)."""
    if a.keys() != b.keys() or any(
        not _equal(a[k], b[k]) for k in a if k not in ("params", "name")
    ):
        return False
    for s in scheduler_chain(sched):
        for attr, is_lr in SCHED_GROUP_LISTS.items():
            values = getattr(s, attr, None)
            if attr == "_last_lr" or not isinstance(values, list) or max(ia, ib) >= len(values):
                continue
            x, y = values[ia], values[ib]
            if is_lr and isinstance(x, int | float) and isinstance(y, int | float):
                if not all(map(math.isfinite, scales)):
                    if scales[0] != scales[1]:
                        return False
                elif not math.isclose(x * scales[0], y * scales[1], rel_tol=1e-12):
                    return False
            elif not _equal(x, y):
                return False
    return True


def _equal(x: Any, y: Any) -> bool:
    if x is y:
        return True
    if isinstance(x, torch.Tensor) or isinstance(y, torch.Tensor):
        return isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor) and torch.equal(x, y)
    try:
        return bool(x == y) and type(x) is type(y)
    except Exception:  # a value whose == is not a bool
        return False


def _with_items(
    group: dict[str, Any], items: Sequence[tuple[str, Value]], scheduler: Any
) -> tuple[dict[str, Any], float]:
    """GROUP with the command's KEY=VALUE items validated and set; the lr scale factor."""
    name = str(group["name"])
    scale = 1.0
    for key, value in items:
        if key == "lr":
            if not isinstance(value, float):
                raise CommandError(f"lr must be a number, got {value!r}")
            check_lr(value, name)
            optclass.check_lr_range(value, group["params"], name)
            old = float(group["lr"])
            # from an lr of 0 (a warm-up's first step) the derived values are set
            scale = value / old if old > 0 else math.inf
            group["lr"] = value
            for k in SCHED_LR_KEYS:
                if isinstance(group.get(k), int | float):
                    moved = group[k] * scale if old > 0 else value
                    group[k] = check_derived(moved, k, name)
        else:
            check_not_cycled(scheduler, key, value, group.get(key))
            group[key] = check_hparam(key, value, group.get(key), name)
    return group, scale


def apply_split(optimizer: torch.optim.Optimizer, scheduler: Any, plan: SplitPlan) -> None:
    """Swap in the new group list. State is keyed by parameter, so it stays attached."""
    optimizer.param_groups[:] = plan.new_groups
    for sched in scheduler_chain(scheduler):
        for attr, is_lr in SCHED_GROUP_LISTS.items():
            values = getattr(sched, attr, None)
            if not isinstance(values, list):
                continue
            remapped = []
            for old, scale in plan.origin:
                if old >= len(values):
                    break
                v = values[old]
                if is_lr and isinstance(v, int | float):
                    # scale inf: the split set the lr from 0 (see _with_items)
                    v = v * scale if math.isfinite(scale) else plan.new_lr
                remapped.append(v)
            else:
                setattr(sched, attr, remapped)


# --------------------------------------------------------------------------- rebuild


def optimizer_class(name: str | None, current: torch.optim.Optimizer) -> type:
    if name is None:
        return type(current)
    for attr in dir(torch.optim):
        obj = getattr(torch.optim, attr)
        if (
            attr.lower() == name.lower()
            and isinstance(obj, type)
            and issubclass(obj, torch.optim.Optimizer)
            and obj is not torch.optim.Optimizer
        ):
            return obj
    known = sorted(
        a
        for a in dir(torch.optim)
        if isinstance(getattr(torch.optim, a), type)
        and issubclass(getattr(torch.optim, a), torch.optim.Optimizer)
        and a != "Optimizer"
    )
    raise CommandError(f"unknown optimizer class {name!r} (torch.optim has {', '.join(known)})")


@dataclass(frozen=True)
class Rebuilt:
    optimizer: torch.optim.Optimizer
    dropped: tuple[str, ...]  # group keys the new class does not take
    defaulted: tuple[tuple[str, Any], ...]  # keys it takes that no group had: its defaults
    unfit: tuple[str, ...] = ()  # keys it takes, but as another kind of value (eps)

    def note(self) -> str:
        cls = type(self.optimizer).__name__
        parts = []
        if self.dropped:
            them = "them" if len(self.dropped) > 1 else "it"
            parts.append(f"dropped {', '.join(self.dropped)} ({cls} does not take {them})")
        if self.unfit:
            parts.append(f"{', '.join(self.unfit)} not carried ({cls} takes another kind of value)")
        if self.defaulted:
            kv = ", ".join(f"{k}={_short_any(v)}" for k, v in self.defaulted)
            parts.append(f"{cls}'s defaults for {kv}")
        return "; ".join(parts)


def _short_any(v: Any) -> str:
    return _short(v) if _nameable(v) else repr(v)


def build_optimizer(
    current: torch.optim.Optimizer,
    cls_name: str | None,
    items: Sequence[tuple[str, Value]],
    model: nn.Module | None = None,
) -> Rebuilt:
    """A fresh optimizer over the current groups (the seed's method 1). State is dropped.

    Built from the target class's own constructor: a group key is carried only
    where that constructor takes it (so Adam -> AdamW does not keep Adam's
    ``decoupled_weight_decay=False``); keys it takes that no group has get its
    defaults. Every value is checked against what the class accepts, and the
    groups are probed with a step (see optclass.probe), before anything changes.
    """
    cls = optimizer_class(cls_name, current)
    same = cls is type(current)
    takes = optclass.constructor_params(cls)
    any_key = optclass.takes_any_key(cls)
    known = set(takes) | (set(current.defaults) if same else set())
    overrides: dict[str, Any] = {}
    for key, value in items:
        if key not in known and not any_key:
            raise CommandError(
                f"{cls.__name__} has no hyper-parameter {key!r} "
                f"(it takes {', '.join(sorted(k for k in takes if k != 'params'))})"
            )
        overrides[key] = _check_override(cls, current, key, value, takes.get(key))
    params = [p for g in current.param_groups for p in g["params"]]
    optclass.refuse_unfit(cls, model, params)
    if "lr" in overrides:
        optclass.check_lr_range(overrides["lr"], params, "all groups")
    specs = []
    for g in current.param_groups:
        keep = {k: v for k, v in g.items() if optclass.carries(current, cls, k, v)}
        keep.update(overrides)
        specs.append(keep)
    ctor = optclass.ctor_kwargs(cls, current.defaults) if same else {}
    ctor.update(optclass.ctor_kwargs(cls, overrides))
    if "lr" not in ctor and "lr" in takes and takes["lr"] is inspect.Parameter.empty:
        ctor["lr"] = current.defaults.get("lr", current.param_groups[0]["lr"])
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            new = cls(specs, **ctor)
    except Exception as exc:  # the class's own checks, whatever it raises
        raise CommandError(f"cannot build {cls.__name__}: {optclass.first_line(exc)}") from None
    optclass.probe_all(
        cls,
        [
            (g, str(g.get("name", f"group{i}")), old if same else None)
            for i, (g, old) in enumerate(zip(new.param_groups, current.param_groups, strict=True))
        ],
    )
    dropped, unfit, defaulted = optclass.carry_plan(current, cls)
    defaulted = [k for k in defaulted if k not in overrides]
    return Rebuilt(
        new,
        tuple(dropped),
        tuple((k, new.defaults.get(k)) for k in defaulted if k in new.defaults),
        tuple(k for k in unfit if k not in overrides),
    )


def _check_override(
    cls: type, current: torch.optim.Optimizer, key: str, value: Value, default: Any
) -> Any:
    """A ``rebuild KEY=VALUE`` value, typed as the class's constructor default is."""
    if key == "lr":
        if not isinstance(value, float):
            raise CommandError(f"lr must be a number, got {value!r}")
        return check_lr(value, "all groups")
    reference = default
    if reference is inspect.Parameter.empty or reference is None:
        reference = current.param_groups[0].get(key) if cls is type(current) else None
    if reference is None:
        if key in ("foreach", "fused", "capturable", "differentiable") and not isinstance(
            value, bool
        ):
            raise CommandError(f"{key} is true/false, got {value!r}")
        return value
    return check_hparam(key, value, reference, "all groups")


def reattach_scheduler(scheduler: Any, optimizer: torch.optim.Optimizer) -> None:
    """Point the scheduler (and any it wraps) at the new optimizer, keeping its step count."""
    for sched in scheduler_chain(scheduler):
        sched.optimizer = optimizer
        if getattr(sched, "cycle_momentum", False) and hasattr(sched, "use_beta1"):
            # OneCycleLR / CyclicLR decided at construction which key they cycle
            sched.use_beta1 = "betas" in optimizer.defaults
    if scheduler is not None:
        _track_step(optimizer)


def _track_step(optimizer: torch.optim.Optimizer) -> None:
    """Wrap ``optimizer.step`` as an LRScheduler wraps its optimizer's at construction.

    The scheduler's first ``step()`` warns ("optimizer.step() has been overridden")
    when the optimizer's step is not wrapped; a warning printed over the console
    would garble it, and here nothing was overridden.
    """
    if hasattr(optimizer.step, "_wrapped_by_lr_sched"):
        return
    opt_ref = weakref.ref(optimizer)
    func = type(optimizer).step

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        opt = opt_ref()
        opt._opt_called = True  # type: ignore[union-attr]
        return func(opt, *args, **kwargs)  # type: ignore[arg-type]

    wrapper._wrapped_by_lr_sched = True  # type: ignore[attr-defined]
    optimizer.step = wrapper  # type: ignore[method-assign]


# What stays the old object's through become(): the hooks registered on it
# (by the user, a framework, a profiler) go on firing on the rebuilt optimizer.
_KEPT_ON_BECOME = (
    "_optimizer_step_pre_hooks",
    "_optimizer_step_post_hooks",
    "_optimizer_state_dict_pre_hooks",
    "_optimizer_state_dict_post_hooks",
    "_optimizer_load_state_dict_pre_hooks",
    "_optimizer_load_state_dict_post_hooks",
)


def check_become(old: torch.optim.Optimizer, new: torch.optim.Optimizer) -> None:
    """Refuse (CommandError) a rebuild that :func:`become` could not do in place."""
    if type(old) is type(new):
        return
    try:
        probe = object.__new__(type(old))
        probe.__class__ = type(new)
    except TypeError as exc:
        raise CommandError(
            f"rebuild as {type(new).__name__}: the {type(old).__name__} object your code "
            f"holds cannot become one in place ({exc}); rebuild it as "
            f"{type(old).__name__} (state dropped, new hyper-parameters)"
        ) from None


def become(old: torch.optim.Optimizer, new: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """Make ``old`` the optimizer ``new`` is, in place; returns ``old``.

    For a loop that is not tuiconsole's: the user's code, its scheduler and a
    framework's wrapper (Lightning's LightningOptimizer copies the optimizer's
    attributes, sharing its containers) all hold the optimizer object. So the
    object stays; its class becomes the new one's, and its ``param_groups``,
    ``state`` and ``defaults`` containers are refilled in place (every alias
    sees the new groups and the dropped state). Hooks registered on it stay.
    A scheduler's ``step`` wrapper is made anew for the new class.
    """
    check_become(old, new)
    wrapped = hasattr(old.__dict__.get("step"), "_wrapped_by_lr_sched")
    groups, state, defaults = old.param_groups, old.state, old.defaults
    kept = {k: old.__dict__[k] for k in _KEPT_ON_BECOME if k in old.__dict__}
    old.__class__ = type(new)
    old.__dict__.clear()
    # Not new's own ``step`` wrapper (a scheduler attached to ``new`` made one): it
    # steps ``new``, through a weak reference, not ``old`` (made anew below).
    old.__dict__.update({k: v for k, v in new.__dict__.items() if k != "step"})
    old.__dict__.update(kept)
    groups[:] = new.param_groups
    state.clear()
    state.update(new.state)
    defaults.clear()
    defaults.update(new.defaults)
    old.__dict__.update(param_groups=groups, state=state, defaults=defaults)
    if wrapped:
        _track_step(old)
    return old


def rescale_after_rebuild(
    optimizer: torch.optim.Optimizer, scheduler: Any, old_lrs: Sequence[float]
) -> None:
    """``rebuild ... lr=V`` changed lrs: keep the scheduler's idea of them in proportion.

    Without this the next ``scheduler.step()`` of a base_lrs-driven schedule
    (LambdaLR, OneCycleLR, CyclicLR...) silently puts the old lrs back.
    """
    new_lrs = {}
    for i, (group, old) in enumerate(zip(optimizer.param_groups, old_lrs, strict=True)):
        if float(group["lr"]) != old:
            new_lrs[i] = float(group["lr"])
            group["lr"] = old
    writes = _plan_lrs(optimizer, scheduler, new_lrs)  # checks all before writing any
    _commit_lrs(optimizer, writes, new_lrs)


def check_rebuild_scheduler(scheduler: Any, cls: type) -> None:
    """A scheduler that cycles momentum / beta1 needs one of them in the new class."""
    cycler = momentum_cycler(scheduler)
    if cycler is None:
        return
    takes = optclass.constructor_params(cls)
    if "betas" not in takes and "momentum" not in takes:
        raise CommandError(
            f"{cycler} cycles momentum / beta1 every step and {cls.__name__} has neither; "
            "rebuild to a class with momentum or betas"
        )


# --------------------------------------------------------------------------- scheduler view


class _ShadowOptimizer:
    """Stands in for the optimizer while a copy of the scheduler looks one step ahead:
    the groups' values without their parameters, so nothing real is touched."""

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self.param_groups = [
            {k: _detached(v) for k, v in g.items() if k != "params"} | {"params": []}
            for g in optimizer.param_groups
        ]
        self.defaults = dict(optimizer.defaults)
        self.state: dict[Any, Any] = {}

    def step(self) -> None:  # pragma: no cover - schedulers only wrap it
        pass


def _detached(v: Any) -> Any:
    """A group value the copy may change without touching the real one (tensor lrs)."""
    return v.detach().clone() if isinstance(v, torch.Tensor) else v


def next_lrs(scheduler: Any, optimizer: torch.optim.Optimizer) -> tuple[float | None, ...]:
    """The lr of each group after the scheduler's next step(), without stepping it.

    A deep copy of the scheduler, bound to a shadow of the optimizer (the memo maps
    the real optimizer, model parameters and their state to stand-ins or to
    themselves, so neither tensors nor the model are copied), takes the step.
    """
    n = len(optimizer.param_groups)
    if scheduler is None or type(scheduler).__name__ == "ReduceLROnPlateau":
        return (None,) * n
    shadow = _ShadowOptimizer(optimizer)
    memo: dict[int, Any] = {id(optimizer): shadow}
    for g in optimizer.param_groups:
        for p in g["params"]:
            memo[id(p)] = p
    for sched in scheduler_chain(scheduler):
        # functions (lr_lambdas) and what they are bound to are not the schedule's
        # state: copying them could copy a model or a dataset at every snapshot
        for value in vars(sched).values():
            for v in value if isinstance(value, list | tuple) else (value,):
                if callable(v) or isinstance(v, nn.Module | torch.Tensor):
                    memo[id(v)] = v
                    owner = getattr(v, "__self__", None)
                    if owner is not None:
                        memo[id(owner)] = owner
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ahead = copy.deepcopy(scheduler, memo)
            ahead.step()
        return tuple(_as_float(g.get("lr")) for g in shadow.param_groups)
    except Exception:  # a custom scheduler that cannot be copied, or past its end
        return (None,) * n


def _as_float(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def scheduler_view(
    scheduler: Any, optimizer: torch.optim.Optimizer, interval: str
) -> SchedulerView | None:
    if scheduler is None:
        return None
    return SchedulerView(
        cls=type(scheduler).__name__,
        step=int(getattr(scheduler, "last_epoch", 0) or 0),
        next_lrs=next_lrs(scheduler, optimizer),
        interval=interval,
        chain=tuple(type(s).__name__ for s in scheduler_chain(scheduler)[1:]),
    )
