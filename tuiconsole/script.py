"""The script contract: load a user's training script into a validated TrainingSpec.

A training script is a plain Python file, executed once, whose top-level names
define the run. Required: ``model``, ``optimizer``, ``criterion``,
``train_loader``. Optional: ``eval_loader``, ``epochs``, ``scheduler``,
``scheduler_interval`` ("step" | "epoch"), ``device``, ``training_step``, and how
each step is taken (engine/step.py): ``amp`` ("bf16" | "fp16"), ``grad_clip`` (a max
norm > 0), ``accumulate`` (micro-batches per optimizer step, >= 1), ``compile`` (bool).

Every way a script can break the contract ends in one ScriptError whose message
names the problem (and the line, when the script raised).
"""

from __future__ import annotations

import hashlib
import math
import random
import runpy
import sys
import traceback
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tuiconsole.errors import ScriptError

RUN_NAME = "__tuiconsole__"
CLASS_INDEX_LOSSES = (nn.CrossEntropyLoss, nn.NLLLoss)
AMP_MODES = ("bf16", "fp16")


@dataclass
class TrainingSpec:
    model: nn.Module
    optimizer: torch.optim.Optimizer
    criterion: Callable[..., torch.Tensor]
    train_loader: Iterable[Any]
    eval_loader: Iterable[Any] | None = None
    epochs: int | None = None
    scheduler: Any = None
    scheduler_interval: str = "epoch"
    device: str | None = None
    training_step: Callable[..., torch.Tensor] | None = None
    amp: str | None = None
    grad_clip: float | None = None
    accumulate: int | None = None
    compile: bool = False
    path: Path | None = None
    sha256: str | None = None

    @property
    def name(self) -> str:
        return self.path.name if self.path else "<in-memory>"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy as np
    except ImportError:
        return
    np.random.seed(seed % 2**32)


def raised_at(exc: BaseException, path: Path) -> str:
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if Path(f.filename) == path]
    return f" (line {frames[-1].lineno})" if frames else ""


def execute(path: Path) -> dict[str, Any]:
    """Run the script like ``python script.py`` (its folder importable), return its globals."""
    if not path.is_file():
        raise ScriptError(f"{path}: no such file")
    folder = str(path.parent.resolve())
    added = folder not in sys.path
    if added:
        sys.path.insert(0, folder)
    try:
        return runpy.run_path(str(path), run_name=RUN_NAME)
    except SyntaxError as exc:
        raise ScriptError(f"{path}:{exc.lineno}: syntax error: {exc.msg}") from None
    except SystemExit as exc:
        raise ScriptError(f"{path}: the script called exit({exc.code}) while loading") from None
    except Exception as exc:
        raise ScriptError(
            f"{path}{raised_at(exc, path.resolve())}: the script raised {type(exc).__name__}: {exc}"
        ) from None


def run_main(path: Path, argv: Sequence[str], seed: int = 0) -> None:
    """Run the script as ``python script.py ARGS`` would: ``__main__``, its folder first
    on sys.path, ``sys.argv = [script, *argv]``. Its exceptions propagate."""
    if not path.is_file():
        raise ScriptError(f"{path}: no such file")
    seed_everything(seed)
    folder = str(path.parent.resolve())
    if folder not in sys.path:
        sys.path.insert(0, folder)
    saved = sys.argv
    sys.argv = [str(path), *argv]
    try:
        runpy.run_path(str(path), run_name="__main__")
    finally:
        sys.argv = saved


def load_script(path: str | Path, seed: int = 0) -> TrainingSpec:
    """Seed, execute and validate a training script."""
    path = Path(path)
    seed_everything(seed)
    names = execute(path)
    spec = spec_from_namespace(names, path)
    validate(spec)
    return spec


def _need(names: dict[str, Any], key: str, path: Path, what: str) -> Any:
    if key not in names:
        raise ScriptError(f"{path}: the script must define `{key}` ({what})")
    return names[key]


def spec_from_namespace(names: dict[str, Any], path: Path) -> TrainingSpec:
    model = _need(names, "model", path, "an nn.Module")
    optimizer = _need(names, "optimizer", path, "a torch.optim.Optimizer over model's parameters")
    criterion = _need(names, "criterion", path, "callable(output, target) -> loss tensor")
    train_loader = _need(names, "train_loader", path, "an iterable of (inputs, targets) batches")
    return TrainingSpec(
        model=model,
        optimizer=optimizer,
        criterion=criterion,
        train_loader=train_loader,
        eval_loader=names.get("eval_loader"),
        epochs=names.get("epochs"),
        scheduler=names.get("scheduler"),
        scheduler_interval=names.get("scheduler_interval", "epoch"),
        device=names.get("device"),
        training_step=names.get("training_step"),
        amp=names.get("amp"),
        grad_clip=names.get("grad_clip"),
        accumulate=names.get("accumulate"),
        compile=names.get("compile", False),
        path=path,
        sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
    )


def _type_error(path: Path | None, key: str, expected: str, got: Any) -> ScriptError:
    return ScriptError(f"{path or 'script'}: `{key}` must be {expected}, got {type(got).__name__}")


