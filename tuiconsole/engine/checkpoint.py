"""Save and resume a run: model, optimizer (with the groups made by split and the
lrs set by hand), scheduler, step, epoch, RNG state and the data position.

``torch.optim.Optimizer.load_state_dict`` only works into an optimizer whose
groups have the same sizes as the saved ones, and the script always builds its
*original* groups. So the checkpoint records each group's members by parameter
name; resuming first rebuilds that group structure (and the optimizer class, if
``rebuild`` changed it), then loads the state. Schedulers keep per-group
functions (LambdaLR's ``lr_lambdas``) that a state_dict cannot hold; the
checkpoint records which of the script's groups each group descends from, so
those lists are rebuilt to match before the scheduler state is loaded.

Data position: the checkpoint holds the RNG states and where the loader is (see
engine/data.py); resuming puts both back, so a CPU run continues bit for bit.

Both directions are plain values: :func:`save_checkpoint` writes a
:class:`CheckpointContent`, :func:`restore` loads into the script's own model,
optimizer and scheduler and returns a :class:`Restored` for the trainer to adopt.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import pickle
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, cast

import torch
from torch import nn

from tuiconsole.engine import groups as G
from tuiconsole.engine import optclass, rundir
from tuiconsole.engine.data import loader_generators, rng_state, set_rng_state
from tuiconsole.engine.schedule import check_saved
from tuiconsole.errors import CommandError, TuiconsoleError

__all__ = [  # the RNG helpers moved to engine/data.py; still importable from here
    "loader_generators",
    "rng_state",
    "set_rng_state",
]

CHECKPOINT_VERSION = 2
# A checkpoint's last bytes: this mark, the sha256 of everything before it (hex), "\n".
DIGEST_MARK = b"\n#tuiconsole-sha256:"
TRAILER_LEN = len(DIGEST_MARK) + 64 + 1
DIGEST_KIND = "sha256-trailer"  # in the payload: this file must end with the trailer


# --------------------------------------------------------------------------- save


@dataclass(frozen=True)
class CheckpointContent:
    """Everything a checkpoint holds, as the trainer has it (see :func:`checkpoint_payload`)."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    group_origin: Sequence[int]
    state_reset: Sequence[int | None]
    step: int
    epoch: int
    rng: dict[str, Any]  # data.rng_state() now
    data: dict[str, Any]  # data.EpochData.position()
    script_sha256: str | None = None
    journal: str | None = None  # the run's journal.jsonl
    reason: str = "command"  # "command" | "final" | "error"
    # torchrun: every rank's {"rng", "data"} (rng/data above are rank 0's); None: one
    # process, or a checkpoint rank 0 wrote alone (after an error)
    ranks: list[dict[str, Any]] | None = None
    world_size: int = 1
    # How steps are taken (engine/step.py Stepping.state): live clip and accumulate, the
    # GradScaler's state, the counts. None: a checkpoint of an older tuiconsole.
    step_features: dict[str, Any] | None = None
    # The `at` commands pending (engine/schedule.py Schedule.state); None: none kept.
    pending: dict[str, Any] | None = None


