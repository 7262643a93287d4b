"""Save a run: model, optimizer (with the groups made by split/lr edits), scheduler,
step, epoch, RNG state and the journal position."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from tuiconsole.errors import CommandError

if TYPE_CHECKING:
    from tuiconsole.engine.trainer import Trainer

CHECKPOINT_VERSION = 1


def checkpoint_payload(trainer: Trainer) -> dict[str, Any]:
    sched = trainer.scheduler
    return {
        "version": CHECKPOINT_VERSION,
        "time": time.time(),
        "step": trainer.step,
        "epoch": trainer.epoch,
        "model": trainer.model.state_dict(),
        "optimizer_class": type(trainer.optimizer).__name__,
        "optimizer": trainer.optimizer.state_dict(),
        "scheduler": sched.state_dict() if sched is not None else None,
        "rng": torch.get_rng_state(),
        "journal": str(trainer.journal.path) if trainer.journal is not None else None,
    }


def save_checkpoint(path: Path, trainer: Trainer) -> None:
    """Write atomically (temp file + rename) so a crash never leaves half a checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        torch.save(checkpoint_payload(trainer), tmp)
        os.replace(tmp, path)
    except OSError as exc:
        raise CommandError(f"cannot write checkpoint {path}: {exc.strerror}") from None
