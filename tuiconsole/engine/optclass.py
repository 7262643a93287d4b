"""What an optimizer class really takes, and whether it can hold a group.

Two facts decide whether a change to the optimizer is exact and safe:

* Which keys the class's constructor takes. A group key is only meaningful to
  the class whose ``__init__`` names it; ``defaults`` also holds keys the class
  sets for itself (AdamW puts ``decoupled_weight_decay=True`` there but does not
  take it), so carrying keys by ``defaults`` turns AdamW into Adam.
* Whether ``step()`` accepts the values. ``torch.optim`` validates the
  constructor's arguments, not the groups, and many values only fail inside
  ``step()`` (``capturable=True`` on CPU, an lr past float32, LBFGS without a
  closure, SparseAdam on dense gradients). :func:`probe` runs two steps of a
  throwaway optimizer of the class, with the group's values, over a tiny
  parameter of each dtype / device / rank the group holds, so a command that
  would end the run is refused before anything changes.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Iterable, Mapping, Sequence
from functools import cache
from typing import Any

import torch
from torch import nn

from tuiconsole.errors import CommandError

# Keys a group keeps whatever the class: names and the scheduler's lr anchors.
CARRY_ALWAYS = ("name", "initial_lr", "max_lr", "min_lr", "base_momentum", "max_momentum")
# Classes whose step() needs something the engine's step does not give.
_NEEDS_CLOSURE = ("LBFGS",)


@cache
def constructor_params(cls: type) -> dict[str, Any]:
    """KEY -> default for every hyper-parameter ``cls.__init__`` takes (not ``params``).

    A parameter without a default maps to ``inspect.Parameter.empty``.
    """
    try:
        sig = inspect.signature(cls.__init__)  # type: ignore[misc]
    except (TypeError, ValueError):  # pragma: no cover - builtins without a signature
        return {}
    out: dict[str, Any] = {}
    for i, (name, p) in enumerate(sig.parameters.items()):
        if i == 0 or name == "params":
            continue  # self
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        out[name] = p.default
    return out


def takes_any_key(cls: type) -> bool:
    """True for a class whose ``__init__`` has ``**kwargs`` (a custom optimizer may)."""
    try:
        sig = inspect.signature(cls.__init__)  # type: ignore[misc]
    except (TypeError, ValueError):  # pragma: no cover
        return False
    return any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values())


def is_torch_class(cls: type) -> bool:
    return cls.__module__.split(".")[:2] == ["torch", "optim"]


def ctor_kwargs(cls: type, values: Mapping[str, Any]) -> dict[str, Any]:
    """The entries of VALUES the constructor takes (everything for ``**kwargs`` classes)."""
    if takes_any_key(cls):
        return {k: v for k, v in values.items() if k != "params"}
    params = constructor_params(cls)
    return {k: v for k, v in values.items() if k in params}


def construct(cls: type, groups: list[dict[str, Any]], defaults: Mapping[str, Any]) -> Any:
    """``cls(groups, **defaults)`` with only the defaults its constructor takes."""
    return cls(groups, **ctor_kwargs(cls, defaults))


def carries(source: Any, target: type, key: str, value: Any = None) -> bool:
    """Whether a group key of optimizer SOURCE moves into a new optimizer of class TARGET.

    Names and scheduler anchors always do; otherwise only a key TARGET's
    constructor takes, with a value of the kind its default is (Adam's float
    ``eps`` is not Adafactor's ``(None, 1e-3)``), and not a key SOURCE's class sets
    for itself (in its ``defaults`` without being a constructor parameter: AdamW's
    ``decoupled_weight_decay=True`` would make Adam into AdamW).
    """
    if key == "params" or key in CARRY_ALWAYS or type(source) is target:
        return True
    if not (takes_any_key(target) or key in constructor_params(target)):
        return False
    source_cls: type = type(source)
    own = key in source.defaults and not (
        takes_any_key(source_cls) or key in constructor_params(source_cls)
    )
    return not own and fits(constructor_params(target).get(key), value)


def fits(default: Any, value: Any) -> bool:
    """VALUE is of the kind DEFAULT is (no default or None: anything is)."""
    if default is None or default is inspect.Parameter.empty or value is None:
        return True
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, tuple | list):
        return isinstance(value, tuple | list) and len(value) == len(default)
    if isinstance(default, int | float):
        return isinstance(value, int | float | torch.Tensor) and not isinstance(value, bool)
    return isinstance(value, type(default))


def carry_plan(source: Any, target: type) -> tuple[list[str], list[str], list[str]]:
    """For a rebuild: (keys TARGET does not take, keys whose values do not fit TARGET's
    kind, constructor keys that take TARGET's default)."""
    if type(source) is target:
        return [], [], []
    present: dict[str, Any] = {}
    for g in source.param_groups:
        for k, v in g.items():
            present.setdefault(k, v)
    present.pop("params", None)
    takes = constructor_params(target)
    dropped: list[str] = []
    unfit: list[str] = []
    for k, v in present.items():
        if carries(source, target, k, v):
            continue
        if k not in takes and not takes_any_key(target):
            dropped.append(k)
        elif carries(source, target, k):
            unfit.append(k)
        # else: a key the old class sets for itself; the target's default is listed
    kept = {k for k, v in present.items() if carries(source, target, k, v)}
    defaulted = [k for k in takes if k not in kept]
    return dropped, unfit, defaulted


# --------------------------------------------------------------------------- can it hold?


def refuse_unfit(cls: type, model: nn.Module | None, params: Iterable[torch.Tensor]) -> None:
    """Refuse, with the reason, a class that cannot train these parameters in the engine."""
    name = cls.__name__
    if name in _NEEDS_CLOSURE:
        raise CommandError(
            f"{name} cannot be used here: its step() needs a closure that re-evaluates the "
            "model, and a training step calls optimizer.step() without one"
        )
    if name == "SparseAdam":
        dense = _dense_param_name(model, params)
        if dense is not None:
            raise CommandError(
                f"SparseAdam cannot hold {dense}: it takes only sparse gradients "
                "(nn.Embedding(sparse=True)); the model's other parameters get dense ones"
            )


def _dense_param_name(model: nn.Module | None, params: Iterable[torch.Tensor]) -> str | None:
    sparse: set[int] = set()
    names: dict[int, str] = {}
    if model is not None:
        for mod_name, mod in model.named_modules():
            for pname, p in mod.named_parameters(recurse=False):
                names.setdefault(id(p), f"{mod_name}.{pname}" if mod_name else pname)
                if isinstance(mod, nn.Embedding | nn.EmbeddingBag) and mod.sparse:
                    sparse.add(id(p))
    for p in params:
        if id(p) not in sparse:
            return names.get(id(p), "a parameter")
    return None


# --------------------------------------------------------------------------- probe


def _kinds(params: Iterable[torch.Tensor]) -> list[tuple[torch.dtype, torch.device, int]]:
    seen: list[tuple[torch.dtype, torch.device, int]] = []
    for p in params:
        kind = (p.dtype, p.device, p.dim())
        if kind not in seen:
            seen.append(kind)
    return seen


def _opmath(dtype: torch.dtype) -> torch.dtype:
    """The dtype an optimizer's scalar arithmetic uses for DTYPE parameters: half and
    bfloat16 updates compute in float32 (torch's opmath type)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def check_lr_range(lr: float, params: Iterable[torch.Tensor], where: str) -> None:
    """An lr the update arithmetic can hold: past it, step() overflows or rounds it to 0."""
    for kind, _, _ in _kinds(params):
        if not kind.is_floating_point:
            continue
        dtype = _opmath(kind)
        info = torch.finfo(dtype)
        if lr > info.max or lr < info.tiny:
            raise CommandError(
                f"lr for {where!r} would be {lr!r}; {dtype} parameters hold lrs in "
                f"[{info.tiny:.3g}, {info.max:.3g}]"
            )


_FINFO_MAX = {d: torch.finfo(d).max for d in (torch.float32, torch.float64)}


def check_range(
    group: Mapping[str, Any],
    where: str,
    kinds: list[tuple[torch.dtype, torch.device, int]] | None = None,
) -> None:
    """Every number in the group fits the dtype of its parameters (float32: 3.4e38).

    ``kinds``: the group's :func:`_kinds`, when the caller has them already."""
    kinds = _kinds(group["params"]) if kinds is None else kinds
    limit = min((_FINFO_MAX[_opmath(d)] for d, _, _ in kinds if d.is_floating_point), default=None)
    if limit is None:
        return
    for key, value in group.items():
        if key in ("params", "name"):
            continue
        for v in value if isinstance(value, tuple | list) else (value,):
            if isinstance(v, int | float) and not isinstance(v, bool) and abs(v) > limit:
                raise CommandError(
                    f"{key}={float(v):.3g} for {where!r} is beyond what its parameters' "
                    f"dtype holds ({limit:.3g})"
                )


def probe_all(cls: type, candidates: Sequence[tuple[Mapping[str, Any], str, Any]]) -> None:
    """:func:`probe` each (group, name, before), once per distinct set of values.

    Groups that differ only in their lrs share a probe, run with the largest lr
    (the one that can overflow), so ``set all`` over 500 groups costs a few probes.
    """
    seen: dict[tuple[Any, ...], tuple[Mapping[str, Any], str, Any]] = {}
    for group, where, before in candidates:
        kinds = _kinds(group["params"])  # once: 500 groups are 500 walks over their params
        check_range(group, where, kinds)
        key = _values_key(group, kinds)
        if key not in seen or float(group.get("lr", 0.0)) > float(seen[key][0].get("lr", 0.0)):
            seen[key] = (group, where, before)
    for group, where, before in seen.values():
        probe(cls, group, where, before)


def _values_key(
    group: Mapping[str, Any], kinds: list[tuple[torch.dtype, torch.device, int]]
) -> tuple[Any, ...]:
    values = tuple(
        (k, repr(v)) for k, v in group.items() if k not in ("params", "lr", *CARRY_ALWAYS)
    )
    return values, tuple(kinds)


def probe(
    cls: type, group: Mapping[str, Any], where: str, before: Mapping[str, Any] | None = None
) -> None:
    """Two steps of a throwaway CLS built with GROUP's values: refuse what it would reject.

    The constructor checks its arguments (ranges, combinations), ``step()`` the
    rest. Only for torch.optim classes: a custom class's constructor may need more
    than hyper-parameters. When BEFORE (the group as it was) fails too, the probe
    says nothing about the change and is not held against it. Costs a few tiny
    kernels per distinct parameter kind.
    """
    if not is_torch_class(cls) or cls.__name__ in _NEEDS_CLOSURE:
        return
    why = _probe_error(cls, group)
    if why is None or (before is not None and _probe_error(cls, before) is not None):
        return
    raise CommandError(f"{cls.__name__} would fail with these values for {where!r}: {why}")


def _probe_error(cls: type, group: Mapping[str, Any]) -> str | None:
    values = {k: v for k, v in group.items() if k not in ("params", *CARRY_ALWAYS)}
    hparams = ctor_kwargs(cls, values)
    extra = {k: v for k, v in values.items() if k not in hparams}
    for dtype, device, dim in _kinds(group["params"]):
        shape = (2,) * dim
        dummy = torch.ones(shape, dtype=dtype, device=device, requires_grad=True)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                opt = cls([{"params": [dummy], **extra}], **hparams)
                for _ in range(2):
                    grad = torch.full(shape, 0.5, dtype=dtype, device=device)
                    dummy.grad = grad.to_sparse() if cls.__name__ == "SparseAdam" else grad
                    opt.step()
        except Exception as exc:  # any class, any reason: it is what step() would do
            return first_line(exc)
    return None


def first_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return (text[:240] + "...") if len(text) > 240 else (text or type(exc).__name__)
