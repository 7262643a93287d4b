"""``rollback [CHECKPOINT]``: which checkpoint, and whether it fits, before anything changes.

The trainer loads it live (the same restore as ``--resume``: model, optimizer with
its groups and class, scheduler, step, epoch, RNG, data position, clip/accumulate,
the pending ``at`` commands); this module picks the default checkpoint and checks
the one chosen against the running model first, so a checkpoint of another model
is refused with nothing changed.

Default: while NAN-PAUSED, the newest checkpoint of a step before the NaN's;
otherwise the newest one at or before the current step. Candidates are the
checkpoints this process wrote, the one it resumed from, and the run dir's
``checkpoint-step*.pt``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tuiconsole.engine import groups as G
from tuiconsole.engine.checkpoint import check_scheduler
from tuiconsole.errors import CommandError, TuiconsoleError

_STEP_FILE = re.compile(r"checkpoint-step(\d+)(?:-\d+)?\.pt$")  # -N: keeper._free_name


def candidates(
    written: Iterable[tuple[int, str]], resumed: tuple[int, str] | None, run_dir: Path | None
) -> list[tuple[int, Path]]:
    """Known checkpoints (step, path) that exist, each path once, oldest first."""
    found: list[tuple[int, Path]] = []
    if run_dir is not None and run_dir.is_dir():
        for p in run_dir.glob("checkpoint-step*.pt"):
            m = _STEP_FILE.search(p.name)
            if m is not None:
                found.append((int(m.group(1)), p))
        found.sort(key=lambda sp: (sp[0], sp[1].stat().st_mtime if sp[1].exists() else 0.0))
    if resumed is not None:
        found.append((resumed[0], Path(resumed[1])))
    found += [(s, Path(p)) for s, p in written]
    out: dict[Path, tuple[int, Path]] = {}
    for step, path in found:
        try:
            key = path.resolve()
        except OSError:
            continue
        if path.is_file():
            out.pop(key, None)  # the later mention wins the order
            out[key] = (step, key)
    return list(out.values())


def default(known: list[tuple[int, Path]], step: int, nan_step: int | None) -> Path:
    """The newest checkpoint before ``nan_step`` (NAN-PAUSED), else at or before ``step``."""
    limit = nan_step - 1 if nan_step is not None else step
    fit = [(s, p) for s, p in known if s <= limit]
    if not fit:
        before = f"before the NaN at step {nan_step}" if nan_step is not None else f"by step {step}"
        raise CommandError(f"rollback: no checkpoint written {before}; name one: rollback PATH")
    best = max(s for s, _ in fit)
    return [p for s, p in fit if s == best][-1]


def check_fits(
    ckpt: dict[str, Any],
    where: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    epoch_length: int | None,
) -> None:
    """Everything restore() would refuse part-way, refused now (TuiconsoleError)."""
    mine = model.state_dict()
    theirs = ckpt["model"]
    missing = [k for k in mine if k not in theirs]
    extra = [k for k in theirs if k not in mine]
    if missing or extra:
        which = f"no {missing[0]!r}" if missing else f"{extra[0]!r}, which this model has not"
        raise TuiconsoleError(
            f"{where}: a checkpoint of another model ({which}; "
            f"{len(missing)} missing, {len(extra)} unexpected); nothing changed"
        )
    for k, v in mine.items():
        if tuple(theirs[k].shape) != tuple(v.shape):
            raise TuiconsoleError(
                f"{where}: a checkpoint of another model ({k!r} is "
                f"{tuple(theirs[k].shape)} there, {tuple(v.shape)} here); nothing changed"
            )
    check_scheduler(ckpt, where, scheduler, "; nothing changed")
    params = dict(model.named_parameters())
    saved_groups = ckpt["optimizer"]["param_groups"]
    members = ckpt["groups"]
    if len(saved_groups) != len(members):
        raise TuiconsoleError(f"{where}: damaged checkpoint (group lists disagree)")
    by_index: dict[int, torch.Tensor] = {}
    for names, saved in zip(members, saved_groups, strict=True):
        unknown = [n for n in names if n not in params]
        if unknown:
            raise TuiconsoleError(f"{where}: this model has no parameter {unknown[0]!r}")
        if len(saved["params"]) != len(names):
            raise TuiconsoleError(f"{where}: damaged checkpoint (a group's sizes disagree)")
        by_index.update((int(i), params[n]) for i, n in zip(saved["params"], names, strict=True))
    for index, state in ckpt["optimizer"]["state"].items():
        p = by_index.get(int(index))
        if p is None or not isinstance(state, dict):
            raise TuiconsoleError(f"{where}: damaged checkpoint (state of an unknown parameter)")
        for key, v in state.items():
            if isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape != p.shape:
                raise TuiconsoleError(
                    f"{where}: the optimizer state {key!r} does not fit its parameter "
                    f"({tuple(v.shape)} vs {tuple(p.shape)})"
                )
    if ckpt["optimizer_class"] != type(optimizer).__name__:
        try:
            G.optimizer_class(ckpt["optimizer_class"], optimizer)
        except CommandError as exc:
            raise TuiconsoleError(f"{where}: {exc}") from None
    taken = ckpt["data"].get("epoch_batches")
    if epoch_length is not None and taken is not None and taken > epoch_length:
        raise TuiconsoleError(
            f"{where}: the checkpoint is {taken} batches into an epoch, but train_loader "
            f"has {epoch_length}"
        )
