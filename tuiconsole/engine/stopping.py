"""How a run ends when another thread asks: stop, wait, and abandon a stuck step.

While the loop runs, its thread alone touches the model, the optimizer and the
run files. A closing front-end or a signal's waiter submits ``stop`` and waits
(:meth:`Stopping.wait`). A loop stuck inside a step (a loader that never
yields, a hung collective...) cannot answer: after the grace the waiter
abandons the run (:meth:`Stopping.abandon`), journaling the stop and an ``end``
record naming the step that did not finish, and closing the files. The loop,
if it ever wakes, writes nothing more: it ends the run only while
:attr:`Stopping.unfinished` is None.

The contract, by thread:

- the loop thread: :meth:`begin` before it starts, ``finishing = True`` while it
  writes its final checkpoint and end record, :meth:`released` once that end
  record is written (or could not be), :meth:`ended` as it returns;
- any other thread: :meth:`asked` on the first ``stop``, :meth:`wait`,
  :meth:`abandon`, and the read-only :attr:`looping` / :attr:`unfinished`.
"""

from __future__ import annotations

import contextlib
import threading

import torch

from tuiconsole.engine import faults
from tuiconsole.engine import groups as G
from tuiconsole.engine import journal as J
from tuiconsole.engine.record import RunRecord
from tuiconsole.engine.snapshot import RunState
from tuiconsole.errors import TuiconsoleError


class Stopping:
    def __init__(self) -> None:
        self.source: str | None = None  # who asked first to stop
        self.finishing = False  # the loop is writing its final checkpoint and end record
        self.looping = False  # inside the loop (set before it begins, cleared as it returns)
        self.unfinished: str | None = None  # set by abandon(): what did not finish, and why
        self._released = threading.Event()
        self._loop_ended = threading.Event()
        self._lock = threading.Lock()

    def begin(self) -> None:
        self.looping = True

    def asked(self, source: str) -> None:
        if self.source is None:
            self.source = source

    def released(self) -> None:
        self._released.set()

    def ended(self) -> None:
        self.looping = False
        self._loop_ended.set()

    def wait(self, grace: float) -> bool:
        """Wait for the loop's end record, ``grace`` s; longer while it writes its
        final checkpoint (a big model takes a while: not stuck; a second Ctrl+C
        still exits at once). True once it came and the loop returned (or took
        ``grace`` more to); False: the loop is stuck, abandon it."""
        released = self._released.wait(grace)
        while not released and self.finishing and self.looping:
            released = self._released.wait(grace)
        if released:
            self._loop_ended.wait(grace)  # it ends right after its end record
        return released

    def abandon(
        self,
        record: RunRecord,
        optimizer: torch.optim.Optimizer,
        waited: float,
        step: int,
        epoch_shown: int,
        where: faults.Where,
        evaluating: bool,
    ) -> bool:
        """End the run's files without the loop thread, stuck in step ``step + 1``
        (or in its final checkpoint) for ``waited`` s. False if the loop ended it
        first or it was abandoned already. No final checkpoint: the stuck thread
        owns the model, so the last one written stays the one to resume from."""
        with self._lock:
            if self._released.is_set() or self.unfinished is not None:
                return False
            finishing = self.finishing
            stuck = "in eval" if evaluating else where.stuck()
            self.unfinished = faults.unfinished(step, waited, stuck, finishing)
            record.note(step, "error", f"stop: {self.unfinished}; exiting without it", ok=False)
            # a full disk already said so (StorageError); the process leaves either way
            with contextlib.suppress(TuiconsoleError):
                if record.files.journal_whole:
                    record.write(
                        J.command_record(
                            step=step,
                            source=self.source or "close",
                            cmd="stop",
                            ok=True,
                            result=f"stopped at step {step}; {self.unfinished}",
                            groups=G.groups_record(optimizer),
                        )
                    )
                    record.write(
                        J.end_record(
                            step=step,
                            state=RunState.STOPPED.value,
                            checkpoint=None,
                            unfinished_step=None if finishing else step + 1,
                            unfinished_phase="final checkpoint" if finishing else where.phase,
                        )
                    )
            record.close()
            record.publish_stopped(step, epoch_shown, self.unfinished)
            self._released.set()
            return True
