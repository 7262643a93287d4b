"""The run's checkpoints: what goes into one, where, and the last one written.

Three things write one: the ``checkpoint`` command, a failed step (the last
good step, when the weights are still those: faults.last_good_checkpoint) and
the end of the run (the final checkpoint). The loop thread alone calls these:
it owns the model and the optimizer. What each wrote, or why it could not, goes
to the run's log; a journal record names the path.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from tuiconsole.engine import faults
from tuiconsole.engine.checkpoint import CheckpointContent, CheckpointWriteError, save_checkpoint
from tuiconsole.engine.data import EpochData, rng_state
from tuiconsole.engine.ops import Optimization
from tuiconsole.engine.record import RunRecord
from tuiconsole.errors import CommandError


class Keeper:
    def __init__(
        self,
        o: Optimization,
        data: EpochData,
        script_sha256: str | None,
        record: RunRecord,
        ranks: Callable[[dict[str, Any]], list[dict[str, Any]]] | None = None,
        writes: bool = True,
        step_features: Callable[[], dict[str, Any]] | None = None,
        pending: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        self._ops, self._data, self._sha256, self._record = o, data, script_sha256, record
        self._step_features = step_features  # engine/step.py: Stepping.state
        # torchrun: every rank's RNGs and data position, gathered (a collective: every
        # rank calls write() together); only rank 0 ``writes``.
        self._ranks, self.writes = ranks, writes
        self.last = ""  # the path of the last checkpoint written ("" before the first)
        self._pending = pending  # engine/schedule.py: Schedule.state
        self.written: list[tuple[int, str]] = []  # (step, path) of each one written: rollback

    def write(
        self, path: Path | None, reason: str, step: int, epoch: int, together: bool = True
    ) -> Path:
        """A checkpoint of the run now (``path``, or checkpoint-step{step}.pt in the run
        dir, -2, -3... when that exists: a run back at a step after a rollback must not
        overwrite the file the journal's rollback names); CheckpointWriteError (a CommandError) when it could not be written.
        ``together``: every rank of a torchrun job is writing it now (not after an error)."""
        run_dir, journal = self._record.shape.run_dir, self._record.files.journal
        path = path or _free_name(run_dir or Path("."), step)
        o = self._ops
        mine = {"rng": rng_state(self._data.generators), "data": self._data.position()}
        ranks = self._ranks(mine) if self._ranks is not None and together else None
        if not self.writes:
            return path
        content = CheckpointContent(
            model=o.model,
            optimizer=o.optimizer,
            scheduler=o.scheduler,
            group_origin=o.group_origin,
            state_reset=o.state_reset,
            step=step,
            epoch=epoch,
            rng=mine["rng"],
            data=mine["data"],
            script_sha256=self._sha256,
            journal=str(journal.path) if journal is not None else None,
            reason=reason,
            ranks=ranks,
            world_size=self._record.shape.world_size,
            step_features=self._step_features() if self._step_features is not None else None,
            pending=self._pending() if self._pending is not None else None,
        )
        save_checkpoint(path, content)
        self.last = str(path)
        self.written.append((step, str(path)))
        del self.written[:-1000]
        return path

    def after_error(
        self, phase: str | None, step: int, epoch: int, device: torch.device
    ) -> str | None:
        """The last good step's checkpoint after a step failed in ``phase``, if the
        weights are still those of ``step`` and the run keeps files; its path."""
        why_not = faults.last_good_checkpoint(phase, step, self.last)
        if why_not is not None:
            self._record.note(step, "info", why_not, ok=False)
            return None
        if phase is None or self._record.shape.run_dir is None:
            return None
        self._ops.optimizer.zero_grad(set_to_none=True)  # free the failed step's gradients
        if device.type == "cuda":
            torch.cuda.empty_cache()
        try:
            path = self.write(None, "error", step, epoch, together=False)
        except (CommandError, RuntimeError) as exc:
            self._record.note(step, "error", f"could not write a checkpoint: {exc}", ok=False)
            return None
        self._record.note(
            step, "info", f"checkpoint of the last good step {step} written to {path}"
        )
        return str(path)

    def final(self, step: int, epoch: int, together: bool = True) -> tuple[str | None, bool]:
        """The final checkpoint: its path (None if it could not be written) and
        whether the disk was full (what the user counts on is not on disk)."""
        try:
            path = str(self.write(None, "final", step, epoch, together))
        except (CommandError, RuntimeError) as exc:
            self._record.note(step, "error", f"could not write the final checkpoint: {exc}")
            return None, isinstance(exc, CheckpointWriteError) and exc.disk_full
        self._record.note(step, "info", f"final checkpoint written to {path}")
        return path, False

    def kept(self, step: int) -> str:
        """What is on disk to resume from, in words (for a storage error's one line)."""
        return faults.kept(self._record.files.journal_whole, step, self.last)


def _free_name(run_dir: Path, step: int) -> Path:
    """checkpoint-step{step}.pt, or the first -N.pt of it that does not exist yet."""
    path, n = run_dir / f"checkpoint-step{step}.pt", 2
    while path.exists():
        path, n = run_dir / f"checkpoint-step{step}-{n}.pt", n + 1
    return path