def group_members(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[list[str]]:
    """Each group's parameters by name, in the optimizer's order."""
    names = G.param_owners(model)
    out = []
    for i, g in enumerate(optimizer.param_groups):
        missing = [p for p in g["params"] if id(p) not in names]
        if missing:
            raise CommandError(
                f"group {g.get('name', i)!r} holds {len(missing)} tensor(s) that are not "
                "the model's parameters; cannot checkpoint it by name"
            )
        out.append([names[id(p)] for p in g["params"]])
    return out


def checkpoint_payload(c: CheckpointContent) -> dict[str, Any]:
    sched, opt = c.scheduler, c.optimizer
    return {
        "version": CHECKPOINT_VERSION,
        "reason": c.reason,
        "time": time.time(),
        "torch": str(torch.__version__),
        "script_sha256": c.script_sha256,
        "step": c.step,
        "epoch": c.epoch,
        "model": c.model.state_dict(),
        "optimizer_class": type(opt).__name__,
        "optimizer_defaults": dict(opt.defaults),
        "optimizer": opt.state_dict(),
        "groups": group_members(c.model, opt),
        "group_origin": list(c.group_origin),
        "state_reset": list(c.state_reset),
        "scheduler_class": type(sched).__name__ if sched is not None else None,
        "scheduler": sched.state_dict() if sched is not None else None,
        "rng": c.rng,
        "data": c.data,
        "journal": c.journal,
        "world_size": c.world_size,
        "ranks": c.ranks,
        "step_features": c.step_features,
        "pending": c.pending,
    }


class CheckpointWriteError(CommandError):
    """A checkpoint could not be written; its temp file was removed."""

    def __init__(self, message: str, disk_full: bool = False) -> None:
        super().__init__(message)
        self.disk_full = disk_full


class _HashingFile:
    """What torch.save writes through: hashes the bytes and keeps the OSError
    (torch turns a failed write into ``RuntimeError [enforce fail ...]``)."""

    def __init__(self, f: Any) -> None:
        self.f = f
        self.sha = hashlib.sha256()
        self.error: OSError | None = None

    def write(self, data: Any) -> int:
        try:
            n = self.f.write(data)
        except OSError as exc:
            self.error = exc
            raise
        self.sha.update(data)
        return int(n)

    def flush(self) -> None:
        self.f.flush()


def save_checkpoint(path: Path, content: CheckpointContent) -> None:
    """Write atomically (temp file + fsync + rename) so a crash never leaves half a
    checkpoint; the temp file has an unpredictable name (created O_EXCL, 0600) and
    is removed on any failure. The file ends with a sha256 trailer that
    :func:`load_checkpoint` verifies (torch.load ignores bytes after the zip)."""
    payload = checkpoint_payload(content)
    payload["digest"] = DIGEST_KIND
    write_checkpoint_file(Path(path), payload)


def write_checkpoint_file(path: Path, payload: dict[str, Any]) -> None:
    def failed(exc: BaseException) -> CheckpointWriteError:
        if isinstance(exc, OSError):
            why = rundir.why(exc)
            if rundir.is_disk_full(exc):
                why += " (the partial file was removed)"
            return CheckpointWriteError(
                f"cannot write checkpoint {path}: {why}", rundir.is_disk_full(exc)
            )
        return CheckpointWriteError(f"cannot write checkpoint {path}: {_one_line(exc)}")

    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f"{rundir.TEMP_PREFIX}{path.name}.", dir=path.parent)
    except OSError as exc:
        raise failed(exc) from None
    tmp = Path(name)
    try:
        with os.fdopen(fd, "wb") as f:
            out = _HashingFile(f)
            try:
                torch.save(payload, cast(IO[bytes], out))
            except RuntimeError:
                if out.error is not None:
                    raise out.error from None
                raise
            f.write(DIGEST_MARK + out.sha.hexdigest().encode("ascii") + b"\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError, pickle.PicklingError, TypeError, AttributeError) as exc:
        raise failed(exc) from None
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
    with contextlib.suppress(OSError):  # the rename itself survives a power cut
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


# --------------------------------------------------------------------------- load


def verify_digest(path: Path) -> bool:
    """Check the sha256 trailer. True: it matches; False: there is none (a
    checkpoint of an older tuiconsole). A mismatch raises a TuiconsoleError."""
    size = path.stat().st_size
    with path.open("rb") as f:
        if size < TRAILER_LEN:
            return False
        f.seek(size - TRAILER_LEN)
        tail = f.read()
        if not (tail.startswith(DIGEST_MARK) and tail.endswith(b"\n")):
            return False
        f.seek(0)
        sha = hashlib.sha256()
        left = size - TRAILER_LEN
        while left > 0:
            chunk = f.read(min(left, 1 << 20))
            if not chunk:
                break
            sha.update(chunk)
            left -= len(chunk)
    if sha.hexdigest().encode("ascii") != tail[len(DIGEST_MARK) : -1]:
        raise TuiconsoleError(
            f"{path}: damaged checkpoint: its sha256 does not match the digest written "
            "with it (the file changed after it was saved); resume from another checkpoint"
        )
    return True


def checkpoint_digest(path: Path) -> str:
    """The checkpoint's sha256 as the journal names it: the digest in its trailer (which
    :func:`load_checkpoint` verifies), or for a file without one the sha256 of it all."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            if size >= TRAILER_LEN:
                f.seek(size - TRAILER_LEN)
                tail = f.read()
                if tail.startswith(DIGEST_MARK) and tail.endswith(b"\n"):
                    return tail[len(DIGEST_MARK) : -1].decode("ascii")
                f.seek(0)
            sha = hashlib.sha256()
            while chunk := f.read(1 << 20):
                sha.update(chunk)
    except OSError as exc:
        raise TuiconsoleError(f"cannot read checkpoint {path}: {rundir.why(exc)}") from None
    return sha.hexdigest()


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (safely: weights_only),
    verifying its digest and the type of every field :func:`restore` uses.

    A checkpoint without a digest (written before tuiconsole stored one) is
    loaded; ``ckpt["digest"]`` is then None and the trainer logs a warning.
    """
    path = Path(path)
    if not path.is_file():
        raise TuiconsoleError(f"{path}: no such checkpoint file")
    try:
        verified = verify_digest(path)
    except OSError as exc:
        raise TuiconsoleError(f"cannot read checkpoint {path}: {rundir.why(exc)}") from None
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for a damaged/foreign file
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        why = next((ln for ln in lines if "Unsupported global" in ln), lines[0] if lines else "")
        raise TuiconsoleError(
            f"{path}: not a readable tuiconsole checkpoint ({_one_line(why)[:200]})"
        ) from None
    if not isinstance(ckpt, dict) or "model" not in ckpt or "optimizer" not in ckpt:
        raise TuiconsoleError(f"{path}: not a tuiconsole checkpoint")
    if ckpt.get("version") != CHECKPOINT_VERSION:
        raise TuiconsoleError(
            f"{path}: checkpoint version {ckpt.get('version')!r} is not supported "
            f"(this tuiconsole writes version {CHECKPOINT_VERSION})"
        )
    if not verified and ckpt.get("digest") is not None:
        raise TuiconsoleError(
            f"{path}: damaged checkpoint: its sha256 digest is missing at the end of the file"
        )
    if not verified:
        ckpt["digest"] = None
    _check_fields(ckpt, path)
    return ckpt


def _is_int(v: object, minimum: int = 0) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= minimum


def _check_fields(ckpt: dict[str, Any], path: Path) -> None:
    """Every field restore() reads, with the right type: one line naming the first bad one."""

    def bad(field: str, expected: str) -> TuiconsoleError:
        what = "is missing" if field not in ckpt else f"is {type(ckpt[field]).__name__}"
        return TuiconsoleError(f"{path}: damaged checkpoint: {field!r} {what}, expected {expected}")

    for field in ("step", "epoch"):
        if not _is_int(ckpt.get(field)):
            raise bad(field, "an int >= 0")
    model = ckpt.get("model")
    if not isinstance(model, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in model.items()
    ):
        raise bad("model", "a dict of tensors")
    opt = ckpt.get("optimizer")
    if (
        not isinstance(opt, dict)
        or not isinstance(opt.get("state"), dict)
        or not isinstance(opt.get("param_groups"), list)
        or not all(
            isinstance(g, dict) and isinstance(g.get("params"), list) for g in opt["param_groups"]
        )
    ):
        raise bad("optimizer", "an optimizer state_dict")
    if not isinstance(ckpt.get("optimizer_class"), str):
        raise bad("optimizer_class", "a class name")
    if not isinstance(ckpt.get("optimizer_defaults", {}), dict):
        raise bad("optimizer_defaults", "a dict")
    groups = ckpt.get("groups")
    if not isinstance(groups, list) or not all(
        isinstance(g, list) and all(isinstance(n, str) for n in g) for g in groups
    ):
        raise bad("groups", "lists of parameter names")
    origin = ckpt.get("group_origin", [])
    if not isinstance(origin, list) or not all(_is_int(i) for i in origin):
        raise bad("group_origin", "a list of ints")
    if ckpt.get("scheduler") is not None and not isinstance(ckpt["scheduler"], dict):
        raise bad("scheduler", "a scheduler state_dict or None")
    if not isinstance(ckpt.get("scheduler_class"), str | None):
        raise bad("scheduler_class", "a class name or None")
    if not isinstance(ckpt.get("rng"), dict):
        raise bad("rng", "a dict of RNG states")
    data = ckpt.get("data")
    if not isinstance(data, dict) or not (
        data.get("epoch_batches") is None or _is_int(data.get("epoch_batches"))
    ):
        raise bad("data", "the data position (epoch_batches: int or None)")
    if data["epoch_batches"] is not None and not isinstance(
        data.get("epoch_rng"), dict | torch.Tensor
    ):
        raise bad("data", "the data position (epoch_rng: RNG states)")
    if not _step_features_ok(ckpt.get("step_features")):
        raise bad("step_features", "amp, grad_clip, accumulate, counts and the GradScaler's state")
    if not check_saved(ckpt.get("pending")):
        raise bad("pending", "the `at` commands pending (id, step, cmd, source)")


def _step_features_ok(saved: object) -> bool:
    """None (an older checkpoint), or what engine/step.py's Stepping.state() writes."""
    if saved is None:
        return True
    if not isinstance(saved, dict):
        return False
    clip = saved.get("grad_clip")
    return (
        saved.get("amp") in (None, "bf16", "fp16")
        and (clip is None or (isinstance(clip, float) and clip > 0))
        and isinstance(saved.get("grad_norm"), float | None)
        and _is_int(saved.get("accumulate"), 1)
        and all(_is_int(saved.get(k)) for k in ("clipped", "clip_steps", "scaler_skipped"))
        and (saved.get("scaler") is None or isinstance(saved.get("scaler"), dict))
    )


def check_rng(generators: Sequence[torch.Generator], ckpt: dict[str, Any], where: Path) -> None:
    """Try the checkpoint's RNG states now (and put the current ones back), so a bad
    entry stops --resume with one line before anything is created or trained."""
    states = [("rng", ckpt["rng"])]
    epoch_rng = ckpt["data"].get("epoch_rng")
    if isinstance(epoch_rng, torch.Tensor):  # an older checkpoint: torch's RNG only
        epoch_rng = {"torch": epoch_rng}
    if epoch_rng is not None:
        states.append(("data.epoch_rng", epoch_rng))
    current = rng_state(generators)
    try:
        for name, state in states:
            try:
                set_rng_state(state, generators)
            except Exception as exc:
                raise TuiconsoleError(
                    f"{where}: damaged checkpoint: bad RNG state in {name!r}: "
                    f"{_one_line(exc)[:200]}"
                ) from None
    finally:
        set_rng_state(current, generators)


def _one_line(exc: BaseException | str) -> str:
    return " ".join(str(exc).split())[:300] or (
        type(exc).__name__ if isinstance(exc, BaseException) else ""
    )


def _rebuild_optimizer(
    model: nn.Module, opt: torch.optim.Optimizer, ckpt: dict[str, Any], where: Path
) -> torch.optim.Optimizer:
    """An optimizer of the checkpoint's class whose groups hold the checkpoint's members."""
    params = dict(model.named_parameters())
    saved_groups = ckpt["optimizer"]["param_groups"]
    members = ckpt["groups"]
    if len(saved_groups) != len(members):
        raise TuiconsoleError(f"{where}: damaged checkpoint (group lists disagree)")
    specs = []
    for names, saved in zip(members, saved_groups, strict=True):
        unknown = [n for n in names if n not in params]
        if unknown:
            raise TuiconsoleError(
                f"{where}: the script's model has no parameter {unknown[0]!r}; "
                "was the checkpoint made with another script?"
            )
        specs.append({**saved, "params": [params[n] for n in names]})
    if ckpt["optimizer_class"] == type(opt).__name__:
        # Same class: restructure the script's optimizer in place (custom classes work too).
        opt.param_groups[:] = specs
        opt.state.clear()
        return opt
    try:
        cls = G.optimizer_class(ckpt["optimizer_class"], opt)
    except CommandError as exc:
        raise TuiconsoleError(f"{where}: {exc}") from None
    try:
        made: torch.optim.Optimizer = optclass.construct(
            cls, specs, ckpt.get("optimizer_defaults", {})
        )
    except (TypeError, ValueError) as exc:
        raise TuiconsoleError(f"{where}: cannot rebuild {cls.__name__}: {_one_line(exc)}") from None
    return made


@dataclass(frozen=True)
class Restored:
    """What a trainer adopts after :func:`restore`: the optimizer (the script's own,
    restructured, or one of the checkpoint's class), its group bookkeeping, and the
    position to continue from (the data position and RNG states are put back by the
    trainer when it sets up, after the model is on its device)."""

    optimizer: torch.optim.Optimizer
    group_origin: list[int]
    state_reset: list[int | None]
    step: int
    epoch: int
    data: dict[str, Any]  # the checkpoint's data position (data.EpochData.restore)
    rng: dict[str, Any]  # its RNG states (data.set_rng_state)
    has_digest: bool  # False: written by an older tuiconsole, damage undetectable
    note: str | None = None  # a warning for the log (resumed on another world size)
    step_features: dict[str, Any] | None = None  # engine/step.py: Stepping.load
    pending: dict[str, Any] | None = None  # engine/schedule.py: Schedule.load


def restore(
    ckpt: dict[str, Any],
    where: Path,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    generators: Sequence[torch.Generator] = (),
    rank: int = 0,
    world_size: int = 1,
) -> Restored:
    """Load a checkpoint (from :func:`load_checkpoint`) into the script's model,
    optimizer and scheduler, built by the same script.

    The model's weights and the scheduler's state are loaded in place; the
    optimizer in the result may be another object (``rebuild`` changed its class).
    ``generators`` are the loader's RNGs (data.loader_generators), checked here.
    Raises TuiconsoleError naming what does not fit (another model, another
    scheduler...) or is damaged.
    """
    check_rng(generators, ckpt, where)
    try:
        restored = _restore(ckpt, where, model, optimizer, scheduler)
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
        # load_checkpoint checked each field's type; this is what a value inside holds
        raise TuiconsoleError(
            f"{where}: damaged checkpoint: {type(exc).__name__}: {_one_line(exc)[:200]}"
        ) from None
    return for_rank(restored, ckpt, rank, world_size)


def for_rank(r: Restored, ckpt: dict[str, Any], rank: int, world_size: int) -> Restored:
    """Under torchrun, this rank's own RNG states and data position from a checkpoint
    of the whole job; on another world size, rank 0's, with a note: not exact."""
    saved = ckpt.get("world_size", 1)
    ranks = ckpt.get("ranks")
    if saved == world_size:
        if world_size > 1 and isinstance(ranks, list) and len(ranks) == world_size:
            mine = ranks[rank]
            return dataclasses.replace(r, data=mine["data"], rng=mine["rng"])
        if world_size == 1:
            return r
        note = "rank 0 wrote it alone (after an error): the other ranks start from its RNGs"
    else:
        note = (
            f"it was written by a run on {saved} rank(s) and this one has {world_size}: "
            "each rank's share of the data differs, so it does not continue exactly"
        )
    return dataclasses.replace(r, note=note)


def check_scheduler(ckpt: dict[str, Any], where: Path, sched: Any, after: str = "") -> None:
    """The checkpoint's scheduler and the script's agree (both none, or the same class),
    else TuiconsoleError; ``after`` ends its message (rollback: "; nothing changed")."""
    if (ckpt["scheduler"] is None) != (sched is None):
        has = "has" if ckpt["scheduler"] is not None else "has no"
        raise TuiconsoleError(
            f"{where}: the checkpoint {has} scheduler but the script "
            f"{'defines one' if sched is not None else 'does not'}{after}"
        )
    if sched is not None and ckpt.get("scheduler_class") != type(sched).__name__:
        raise TuiconsoleError(
            f"{where}: the checkpoint's scheduler is {ckpt.get('scheduler_class')}, "
            f"the script's is {type(sched).__name__}{after}"
        )


def _restore(
    ckpt: dict[str, Any],
    where: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    sched: Any,
) -> Restored:
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as exc:
        raise TuiconsoleError(
            f"{where}: the checkpoint does not fit the script's model: {_one_line(exc)}"
        ) from None
    check_scheduler(ckpt, where, sched)
    opt = _rebuild_optimizer(model, optimizer, ckpt, where)
    try:
        opt.load_state_dict(ckpt["optimizer"])
    except (ValueError, KeyError, RuntimeError) as exc:
        raise TuiconsoleError(
            f"{where}: cannot load the optimizer state: {_one_line(exc)}"
        ) from None
    n = len(opt.param_groups)
    origin = [int(i) for i in ckpt.get("group_origin", range(n))]
    if sched is not None:
        G.reattach_scheduler(sched, opt)
        _remap_scheduler_lists(sched, origin)
        try:
            sched.load_state_dict(ckpt["scheduler"])
        except (ValueError, KeyError, RuntimeError, TypeError) as exc:
            raise TuiconsoleError(
                f"{where}: cannot load the scheduler state: {_one_line(exc)}"
            ) from None
    reset = ckpt.get("state_reset")
    state_reset: list[int | None] = [None] * n  # older checkpoints: unknown
    if (
        isinstance(reset, list)
        and len(reset) == n
        and all(r is None or (isinstance(r, int) and r >= 0) for r in reset)
    ):
        state_reset = list(reset)
    return Restored(
        optimizer=opt,
        group_origin=origin,
        state_reset=state_reset,
        step=int(ckpt["step"]),
        epoch=int(ckpt["epoch"]),
        data=ckpt["data"],
        rng=ckpt["rng"],
        has_digest=ckpt.get("digest") is not None,
        step_features=ckpt.get("step_features"),
        pending=ckpt.get("pending"),
    )


def _remap_scheduler_lists(sched: Any, origin: list[int]) -> None:
    """Per-group scheduler lists (lr_lambdas...) as the checkpoint's groups descend."""
    for s in G.scheduler_chain(sched):
        for attr in G.SCHED_GROUP_LISTS:
            values = getattr(s, attr, None)
            if isinstance(values, list) and values and max(origin, default=0) < len(values):
                setattr(s, attr, [values[o] for o in origin])
