"""What goes wrong in a run, and what is said and kept when it does.

A step that raises ends the run in ERROR with a hint written for the user
(:func:`hint`) and, when the weights are still those of the last good step, a
checkpoint of it (:func:`last_good_checkpoint`). A non-finite loss pauses
(NAN-PAUSED), stops or is ignored per ``--nan`` (:class:`NanPolicy`).
"""

from __future__ import annotations

import ctypes
import math
from dataclasses import dataclass
from typing import Any

import torch

from tuiconsole.errors import TuiconsoleError
from tuiconsole.script import CLASS_INDEX_LOSSES

NAN_MODES = ("pause", "stop", "ignore")
NAN_CHECKS = ("auto", "step", "flush")
OutOfMemoryError: type[BaseException] = getattr(
    torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError
)

# How far a step got: decides whether the weights are still "last good".
PHASES = ("data", "forward", "optimizer", "scheduler")
_STUCK = {
    "data": "in the loader",
    "forward": "in the forward/backward pass",
    "optimizer": "in optimizer.step()",
    "scheduler": "in scheduler.step()",
}


class NonFiniteLoss(ArithmeticError):
    """The training loss was NaN or Inf (``--nan=stop``)."""


class ReplayError(TuiconsoleError):
    """A journaled command that was applied in the original run fails on replay."""


@dataclass
class Where:
    """How far the current step got (one of PHASES), and its batch (for the hint)."""

    phase: str = "data"
    batch: Any = None

    def stuck(self) -> str:
        """Where a step that never finished is stuck, for the stop message."""
        return _STUCK.get(self.phase, "")


# --------------------------------------------------------------------------- hints


def one_line(text: str, limit: int = 500) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def hint(exc: BaseException, batch: Any, criterion: Any) -> str:
    """A useful sentence for errors users hit most (the seed's float-label pitfall)."""
    if isinstance(exc, SystemExit):
        return f"the script called sys.exit({exc.code!r}) inside the step"
    if isinstance(exc, KeyboardInterrupt):
        # only code raises it here: signals go to the main thread (a stop)
        return "KeyboardInterrupt raised inside the step"
    if isinstance(exc, OutOfMemoryError):
        first = ". ".join(one_line(str(exc), 300).split(". ")[:2])  # what, and how much
        return (
            f"out of memory ({first}); lower the batch size or the model size, "
            "then resume from the checkpoint"
        )
    if (
        isinstance(criterion, CLASS_INDEX_LOSSES)
        and isinstance(batch, tuple | list)
        and len(batch) == 2
        and isinstance(batch[1], torch.Tensor)
        and batch[1].is_floating_point()
    ):
        return (
            "targets must be integer class indices (LongTensor) for "
            f"{type(criterion).__name__}, got {batch[1].dtype}; use labels.long()"
        )
    return one_line(str(exc)) or type(exc).__name__


def unfinished(step: int, waited: float, where: str, finishing: bool) -> str:
    """What a stop that gave up after ``waited`` seconds leaves undone: the step in
    flight (stuck ``where``), or the final checkpoint (``finishing``)."""
    if finishing:
        return f"the final checkpoint did not finish within {waited:g} s"
    stuck = f" (stuck {where})" if where else ""
    return f"step {step + 1} did not finish within {waited:g} s{stuck}"


def last_good_checkpoint(phase: str | None, step: int, last_checkpoint: str) -> str | None:
    """Whether a failed step leaves the weights of the last good step to checkpoint.

    None: they are (before ``optimizer.step()``; ``phase`` None means no step was
    in flight); else why no checkpoint is written, for the log.
    """
    if phase not in ("optimizer", "scheduler"):
        return None
    earlier = (
        f"resume from the last checkpoint, {last_checkpoint}"
        if last_checkpoint
        else "no earlier checkpoint exists"
    )
    return (
        f"no checkpoint written: the error came from inside {phase}.step(), so "
        f"step {step + 1} may be half applied; {earlier}"
    )


def kept(journal_whole: bool | None, step: int, last_checkpoint: str) -> str:
    """What is on disk after a storage failure, for the error line.

    ``journal_whole``: None without a journal, False if a write to it failed.
    """
    parts = []
    if journal_whole is not None:
        parts.append(
            f"journal through step {step}"
            if journal_whole
            else "the journal up to its last whole line"
        )
    parts.append(f"last checkpoint {last_checkpoint}" if last_checkpoint else "no checkpoint")
    return "kept: " + ", ".join(parts)


# --------------------------------------------------------------------------- NaN


@dataclass(frozen=True)
class NanPolicy:
    """``--nan`` (what a non-finite loss does) and ``nan_check`` (when it is looked for)."""

    mode: str = "pause"  # "pause" | "stop" | "ignore"
    check: str = "auto"  # "auto" | "step" | "flush"

    def every_step(self, device: torch.device) -> bool:
        """Check each loss before its update (exact, free on CPU) or when losses are read.

        "step" pauses *at* the first bad step with the weights of the step before
        (its update is skipped). On an accelerator that needs one device->host
        read per step, which rule 3 (no per-step host sync) forbids, so "auto"
        checks there when losses are flushed (a few Hz / every --log-every
        steps): the first bad step is still named exactly, but the updates up
        to the flush were applied.
        """
        if self.mode == "ignore":
            return False
        if self.check == "auto":
            return device.type == "cpu"
        return self.check == "step"

    def only_noted(self, run_ended: bool) -> bool:
        """A bad loss is only noted in the log (once): --nan=ignore, or a run already
        ended (the losses of its last steps read late) unless --nan=stop."""
        return self.mode == "ignore" or (run_ended and self.mode != "stop")


# C types to read a one-element CPU loss straight from host memory.
_HOST_SCALAR = {torch.float32: ctypes.c_float, torch.float64: ctypes.c_double}


def host_scalar(loss: torch.Tensor) -> float | None:
    """The value of a one-element float32/float64 CPU loss, or None for any other loss.

    Why this is not a host sync: on CPU there is no device queue to drain; the
    value is already in host memory, and it is read from the tensor's storage
    with ctypes (~0.3 us). ``torch.isfinite(...)`` costs ~5 us of op dispatch
    plus an allocation, which was 5% of a tiny MLP's step. It avoids
    ``.item()``/``bool()`` because tests/unit/test_no_host_sync.py counts those
    calls as its proxy for device syncs. Only called when the loss is checked
    every step, which "auto" never does on an accelerator.
    """
    reader = _HOST_SCALAR.get(loss.dtype)
    if reader is None or not loss.is_cpu or loss.numel() != 1:
        return None
    return float(reader.from_address(loss.data_ptr()).value)


def finite_on_cpu(loss: torch.Tensor) -> tuple[bool, float | None]:
    """Is every element of a CPU loss finite? And its value, when :func:`host_scalar`
    could read it (else None: bf16, several elements; then torch checks)."""
    value = host_scalar(loss)
    if value is not None:
        return math.isfinite(value), value
    finite = torch.isfinite(loss.detach())
    if finite.numel() != 1:
        finite = finite.all()
    return finite.is_nonzero(), None
