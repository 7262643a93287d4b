"""A run that goes wrong: the error and the NaN event it shows, and what it writes.

faults.py holds the pure pieces (hints, the NaN policy, what was kept); this is
the run's side of them. The loop thread reports a failed step (:meth:`failed`),
a non-finite loss (:meth:`nonfinite`) or a final checkpoint lost to a full disk
(:meth:`final_lost`). Each sets the run state, writes its journal record and
log lines through the record and, for a failed step, has the keeper write the
last good step's checkpoint. The trainer then marks the run done and publishes.
"""

from __future__ import annotations

from typing import Any, Literal

import torch

from tuiconsole.engine import faults
from tuiconsole.engine import journal as J
from tuiconsole.engine.faults import NanPolicy, NonFiniteLoss
from tuiconsole.engine.keeper import Keeper
from tuiconsole.engine.record import RunRecord
from tuiconsole.engine.rundir import StorageError
from tuiconsole.engine.runstate import RunControl
from tuiconsole.engine.snapshot import NanEvent, RunError

# What a non-finite loss did: only noted in the log, the run failed (--nan=stop), or
# it is NAN-PAUSED.
NanOutcome = Literal["noted", "failed", "paused"]


class Failures:
    def __init__(
        self,
        record: RunRecord,
        keeper: Keeper,
        control: RunControl,
        policy: NanPolicy,
        criterion: Any,
        device: torch.device,
    ) -> None:
        self._record, self._keeper, self._control = record, keeper, control
        self._policy, self._criterion, self._device = policy, criterion, device
        self.error: RunError | None = None
        self.nan_event: NanEvent | None = None
        self._nan_noted = False

    def failed(
        self, exc: BaseException, batch: Any, phase: str | None, step: int, good: int, epoch: int
    ) -> None:
        """Step ``step`` raised ``exc`` in ``phase``; ``good`` is the last good step.

        ERROR state, the error journal record, and a checkpoint of the last good
        step if there is one: before ``optimizer.step()`` ("data", "forward") the
        weights are still those of step ``good``.
        """
        message = faults.hint(exc, batch, self._criterion)
        name = type(exc).__name__
        self.error = RunError(name, message, step)
        self._control.fail()
        self._record.note(good, "error", f"training raised {self.error}", ok=False)
        checkpoint = self._keeper.after_error(phase, good, epoch, self._device)
        if isinstance(exc, StorageError):  # say what was kept, in the one line
            self.error = RunError(name, f"{message}; {self._keeper.kept(good)}", step)
        record = J.error_record(
            step=step, error=name, message=message, phase=phase, checkpoint=checkpoint
        )
        self._record.write_quietly(good, record)

    def nonfinite(
        self,
        step: int,
        value: float,
        skipped: bool,
        good: int,
        lrs: tuple[tuple[str, float], ...],
        run_ended: bool,
        epoch: int,
        rank: int | None = None,
    ) -> NanOutcome:
        """A NaN/Inf loss at ``step`` (``skipped``: its update was not applied; ``good``
        is the last step taken): pause (NAN-PAUSED), stop (ERROR) or just note it.
        A skipped step still counts: the caller moves the run to ``step`` when paused."""
        event = NanEvent(step, value, lrs, skipped, step if skipped else good, rank)
        mode = self._policy.mode
        if self._policy.only_noted(run_ended):
            if not self._nan_noted:
                self._nan_noted = True
                text = f"{event} (--nan={mode}: training goes on)"
                self._record.note(good, "nan", text, ok=False)
            return "noted"
        self.nan_event = event
        self._record.write(J.nan_record(event, mode))
        self._record.metric(J.nan_metrics(step=step, loss=value))
        if mode == "stop":
            phase = "forward" if skipped else None
            self.failed(NonFiniteLoss(str(event)), None, phase, step, good, epoch)
            return "failed"
        self._control.nan_paused()
        text = (
            f"NAN-PAUSED: {event}. Lower the lr (e.g. `decay 0.1`) and `resume`, "
            "`rollback` to the last checkpoint before it first, or `stop`."
        )
        self._record.note(step if skipped else good, "nan", text, ok=False)
        return "paused"

    def final_lost(self, step: int) -> None:
        """The final checkpoint could not be written for a full disk: what the user
        counts on is not on disk, so the run ends in ERROR (exit 1)."""
        why = f"disk full: could not write the final checkpoint; {self._keeper.kept(step)}"
        self.error = RunError("StorageError", why, step)
        self._control.fail()
