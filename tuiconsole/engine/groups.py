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

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from tuiconsole.engine.commands import Value, jsonable
from tuiconsole.engine.snapshot import GroupView, ModuleNode
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
# Keys carried into a rebuilt optimizer of another class (besides its own defaults).
REBUILD_CARRY_KEYS = ("name", "initial_lr", "max_lr", "min_lr", "base_momentum", "max_momentum")
HIDDEN_KEYS = frozenset(
    {"params", "name", "lr", "foreach", "maximize", "capturable", "differentiable", "fused"}
    | set(SCHED_LR_KEYS)
)
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


def default_group_name(group: dict[str, Any], index: int, owners: dict[int, str]) -> str:
    paths = [_module_of(owners[id(p)]) for p in group["params"] if id(p) in owners]
    return common_path(paths) or f"group{index}"


def ensure_names(optimizer: torch.optim.Optimizer, model: nn.Module) -> None:
    """Give every group a unique ``'name'`` key (kept in the optimizer's state_dict).

    A name the script set wins; otherwise the longest common module path of the
    group's parameters; otherwise ``group<i>``. Duplicates get ``-2``, ``-3``...
    """
    owners = param_owners(model)
    used: set[str] = set()
    for i, group in enumerate(optimizer.param_groups):
        base = str(group.get("name") or default_group_name(group, i, owners))
        name, n = base, 2
        while name in used:
            name, n = f"{base}-{n}", n + 1
        group["name"] = name
        used.add(name)


def group_names(optimizer: torch.optim.Optimizer) -> list[str]:
    return [str(g.get("name", f"group{i}")) for i, g in enumerate(optimizer.param_groups)]


# --------------------------------------------------------------------------- views


def group_hparams(group: dict[str, Any]) -> tuple[tuple[str, Any], ...]:
    out = []
    for k, v in group.items():
        if k in HIDDEN_KEYS or v is None:
            continue
        if isinstance(v, torch.Tensor):
            v = float(v)
        if isinstance(v, bool | int | float | tuple | list):
            out.append((k, tuple(v) if isinstance(v, list) else v))
    return tuple(out)


def group_views(
    optimizer: torch.optim.Optimizer, lr_history: Sequence[Sequence[float]] = ()
) -> tuple[GroupView, ...]:
    views = []
    for i, g in enumerate(optimizer.param_groups):
        views.append(
            GroupView(
                index=i,
                name=str(g.get("name", f"group{i}")),
                lr=float(g["lr"]),
                hparams=group_hparams(g),
                n_tensors=len(g["params"]),
                n_params=sum(p.numel() for p in g["params"]),
                lr_history=tuple(lr_history[i]) if i < len(lr_history) else (),
            )
        )
    return tuple(views)


def groups_record(optimizer: torch.optim.Optimizer) -> list[dict[str, Any]]:
    """Groups as JSON for the journal: name, lr and every numeric hyper-parameter."""
    return [
        {"name": g.get("name"), "lr": jsonable(g["lr"]), "n_tensors": len(g["params"])}
        | {k: jsonable(v) for k, v in group_hparams(g)}
        for g in optimizer.param_groups
    ]


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
        n, groups, _, _ = own[path]
        sub_groups = list(groups)
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
    try:
        mod = model.get_submodule(path) if path else model
    except AttributeError:
        raise CommandError(f"no module or group named {path!r}") from None
    return list(mod.parameters())


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


def _scale_group_lr(
    optimizer: torch.optim.Optimizer, scheduler: Any, index: int, new_lr: float
) -> None:
    """Set one group's lr and keep the scheduler's idea of it in proportion."""
    group = optimizer.param_groups[index]
    old = float(group["lr"])
    factor = new_lr / old if old > 0 else None
    for key in SCHED_LR_KEYS:
        if key in group and isinstance(group[key], int | float):
            group[key] = group[key] * factor if factor is not None else new_lr
    for sched in scheduler_chain(scheduler):
        for attr, is_lr in SCHED_GROUP_LISTS.items():
            values = getattr(sched, attr, None)
            if is_lr and isinstance(values, list) and index < len(values):
                values[index] = values[index] * factor if factor is not None else new_lr
        last = getattr(sched, "_last_lr", None)
        if isinstance(last, list) and index < len(last):
            last[index] = new_lr
    if isinstance(group["lr"], torch.Tensor):
        group["lr"].fill_(new_lr)
    else:
        group["lr"] = new_lr


def check_lr(value: float, group_name: str) -> float:
    if not math.isfinite(value) or value <= 0:
        raise CommandError(f"lr for {group_name!r} would be {value!r}; it must be > 0 and finite")
    return value


def set_lrs(optimizer: torch.optim.Optimizer, scheduler: Any, new_lrs: dict[int, float]) -> None:
    names = group_names(optimizer)
    for i, v in new_lrs.items():
        check_lr(v, names[i])
    for i, v in new_lrs.items():
        _scale_group_lr(optimizer, scheduler, i, v)


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
    set_lrs(optimizer, scheduler, lrs)
    for i, key, value in plan:
        optimizer.param_groups[i][key] = value