def validate(spec: TrainingSpec) -> None:
    """Check types and the optimizer/model relation; catch the float-label pitfall."""
    p = spec.path
    if not isinstance(spec.model, nn.Module):
        raise _type_error(p, "model", "an nn.Module", spec.model)
    if not isinstance(spec.optimizer, torch.optim.Optimizer):
        raise _type_error(p, "optimizer", "a torch.optim.Optimizer", spec.optimizer)
    if not callable(spec.criterion):
        raise _type_error(p, "criterion", "callable(output, target)", spec.criterion)
    for key in ("train_loader", "eval_loader"):
        loader = getattr(spec, key)
        if loader is not None and not isinstance(loader, Iterable):
            raise _type_error(p, key, "an iterable of (inputs, targets)", loader)
    if spec.epochs is not None and (
        not isinstance(spec.epochs, int) or isinstance(spec.epochs, bool) or spec.epochs < 1
    ):
        raise ScriptError(f"{p}: `epochs` must be a positive int, got {spec.epochs!r}")
    if spec.scheduler_interval not in ("step", "epoch"):
        raise ScriptError(
            f'{p}: `scheduler_interval` must be "step" or "epoch", got {spec.scheduler_interval!r}'
        )
    check_scheduler(spec.scheduler, spec.optimizer, f"{p}: `scheduler`", "`optimizer`")
    if spec.training_step is not None and not callable(spec.training_step):
        raise _type_error(
            p, "training_step", "callable(model, batch, criterion)", spec.training_step
        )
    check_step(spec)
    check_optimizer(spec.optimizer, spec.model, f"{p}: `optimizer`", "`model`'s")
    check_first_batch(spec)


def max_norm(what: str, value: Any, error: type[Exception], text: bool = False) -> float:
    """A gradient clipping max norm: a finite number > 0 (``text``: or a string of one,
    from the command line); else ``error`` naming ``what``."""
    if text and isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise error(f"{what} must be a number > 0 (or off), got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise error(f"{what} must be a number > 0, got {type(value).__name__}")
    if not math.isfinite(value) or value <= 0:
        raise error(f"{what} must be a finite number > 0, got {value!r}")
    return float(value)


def check_step(spec: TrainingSpec) -> None:
    """``amp``, ``grad_clip``, ``accumulate`` and ``compile``: the right type and range."""
    p = spec.path or "script"
    if spec.amp is not None and spec.amp not in AMP_MODES:
        raise ScriptError(f'{p}: `amp` must be "bf16" or "fp16" (or None), got {spec.amp!r}')
    if spec.grad_clip is not None:
        spec.grad_clip = max_norm(f"{p}: `grad_clip`", spec.grad_clip, ScriptError)
    n = spec.accumulate
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise ScriptError(
            f"{p}: `accumulate` must be an int >= 1 (micro-batches per step), got {n!r}"
        )
    if not isinstance(spec.compile, bool):
        raise _type_error(spec.path, "compile", "True or False", spec.compile)


def check_optimizer(
    optimizer: Any, model: nn.Module, what: str, owner: str = "the model's"
) -> None:
    """``optimizer`` is a torch optimizer over ``model``'s parameters only."""
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise ScriptError(
            f"{what}: must be a torch.optim.Optimizer, got {type(optimizer).__name__}"
        )
    model_ids = {id(q) for q in model.parameters()}
    foreign = [q for g in optimizer.param_groups for q in g["params"] if id(q) not in model_ids]
    if foreign:
        shapes = ", ".join(str(tuple(q.shape)) for q in foreign[:3])
        raise ScriptError(
            f"{what} holds {len(foreign)} parameter(s) that are not {owner} "
            f"(shapes {shapes}); build it from model.parameters()"
        )


def check_scheduler(
    scheduler: Any, optimizer: torch.optim.Optimizer, what: str, on: str = "the optimizer"
) -> None:
    if scheduler is None:
        return
    held = getattr(scheduler, "optimizer", None)
    # A framework may attach it to its wrapper of the optimizer (accelerate's
    # AcceleratedOptimizer, as the Hugging Face Trainer does): fine when the wrapper's
    # param_groups are the optimizer's own list, which the scheduler then writes.
    if held is not optimizer and getattr(held, "param_groups", None) is not optimizer.param_groups:
        raise ScriptError(f"{what} must be an lr scheduler attached to {on}")


def check_first_batch(spec: TrainingSpec) -> None:
    """Look at one batch (without disturbing the RNG) for contract problems."""
    loader = spec.train_loader
    if iter(loader) is loader:  # a one-shot iterator: peeking would lose a batch
        return
    with torch.random.fork_rng(devices=[]):
        try:
            batch = next(iter(loader), None)
        except Exception as exc:
            raise ScriptError(
                f"{spec.path}: `train_loader` raised {type(exc).__name__}: {exc}"
            ) from None
    if batch is None:
        raise ScriptError(f"{spec.path}: `train_loader` is empty (it yielded no batches)")
    if spec.training_step is not None:
        return
    if not isinstance(batch, tuple | list) or len(batch) != 2:
        raise ScriptError(
            f"{spec.path}: `train_loader` must yield (inputs, targets) pairs, got "
            f"{type(batch).__name__}{f' of length {len(batch)}' if hasattr(batch, '__len__') else ''}"
            "; define training_step(model, batch, criterion) for other batch shapes"
        )
    check_targets(spec.criterion, batch[1], spec.path)


def check_targets(criterion: Any, targets: Any, path: Path | None) -> None:
    if (
        isinstance(criterion, CLASS_INDEX_LOSSES)
        and isinstance(targets, torch.Tensor)
        and targets.is_floating_point()
        and targets.dim() <= 1
    ):
        raise ScriptError(
            f"{path}: targets must be integer class indices (LongTensor) for "
            f"{type(criterion).__name__}, got {targets.dtype}; use labels.long() "
            "(or torch.tensor(labels, dtype=torch.long))"
        )
