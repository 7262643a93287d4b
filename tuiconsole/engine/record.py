"""The run's record: its files, its log, its losses and evals, and the snapshot of them.

The trainer changes the run; the record keeps what the run did and shows it. The
loop thread tells it what happened (a journal record, a log line, a loss, an
eval, the metrics due) and asks it to publish a snapshot of the facts only the
trainer knows (:class:`RunFacts`). Front-ends read :attr:`RunRecord.snapshot`
from any thread: each snapshot is immutable, publishing swaps the reference.
Log lines may also come from another thread (submit()'s parse errors): the
run log is locked.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tuiconsole.engine import journal as J
from tuiconsole.engine.metrics import LossTracker
from tuiconsole.engine.ops import Optimization
from tuiconsole.engine.signals import Signals
from tuiconsole.engine.snapshot import (
    Change,
    EvalPoint,
    LogEntry,
    LrFindView,
    NanEvent,
    PendingCommand,
    RunError,
    RunState,
    RunStatus,
    Snapshot,
    StepView,
    Telemetry,
)
from tuiconsole.engine.telemetry import Meter, Progress
from tuiconsole.engine.views import RunLog, Views


def _no_step_view() -> StepView | None:
    return None


def _no_pending() -> tuple[PendingCommand, ...]:
    return ()


MAX_CHANGES = 500  # Snapshot.changes keeps the newest


@dataclass(frozen=True)
class RunShape:
    """What a snapshot shows that does not change while the run goes on."""

    script: str
    device: str
    max_steps: int | None
    epochs: int | None
    run_dir: Path | None
    scheduler_interval: str
    world_size: int = 1
    telemetry: bool = True  # RunConfig.telemetry
    signal_every: int | None = None  # RunConfig.signal_every (0: off; rank 0 alone measures)


@dataclass(frozen=True)
class RunFacts:
    """What only the trainer knows, as of the snapshot being built."""

    state: RunState
    step: int
    epoch: int  # 0-based, as the scheduler counts
    epoch_shown: int  # as every front-end says it (Trainer.epoch_shown)
    error: RunError | None
    nan: NanEvent | None
    checkpoint: str
    epoch_batches: int = 0  # batches taken in the current epoch (for the ETA)
    epoch_length: int | None = None  # batches in an epoch, if known


class RunRecord:
    """The run files (none until :meth:`open`), the log, the losses, the evals and
    the cached snapshot views; written by the loop thread only, except the log."""

    def __init__(self, shape: RunShape) -> None:
        self.shape = shape
        self.files = J.RunFiles()
        self.closed = False
        self.losses = LossTracker()
        self.evals: deque[EvalPoint] = deque(maxlen=200)
        self.views = Views()
        self.meter = Meter(shape.device, enabled=shape.telemetry)  # the loop times its steps
        self.signals = Signals(shape.signal_every)  # per-group signals, measured by the steps
        self.wanted = True  # a reader asked since the last publish, or a log line came
        self.snapshot: Snapshot | None = None  # the trainer publishes one as it is made
        # How steps are taken (engine/step.py: Stepping.view), read as a snapshot is built
        self.step_view: Callable[[], StepView | None] = _no_step_view
        self.lrfind: LrFindView | None = None  # the latest lr range test (engine/lrfind.py)
        # The `at` commands pending (engine/schedule.py), read as a snapshot is built
        self.pending: Callable[[], tuple[PendingCommand, ...]] = _no_pending
        self.changes: deque[Change] = deque(maxlen=MAX_CHANGES)  # applied optimizer changes
        self._log = RunLog()
        self._last_publish = 0.0
        self._metrics_logged_at = -math.inf
        self._t0 = time.monotonic()

    # ------------------------------------------------------------------ files

    @property
    def unopened(self) -> bool:
        """The run keeps files and they are not open yet: :meth:`open` is due."""
        return self.shape.run_dir is not None and self.files.journal is None

    def open(self, header: J.Record) -> None:
        """Open journal.jsonl and metrics.jsonl in the run dir; ``header`` is the first record."""
        assert self.shape.run_dir is not None
        self.files = J.RunFiles(self.shape.run_dir)
        self.files.write(header)

    def write(self, record: J.Record) -> None:
        """A journal record, fsynced; a failed write raises StorageError."""
        self.files.write(record)

    def write_quietly(self, step: int, record: J.Record) -> None:
        """On a failure/finish path a storage error is only logged: the run still ends."""
        if (exc := self.files.write_quietly(record)) is not None:
            self.note(step, "error", str(exc), ok=False)

    def metric(self, record: J.Record) -> None:
        self.files.metric(record)

    def close(self) -> None:
        self.closed = True
        self.files.close()

    # ------------------------------------------------------------------ what happened

    def note(self, step: int, kind: str, text: str, ok: bool = True, source: str = "") -> None:
        """A log line (from any thread); the next snapshot shows it."""
        self._log.append(step, kind, text, ok, source)
        self.wanted = True

    def changed(self, change: Change) -> None:
        """An optimizer change was applied (or a rollback, a resume): the plots mark it."""
        self.changes.append(change)
        self.wanted = True

    def tail(self) -> tuple[LogEntry, ...]:
        return self._log.tail()

    def evaluated(self, point: EvalPoint) -> None:
        self.evals.append(point)
        self.metric(J.eval_metrics(step=point.step, loss=point.loss, accuracy=point.accuracy))

    def train_metrics(
        self,
        facts: RunFacts,
        values: list[tuple[int, float]],
        lr: dict[str, float],
        min_interval: float,
        force: bool = False,
    ) -> None:
        """A metrics.jsonl line for the losses just flushed (``values``), and a log
        line at most every ``min_interval`` s (or ``force``: at the end)."""
        loss = values[-1][1] if values else self.losses.last
        if loss is None or not (values or force):
            return
        mean = sum(v for _, v in values) / len(values) if values else loss
        step, epoch = facts.step, facts.epoch_shown
        signals = self.signals.latest(list(lr))
        self.metric(
            J.train_metrics(
                step=step,
                epoch=epoch,
                loss=loss,
                loss_mean=mean,
                lr=lr,
                time=time.time(),
                **(signals or {}),
            )
        )
        now = time.monotonic()
        if values and (force or now - self._metrics_logged_at >= min_interval):
            self._metrics_logged_at = now
            lrs = " ".join(f"{name}={value:.3g}" for name, value in lr.items())
            at = f"step {step} epoch {epoch}" if epoch else f"step {step}"  # 0: a loop of its own
            self.note(step, "metrics", f"{at} loss {loss:.4g} lr {lrs}")

    # ------------------------------------------------------------------ snapshots

    def started(self) -> None:
        """Training begins: elapsed time counts from here."""
        self._t0 = time.monotonic()

    def due(self, interval: float) -> bool:
        """A snapshot is wanted and the last one is ``interval`` s old."""
        return self.wanted and time.monotonic() - self._last_publish >= interval

    def build(self, facts: RunFacts, o: Optimization) -> Snapshot:
        """A snapshot of the run now. The caller flushed the losses first (the flush
        may find a non-finite loss, which changes the facts)."""
        now, shape, views = time.monotonic(), self.shape, self.views
        steps_per_sec = views.steps_per_sec(now, facts.step)
        status = RunStatus(
            script=shape.script,
            state=facts.state,
            epoch=facts.epoch_shown,
            step=facts.step,
            steps_per_sec=steps_per_sec,
            elapsed=now - self._t0,
            device=shape.device,
            last_eval=self.evals[-1] if self.evals else None,
            error=facts.error,
            max_steps=shape.max_steps,
            epochs=shape.epochs,
            nan=facts.nan,
            checkpoint=facts.checkpoint,
            world_size=shape.world_size,
        )
        groups = views.groups(o)
        return Snapshot(
            seq=views.next_seq(),
            status=status,
            groups=groups,
            modules=views.modules(o),
            structure_version=views.structure_version,
            loss_recent=self.losses.recent_series(),
            loss_history=self.losses.history.series(),
            loss_min=self.losses.min,
            loss_last=self.losses.last,
            evals=tuple(self.evals),
            log=self.tail(),
            run_dir=str(shape.run_dir or ""),
            optimizer=type(o.optimizer).__name__,
            scheduler=views.scheduler(o, facts.step, facts.epoch, shape.scheduler_interval),
            telemetry=self._telemetry(steps_per_sec, facts),
            step_view=self.step_view(),
            lrfind=self.lrfind,
            pending=self.pending(),
            changes=tuple(self.changes),
            signals=self.signals.view([g.name for g in groups]),
            signal_every=self.signals.every_shown,
        )

    def _telemetry(self, steps_per_sec: float, facts: RunFacts) -> Telemetry:
        """The meter's view; under torchrun samples/s and tokens/s are the job's: rank 0's
        times the ranks (each steps with a batch of its own, in step with the others)."""
        view = self.meter.view(steps_per_sec, self._progress(facts))
        n = self.shape.world_size
        if n == 1:
            return view
        return dataclasses.replace(
            view,
            samples_per_sec=None if view.samples_per_sec is None else view.samples_per_sec * n,
            tokens_per_sec=None if view.tokens_per_sec is None else view.tokens_per_sec * n,
        )

    def _progress(self, facts: RunFacts) -> Progress:
        return Progress(
            state=facts.state,
            step=facts.step,
            max_steps=self.shape.max_steps,
            epochs=self.shape.epochs,
            epoch=facts.epoch,
            epoch_batches=facts.epoch_batches,
            epoch_length=facts.epoch_length,
        )

    def publish(self, facts: RunFacts, o: Optimization) -> Snapshot:
        self.wanted = False
        self._last_publish = time.monotonic()
        self.snapshot = self.build(facts, o)
        return self.snapshot

    def publish_stopped(self, step: int, epoch_shown: int, unfinished: str) -> None:
        """The run was abandoned (its loop is stuck): the last snapshot, STOPPED at
        ``step`` with what did not finish, and the log as it is. Built without the
        optimizer, which the stuck loop thread still owns. A new seq: front-ends
        (and the socket's encoder, which caches by seq) see a new view."""
        old = self.snapshot
        assert old is not None
        status = dataclasses.replace(
            old.status,
            state=RunState.STOPPED,
            step=step,
            epoch=epoch_shown,
            unfinished=unfinished,
        )
        self.snapshot = dataclasses.replace(
            old, seq=self.views.next_seq(), status=status, log=self.tail()
        )