# --------------------------------------------------------------------------- split


@dataclass(frozen=True)
class SplitPlan:
    new_groups: list[dict[str, Any]]
    # For each new group index: (old index it came from, lr scale factor)
    origin: list[tuple[int, float]]


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
    source = next((i for i, g in enumerate(groups) for p in g["params"] if id(p) in chosen), None)
    if source is None:
        raise CommandError(f"parameters of {' '.join(modules)} are in no optimizer group")
    in_optimizer = [p for g in groups for p in g["params"] if id(p) in chosen]
    moving = {id(p) for p in in_optimizer}
    for i, g in enumerate(groups):
        if {id(p) for p in g["params"]} == moving:
            raise CommandError(f"{' '.join(modules)} already is group {names[i]!r} on its own")

    new_groups: list[dict[str, Any]] = []
    origin: list[tuple[int, float]] = []
    for i, g in enumerate(groups):
        rest = [p for p in g["params"] if id(p) not in chosen]
        if rest:
            new_groups.append({**g, "params": rest})
            origin.append((i, 1.0))
    new = {**groups[source], "params": in_optimizer, "name": name}
    scale = 1.0
    for key, value in items:
        if key == "lr":
            if not isinstance(value, float):
                raise CommandError(f"lr must be a number, got {value!r}")
            scale = check_lr(value, name) / float(new["lr"])
            new["lr"] = value
            for k in SCHED_LR_KEYS:
                if isinstance(new.get(k), int | float):
                    new[k] = new[k] * scale
        else:
            check_not_cycled(scheduler, key, value, new.get(key))
            new[key] = check_hparam(key, value, new.get(key), name)
    new_groups.append(new)
    origin.append((source, scale))
    return SplitPlan(new_groups, origin)


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
                remapped.append(v * scale if is_lr and isinstance(v, int | float) else v)
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


def build_optimizer(
    current: torch.optim.Optimizer, cls_name: str | None, items: Sequence[tuple[str, Value]]
) -> torch.optim.Optimizer:
    """A fresh optimizer over the current groups (the seed's method 1). State is dropped."""
    cls = optimizer_class(cls_name, current)
    same = cls is type(current)
    probe_defaults = _class_defaults(cls, current)
    for key, _ in items:
        if key not in probe_defaults:
            raise CommandError(
                f"{cls.__name__} has no hyper-parameter {key!r} "
                f"(it has {', '.join(sorted(k for k in probe_defaults if k != 'params'))})"
            )
    overrides = dict(items)
    if "lr" in overrides:
        lr = overrides["lr"]
        if not isinstance(lr, float):
            raise CommandError(f"lr must be a number, got {lr!r}")
        check_lr(lr, "all groups")
    specs = []
    for g in current.param_groups:
        keep = {
            k: v
            for k, v in g.items()
            if k == "params" or same or k in probe_defaults or k in REBUILD_CARRY_KEYS
        }
        keep.update(overrides)
        specs.append(keep)
    ctor = dict(current.defaults) if same else {}
    ctor.update((k, v) for k, v in overrides.items() if k in probe_defaults)
    if "lr" not in ctor and "lr" in probe_defaults:
        ctor["lr"] = current.defaults.get("lr", current.param_groups[0]["lr"])
    try:
        return cls(specs, **ctor)
    except (ValueError, TypeError, RuntimeError) as exc:
        raise CommandError(f"cannot build {cls.__name__}: {exc}") from None


def _class_defaults(cls: type, current: torch.optim.Optimizer) -> dict[str, Any]:
    if cls is type(current):
        return dict(current.defaults)
    dummy = [torch.zeros(1, requires_grad=True)]
    try:
        return dict(cls(dummy).defaults)
    except (TypeError, ValueError):
        try:
            return dict(cls(dummy, lr=1e-3).defaults)
        except (TypeError, ValueError) as exc:
            raise CommandError(f"cannot build {cls.__name__}: {exc}") from None


def reattach_scheduler(scheduler: Any, optimizer: torch.optim.Optimizer) -> None:
    """Point the scheduler (and any it wraps) at the new optimizer, keeping its step count."""
    for sched in scheduler_chain(scheduler):
        sched.optimizer = optimizer


def rescale_after_rebuild(
    optimizer: torch.optim.Optimizer, scheduler: Any, old_lrs: Sequence[float]
) -> None:
    """``rebuild ... lr=V`` changed lrs: keep the scheduler's idea of them in proportion.

    Without this the next ``scheduler.step()`` of a base_lrs-driven schedule
    (LambdaLR, OneCycleLR, CyclicLR...) silently puts the old lrs back.
    """
    for i, (group, old) in enumerate(zip(optimizer.param_groups, old_lrs, strict=True)):
        new = float(group["lr"])
        if new != old:
            group["lr"] = old
            _scale_group_lr(optimizer, scheduler, i, new)
