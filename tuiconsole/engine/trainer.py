"""The loop thread: the only code that touches the model, optimizer and scheduler.

Commands arrive on a queue and are applied between ``optimizer.step()`` and the
next forward, journaled (fsynced) first, then answered through a Future.
Losses stay on the device until a snapshot or a log line is due (no per-step
host sync). Front-ends pull snapshots; the trainer never calls into them.

Failure behaviour (see the README's "Failure behaviour"): a step that raises
puts the run in ERROR and writes a checkpoint of the last good step; a
non-finite loss pauses (NAN-PAUSED), stops or is ignored per ``RunConfig.nan``;
every stop writes a final checkpoint and an ``end`` journal record.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import math
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tuiconsole.engine import commands as C
from tuiconsole.engine import groups as G
from tuiconsole.engine.checkpoint import (
    CheckpointWriteError,
    load_checkpoint,
    loader_generators,
    restore,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from tuiconsole.engine.journal import (
    JOURNAL_VERSION,
    Journal,
    JournalSession,
    MetricsWriter,
    load_replay,
)
from tuiconsole.engine.metrics import LossTracker, LrHistory
from tuiconsole.engine.rundir import StorageError, checked_target, prepare_run_dir
from tuiconsole.engine.snapshot import (
    EvalPoint,
    LogEntry,
    NanEvent,
    RunError,
    RunState,
    RunStatus,
    SchedulerView,
    Snapshot,
)
from tuiconsole.errors import CommandError, TuiconsoleError
from tuiconsole.script import CLASS_INDEX_LOSSES, TrainingSpec

LOG_KEEP = 500
# A log entry's text is cut to this: every new client gets the whole log, and a few
# hundred entries of command-line garbage must not make that frame too big to send.
LOG_TEXT_CHARS = 2000
# Commands applied at one step boundary, at most; the rest wait for the next one, so a
# flood of commands cannot starve training. An expensive command (eval: the whole
# eval_loader; checkpoint: a torch.save) uses the whole boundary. The boundary also
# ends once its commands took longer than the step before it: training keeps about
# half the time however fast commands come in.
COMMANDS_PER_STEP = 8
EXPENSIVE_COMMANDS = (C.Eval, C.Checkpoint)
NAN_MODES = ("pause", "stop", "ignore")
NAN_CHECKS = ("auto", "step", "flush")
OutOfMemoryError: type[BaseException] = getattr(
    torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError
)


DEFAULT_LOG_EVERY = 50
DEFAULT_LOG_MIN_INTERVAL = 1.0
# How long a stop waits for the step in flight before giving up on it (a loader
# blocked forever, a hung collective): see Trainer.close. TUICONSOLE_STOP_GRACE overrides.
DEFAULT_STOP_GRACE = 30.0


def stop_grace() -> float:
    try:
        return max(0.0, float(os.environ.get("TUICONSOLE_STOP_GRACE", DEFAULT_STOP_GRACE)))
    except ValueError:
        return DEFAULT_STOP_GRACE


@dataclass
class RunConfig:
    run_dir: Path | None = None
    max_steps: int | None = None
    epochs: int | None = None
    device: str | None = None  # None: the script's `device`, else auto
    seed: int = 0
    log_every: int = DEFAULT_LOG_EVERY  # a metrics.jsonl record every N steps...
    # ...and a metrics line in the run log (console, headless output) at most every
    # this many seconds (0: every time). `tuiconsole run` without --log-every uses
    # DEFAULT_LOG_MIN_INTERVAL: a tiny model does thousands of steps a second, and 50
    # log lines a second help nobody and cost the console redraws.
    log_min_interval: float = 0.0
    replay: Path | None = None
    snapshot_interval: float = 0.1  # seconds between snapshots while someone reads them
    start_paused: bool = False
    decay_factor: float = 0.1
    nan: str = "pause"  # what a non-finite loss does: "pause" | "stop" | "ignore"
    # When the loss is checked for NaN/Inf: "step" (every step, before the update;
    # exact), "flush" (when losses are read; no per-step work), "auto" (step on
    # CPU, flush on accelerators). See Trainer._check_every_step.
    nan_check: str = "auto"
    resume: Path | None = None  # a checkpoint to continue from
    final_checkpoint: bool = True  # write one when the run finishes or is stopped


def resolve_device(requested: str | None) -> torch.device:
    if requested in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(requested)
    except RuntimeError:
        raise CommandError(
            f"unknown device {requested!r} (use cpu, cuda, cuda:N or auto)"
        ) from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise CommandError(f"device {requested!r} asked for, but CUDA is not available here")
    return dev


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, tuple | list):
        return type(batch)(_to_device(b, device) for b in batch)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    return batch


def _one_line(text: str, limit: int = 500) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _hint(exc: BaseException, batch: Any, criterion: Any) -> str:
    """A useful sentence for errors users hit most (the seed's float-label pitfall)."""
    if isinstance(exc, SystemExit):
        return f"the script called sys.exit({exc.code!r}) inside the step"
    if isinstance(exc, KeyboardInterrupt):
        # only code raises it here: signals go to the main thread (a stop)
        return "KeyboardInterrupt raised inside the step"
    if isinstance(exc, OutOfMemoryError):
        first = ". ".join(_one_line(str(exc), 300).split(". ")[:2])  # what, and how much
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
    return _one_line(str(exc)) or type(exc).__name__


def _shown(text: str) -> str:
    """A command line as it may be echoed: control characters escaped (no terminal tricks)."""
    text = text.strip()
    return text if text.isprintable() else repr(text)


# C types to read a one-element CPU loss straight from host memory.
_HOST_SCALAR = {torch.float32: ctypes.c_float, torch.float64: ctypes.c_double}


def _host_scalar(loss: torch.Tensor) -> float | None:
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
    return reader.from_address(loss.data_ptr()).value


def _finite_on_cpu(loss: torch.Tensor) -> tuple[bool, float | None]:
    """Is every element of a CPU loss finite? And its value, when :func:`_host_scalar`
    could read it (else None: bf16, several elements; then torch checks)."""
    value = _host_scalar(loss)
    if value is not None:
        return math.isfinite(value), value
    finite = torch.isfinite(loss.detach())
    if finite.numel() != 1:
        finite = finite.all()
    return finite.is_nonzero(), None


class _Stop(Exception):
    pass


class NonFiniteLoss(ArithmeticError):
    """The training loss was NaN or Inf (``--nan=stop``)."""


class ReplayError(TuiconsoleError):
    """A journaled command that was applied in the original run fails on replay."""


class EmptyEpoch(TuiconsoleError):
    """train_loader yielded no batches for a whole epoch."""


@dataclass
class _Where:
    """How far the current step got: decides whether the weights are still "last good"."""

    phase: str = "data"  # "data" -> "forward" -> "optimizer" -> "scheduler"
    batch: Any = None


@dataclass
class _Undo:
    """What the optimizer was before the commands since the last good step.

    Armed by an accepted optimizer command; used if the next ``optimizer.step()``
    raises before it changed any parameter or state tensor (their version
    counters say so): the previous optimizer, its groups and the scheduler's view
    of them are put back and that step is taken with them.
    """

    optimizer: torch.optim.Optimizer
    groups: list[dict[str, Any]]
    sched_lists: list[tuple[Any, str, Any]]  # (scheduler, attribute, its value)
    had_state: set[int]
    group_origin: list[int]
    state_reset: list[int | None]
    commands: list[str]


class Trainer:
    def __init__(self, spec: TrainingSpec, config: RunConfig | None = None) -> None:
        self.spec = spec
        self.config = config or RunConfig()
        self.model = spec.model
        self.optimizer = spec.optimizer
        self.scheduler = spec.scheduler
        self.criterion = spec.criterion
        self.device = resolve_device(self.config.device or spec.device)
        self.epochs = self.config.epochs or spec.epochs or (None if self.config.max_steps else 1)
        self.max_steps = self.config.max_steps
        self.step = 0
        self.epoch = 0
        self.state = RunState.STARTING
        self.error: RunError | None = None
        self._paused = self.config.start_paused
        self._step_budget = 0
        self._queue: queue.SimpleQueue[tuple[C.Command, str, Future[C.CommandResult]]] = (
            queue.SimpleQueue()
        )
        self._step_ended = time.monotonic()  # when the last command boundary ended
        self._done = threading.Event()
        # Set once the loop has written its end record (or was abandoned): close() waits on it.
        self._released = threading.Event()
        self._abandon_lock = threading.Lock()
        self.unfinished: str | None = None  # set by abandon(): what did not finish, and why
        self._stop_source: str | None = None  # who asked first to stop
        self._finishing = False  # in _finish_up (final checkpoint, end record)
        # The loop runs once: in a thread of its own (start) or in the caller's (run).
        self._launched = False
        self._looping = False  # inside the loop (set before it begins, cleared as it returns)
        self._loop_ended = threading.Event()
        self._losses = LossTracker()
        self._lr_history = LrHistory()
        self._evals: deque[EvalPoint] = deque(maxlen=200)
        self._log: deque[LogEntry] = deque(maxlen=LOG_KEEP)
        # submit() logs parse errors from the caller's thread: seq numbers must stay unique
        self._log_lock = threading.Lock()
        self._num_threads = torch.get_num_threads()
        self._where = _Where()
        self._on_cpu = self.device.type == "cpu"
        self._nan_each_step = self._check_every_step
        self._log_seq = 0
        self._snap_seq = 0
        self._structure_version = 0
        self._modules_cache: tuple[int, tuple[Any, ...]] | None = None
        self._sizes_cache: tuple[tuple[int, ...], list[tuple[int, int]]] | None = None
        self._sched_cache: tuple[tuple[Any, ...], SchedulerView | None] | None = None
        self._snapshot_wanted = True
        self._last_publish = 0.0
        self._metrics_logged_at = -math.inf
        self._rate_samples: deque[tuple[float, int]] = deque(maxlen=20)
        self._t0 = time.monotonic()
        self._epoch_iter: Iterator[Any] | None = None
        self._epoch_batches = 0  # batches taken from the current epoch's iterator
        self._epoch_rng: dict[str, Any] | None = None  # the RNGs before that iter()
        self.loader_generators = loader_generators(spec.train_loader)
        self._replay: deque[Any] = deque()
        self._replay_header: dict[str, Any] = {}
        self._replay_session: JournalSession | None = None
        self.run_dir = self.config.run_dir
        self.journal: Journal | None = None
        self.metrics: MetricsWriter | None = None
        # For each group, the index of the script's group it descends from (split
        # copies its source's scheduler entries); a checkpoint needs it to rebuild
        # per-group scheduler functions such as LambdaLR's lr_lambdas.
        self.group_origin: list[int] = list(range(len(self.optimizer.param_groups)))
        # For each group, the step its optimizer state was last dropped (rebuild), or None.
        self.state_reset: list[int | None] = [None] * len(self.optimizer.param_groups)
        self.nan_event: NanEvent | None = None
        self.last_checkpoint = ""
        self._nan_noted = False
        self._resumed: tuple[Path, dict[str, Any], dict[str, Any]] | None = None
        self._closed = False
        self._undo: _Undo | None = None
        self._state_version = 0  # bumped when optimizer state may have grown (sizes cache)
        if self.config.nan not in NAN_MODES:
            raise TuiconsoleError(f"--nan must be one of {', '.join(NAN_MODES)}")
        if self.config.nan_check not in NAN_CHECKS:
            raise TuiconsoleError(f"nan_check must be one of {', '.join(NAN_CHECKS)}")
        G.ensure_names(self.optimizer, self.model)
        if self.config.resume is not None:
            restore(self, load_checkpoint(self.config.resume), self.config.resume)
        if self.config.replay is not None:
            self._load_replay(self.config.replay)
        self._snapshot = self._build_snapshot()

    @property
    def _check_every_step(self) -> bool:
        """Check each loss before its update (exact, free on CPU) or when losses are read.

        "step" pauses *at* the first bad step with the weights of the step before
        (its update is skipped). On an accelerator that needs one device->host
        read per step, which rule 3 (no per-step host sync) forbids, so "auto"
        checks there when losses are flushed (a few Hz / every --log-every
        steps): the first bad step is still named exactly, but the updates up
        to the flush were applied.
        """
        if self.config.nan == "ignore":
            return False
        if self.config.nan_check == "auto":
            return self.device.type == "cpu"
        return self.config.nan_check == "step"

    def _load_replay(self, path: Path) -> None:
        resumed = self.config.resume is not None
        session, entries = load_replay(
            path, self.step if resumed else None, self.config.resume if resumed else None
        )
        self._replay_header = session.header
        self._replay_session = session
        self._replay.extend(entries)

    def adopt_restored(
        self, optimizer: torch.optim.Optimizer, ckpt: dict[str, Any], origin: list[int]
    ) -> None:
        """Take over a restored optimizer and position (see checkpoint.restore)."""
        self.optimizer = optimizer
        self.group_origin = list(origin)
        reset = ckpt.get("state_reset")
        n = len(optimizer.param_groups)
        self.state_reset = [None] * n  # older checkpoints: unknown
        if (
            isinstance(reset, list)
            and len(reset) == n
            and all(r is None or (isinstance(r, int) and r >= 0) for r in reset)
        ):
            self.state_reset = list(reset)
        self.step = int(ckpt["step"])
        self.epoch = int(ckpt["epoch"])
        self._structure_version += 1
        G.ensure_names(self.optimizer, self.model)
        assert self.config.resume is not None
        self._resumed = (self.config.resume, ckpt["data"], ckpt["rng"])
        if ckpt.get("digest") is None:
            self._append_log(
                "info",
                f"warning: {self.config.resume} has no digest (written by an older "
                "tuiconsole), so damage to it cannot be detected; loaded anyway",
                ok=False,
            )

    @property
    def epoch_shown(self) -> int:
        """The epoch as every front-end, log line and message says it: 1-based, the
        epoch the last step was taken in (the first one before any step). A run that
        finished 8 epochs is "epoch 8"; 29 batches into the 8th it is "epoch 8" too."""
        started = self._epoch_iter is not None and self._epoch_batches > 0
        return self.epoch + 1 if started or self.epoch == 0 else self.epoch

    def data_position(self) -> dict[str, Any]:
        """Where the loader is: batches taken in this epoch, and the RNGs before its iter()."""
        if self._epoch_iter is None:
            return {"epoch_batches": None, "epoch_rng": None}
        return {"epoch_batches": self._epoch_batches, "epoch_rng": self._epoch_rng}

    # ------------------------------------------------------------------ public API

    def start(self) -> Trainer:
        """Open the run dir here, in the caller's thread (a run dir that is read-only,
        full or another user's is a TuiconsoleError before any training), then train."""
        self._launch()
        threading.Thread(target=self._run, name="tuiconsole-trainer", daemon=True).start()
        return self

    def run(self) -> Snapshot:
        """Train in the calling thread (a process's main thread) until the run ends.

        Front-ends in other threads (a socket server, a printer) use
        :meth:`submit` and :meth:`latest_snapshot` as with :meth:`start`. The
        run dir is opened first, so one that can't be written is a
        TuiconsoleError before any training. Returns the final snapshot.
        """
        self._launch()
        self._run()
        return self._snapshot

    def _launch(self) -> None:
        if self._launched:
            raise RuntimeError("a trainer runs its loop once")
        try:
            self._open_run_files()
        except BaseException:
            self._close_files()
            raise
        self._launched = self._looping = True

    def prepare(self) -> Trainer:
        """Set the run up (device, run files, resume, due replay commands) without a thread.

        For tests and tools that drive a trainer synchronously with
        :meth:`apply_now`; a trainer that was prepared can not be started.
        """
        if self._launched:
            raise RuntimeError("prepare() is for a trainer that is not started")
        if self.state == RunState.STARTING:
            self._setup()
            with contextlib.suppress(_Stop):
                self._apply_replay()
        return self

    def apply_now(self, command: str | C.Command, source: str = "direct") -> C.CommandResult:
        """Apply one command at once, in the caller's thread, through the loop's own path.

        Same parse, validation, optimizer surgery and journal line as a command
        sent with :meth:`submit`. Only for a trainer that was never started: the
        loop thread must stay the only writer of the model and optimizer.
        """
        if self._launched:
            raise RuntimeError("apply_now() is for a trainer that is not started; use submit()")
        self.prepare()
        try:
            cmd = C.coerce(command)
        except CommandError as exc:
            return C.CommandResult(False, str(exc), _shown(str(command)))
        try:
            return self._handle(cmd, source, None)
        except _Stop:
            return C.CommandResult(True, f"stopped at step {self.step}", cmd.text)

    def submit(self, command: str | C.Command, source: str = "ui") -> Future[C.CommandResult]:
        fut: Future[C.CommandResult] = Future()
        try:
            cmd = C.coerce(command)
        except CommandError as exc:
            text = _shown(command if isinstance(command, str) else str(command))
            fut.set_result(C.CommandResult(False, str(exc), text))
            self._append_log("command", f"{text}: {exc}", ok=False, source=source)
            return fut
        if self._launched and not self._looping:
            fut.set_result(C.CommandResult(False, "the run has ended", cmd.text))
            return fut
        if isinstance(cmd, C.Stop) and self._stop_source is None:
            self._stop_source = source
        self._queue.put((cmd, source, fut))
        return fut

    def step_now(self, n: int = 1) -> int:
        """Run up to ``n`` training steps at once, in the caller's thread.

        The loop's own step (and the replay commands due before it), for tests
        and tools driving a trainer that was never started, together with
        :meth:`apply_now`. Stops early when the run finishes, fails, is stopped
        or NaN-pauses. Returns the step reached.
        """
        if self._launched:
            raise RuntimeError("step_now() is for a trainer that is not started")
        self.prepare()
        for _ in range(n):
            try:
                self._apply_replay()
            except _Stop:
                break
            if self.state.is_terminal or self.state == RunState.NAN_PAUSED:
                break
            self._train_step()
        with contextlib.suppress(_Stop):
            self._apply_replay()  # commands due at the step reached, as the idle loop would
        return self.step

    def latest_snapshot(self) -> Snapshot:
        self._snapshot_wanted = True
        return self._snapshot

    def wait_done(self, timeout: float | None = None) -> bool:
        return self._done.wait(timeout)

    def close(self, timeout: float | None = None) -> None:
        """Stop the run and wait for its end record, at most ``timeout`` seconds
        (default :func:`stop_grace`); then give up on the step in flight (abandon)."""
        if self._looping and self.unfinished is None:
            grace = stop_grace() if timeout is None else timeout
            self.submit("stop", source="close")
            released = self._released.wait(grace)
            while not released and self._finishing and self._looping:
                # writing the final checkpoint (a big model takes a while): not stuck;
                # a second Ctrl+C still exits at once
                released = self._released.wait(grace)
            if released:
                self._loop_ended.wait(grace)  # it ends right after its end record
            else:
                self.abandon(grace)
        elif not self._launched and self.state != RunState.STARTING and not self._closed:
            self._finish_up()  # a prepared, synchronously driven trainer ends the same way
        self._close_files()

    @property
    def alive(self) -> bool:
        return self._looping

    def abandon(self, waited: float) -> None:
        """End the run's files without the loop thread, which is stuck in a step.

        Called from another thread once a stop has waited ``waited`` seconds. The
        loop thread is blocked inside the step (a loader that never yields...), so
        it is not touching the journal: this journals the stop and an ``end``
        record naming the step that did not finish, closes the files and marks
        the run done. No final checkpoint (the loop thread owns the model); the
        last one written stays the one to resume from. If the thread ever wakes
        up it writes nothing more.
        """
        with self._abandon_lock:
            if self._released.is_set() or self.unfinished is not None:
                return
            where = {
                "data": "in the loader",
                "forward": "in the forward/backward pass",
                "optimizer": "in optimizer.step()",
                "scheduler": "in scheduler.step()",
            }.get(self._where.phase, "")
            if self.state == RunState.EVALUATING:
                where = "in eval"
            step = self.step
            if self._finishing:  # the loop reached its end: a slow final checkpoint
                self.unfinished = f"the final checkpoint did not finish within {waited:g} s"
            else:
                self.unfinished = f"step {step + 1} did not finish within {waited:g} s" + (
                    f" (stuck {where})" if where else ""
                )
            self._append_log("error", f"stop: {self.unfinished}; exiting without it", ok=False)
            # a full disk already said so (StorageError); the process leaves either way
            with contextlib.suppress(TuiconsoleError):
                if self.journal is not None and self.journal.failed is None:
                    self.journal.write(
                        {
                            "type": "command",
                            "step": step,
                            "time": time.time(),
                            "source": self._stop_source or "close",
                            "cmd": "stop",
                            "ok": True,
                            "result": f"stopped at step {step}; {self.unfinished}",
                            "groups": G.groups_record(self.optimizer),
                        }
                    )
                    self.journal.write(
                        {
                            "type": "end",
                            "step": step,
                            "time": time.time(),
                            "state": RunState.STOPPED.value,
                            "checkpoint": None,
                            "unfinished": {
                                "step": None if self._finishing else step + 1,
                                "phase": "final checkpoint"
                                if self._finishing
                                else self._where.phase,
                            },
                        }
                    )
            self._close_files()
            old = self._snapshot
            status = dataclasses.replace(
                old.status, state=RunState.STOPPED, step=step, epoch=self.epoch
            )
            self._snapshot = dataclasses.replace(old, status=status, log=self._log_tail())
            self._released.set()
            self._done.set()

    # ------------------------------------------------------------------ the loop

    def _run(self) -> None:
        # OpenMP thread settings are per thread: without this, a loop thread runs
        # with the default count, not the one the script (or caller) chose, which
        # on small models costs ~6% (benchmarks/overhead.py).
        if torch.get_num_threads() != self._num_threads:
            torch.set_num_threads(self._num_threads)
        try:
            self._setup()
            while True:
                self._apply_pending()
                if self._can_step():
                    self._train_step()
                else:
                    self._idle()
        except _Stop:
            pass
        except KeyboardInterrupt:  # in the main thread with no stop handler: a stop
            self._stop_source = self._stop_source or "KeyboardInterrupt"
            self._append_log("info", f"interrupted at step {self.step}; stopping")
        except StorageError as exc:  # the journal or metrics could not be written
            self._fail(exc, None, "data", step=self.step)
        except BaseException as exc:  # pragma: no cover - last-resort guard
            self._fail(exc, None)
        finally:
            try:
                self._finish_up()
            finally:
                self._looping = False
                self._loop_ended.set()

    def _setup(self) -> None:
        self.model.to(self.device)
        for state in self.optimizer.state.values():
            for k, v in state.items():
                if isinstance(v, torch.Tensor) and k != "step":
                    state[k] = v.to(self.device)
        self.model.train()
        self._open_run_files()
        if self._resumed is not None:
            self._restore_position()
        if self.config.replay is not None:
            session = self._replay_session
            which = (
                f" (session {session.number}, journal line {session.line})"
                if session is not None and session.number > 1
                else ""
            )
            self._append_log(
                "info",
                f"replaying {len(self._replay)} command(s) from {self.config.replay}{which}",
            )
            if session is not None and session.after_error:
                self._append_log(
                    "info",
                    f"not replayed: {len(session.after_error)} command(s) journaled after "
                    "the run's error (the run had ended)",
                )
            sha = self._replay_header.get("sha256")
            if sha and self.spec.sha256 and sha != self.spec.sha256:
                self._append_log(
                    "info",
                    "warning: the script changed since the journal was written "
                    "(sha256 differs); the replay may not match",
                    ok=False,
                )
        self._t0 = time.monotonic()
        self.state = RunState.PAUSED if self._paused else RunState.RUNNING
        self._publish()

    def _open_run_files(self) -> None:
        """The run dir (0700, the user's own, stale temp files removed) and its files."""
        if self.run_dir is None or self.journal is not None:
            return
        prepare_run_dir(self.run_dir)
        self.journal = Journal(self.run_dir / "journal.jsonl")
        self.metrics = MetricsWriter(self.run_dir / "metrics.jsonl")
        self.journal.write(self._header())

    def _header(self) -> dict[str, Any]:
        return {
            "type": "header",
            "version": JOURNAL_VERSION,
            "time": time.time(),
            "script": str(self.spec.path.resolve()) if self.spec.path else None,
            "sha256": self.spec.sha256,
            "seed": self.config.seed,
            "torch": torch.__version__,
            "device": str(self.device),
            "optimizer": type(self.optimizer).__name__,
            "scheduler": type(self.scheduler).__name__ if self.scheduler is not None else None,
            "groups": G.groups_record(self.optimizer),
            # The same whole-optimizer view as the snapshot and `ls --json`: every
            # hyper-parameter, each group's state, the scheduler's step and next lrs.
            "optimizer_state": self._build_snapshot().optimizer_state(),
            "nan": self.config.nan,
        } | (
            {"resumed_from": str(self._resumed[0]), "resumed_step": self.step}
            if self._resumed is not None
            else {}
        )

    def _restore_position(self) -> None:
        """Resume: same shuffle for the current epoch, skip its taken batches, then RNG."""
        assert self._resumed is not None
        path, data, rng = self._resumed
        taken = data.get("epoch_batches")
        if taken is not None:
            epoch_rng = data["epoch_rng"]
            if isinstance(epoch_rng, torch.Tensor):  # an older checkpoint: torch's RNG only
                epoch_rng = {"torch": epoch_rng}
            set_rng_state(epoch_rng, self.loader_generators)
            self._epoch_rng = epoch_rng
            self._epoch_iter = iter(self.spec.train_loader)
            for i in range(taken):
                try:
                    next(self._epoch_iter)
                except StopIteration:
                    raise TuiconsoleError(
                        f"{path}: the checkpoint is {taken} batches into epoch "
                        f"{self.epoch + 1}, but train_loader now has only {i}"
                    ) from None
            self._epoch_batches = taken
        set_rng_state(rng, self.loader_generators)
        where = f", {taken} batch(es) into epoch {self.epoch_shown}" if taken else ""
        self._append_log("info", f"resumed from {path} at step {self.step}{where}")

    def _can_step(self) -> bool:
        if self.state in (RunState.FINISHED, RunState.ERROR, RunState.NAN_PAUSED):
            return False
        return not self._paused or self._step_budget > 0

    def _idle(self) -> None:
        """Paused or finished: wait for a command, keep snapshots fresh."""
        if self._snapshot_wanted:
            self._publish()
        try:
            item = self._queue.get(timeout=0.05)
        except queue.Empty:
            return
        self._handle(*item)

    def _apply_replay(self) -> None:
        """Journaled commands due at this step. Control commands are not replayed,
        except a resume/step that took the original run out of NAN-PAUSED."""
        while self._replay and self._replay[0][0].step <= self.step:
            if self.state == RunState.ERROR:
                return
            entry, cmd = self._replay.popleft()
            if cmd.control:
                if isinstance(cmd, C.Resume | C.Step) and self.state == RunState.NAN_PAUSED:
                    self._paused, self._step_budget = False, 0
                    self.state = RunState.RUNNING
                    self._append_log(
                        "info",
                        f"replay: resumed from NAN-PAUSED as the original run did "
                        f"(journal line {entry.line})",
                    )
                continue
            result = self._handle(cmd, f"replay:{entry.source}", None)
            if not result.ok:
                self._fail(
                    ReplayError(
                        f"journal line {entry.line} `{entry.cmd}` (step {entry.step}) was "
                        f"applied in the original run but fails now: {result.message}"
                    ),
                    None,
                    step=self.step,
                )
                return

    def _apply_pending(self) -> None:
        # Runs every step: the common case (nothing queued) must cost ~nothing.
        if self._replay:
            self._apply_replay()
        if self._queue.empty():
            return
        started = time.monotonic()
        step_took = started - self._step_ended  # the step just before this boundary
        budget = COMMANDS_PER_STEP
        while budget > 0 and not self._queue.empty():
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            budget -= COMMANDS_PER_STEP if isinstance(item[0], EXPENSIVE_COMMANDS) else 1
            self._handle(*item)
            if time.monotonic() - started > step_took:
                break
        self._step_ended = time.monotonic()

    def _next_batch(self) -> Any:
        while True:
            if self._epoch_iter is None:
                # Once per epoch: the RNG state the loader's shuffle draws from, so
                # a checkpoint can re-create this epoch's order on resume.
                self._epoch_rng = rng_state(self.loader_generators)
                self._epoch_iter = iter(self.spec.train_loader)
                self._epoch_batches = 0
            try:
                batch = next(self._epoch_iter)
            except StopIteration:
                if self._epoch_batches == 0:
                    raise EmptyEpoch(
                        f"train_loader yielded no batches in epoch {self.epoch + 1} (a "
                        "generator or one-shot iterator is used up after one epoch; use a "
                        "list or a DataLoader)"
                    ) from None
                self._epoch_iter = None
                self._end_epoch()
                if self.state == RunState.FINISHED:
                    return None
                continue
            self._epoch_batches += 1
            return batch

    def _end_epoch(self) -> None:
        self.epoch += 1
        if self.scheduler is not None and self.spec.scheduler_interval == "epoch":
            self._scheduler_step()
        if self.epochs is not None and self.epoch >= self.epochs:
            self._set_finished(f"finished {self.epoch} epoch(s) at step {self.step}")

    def _scheduler_step(self) -> None:
        sched = self.scheduler
        if type(sched).__name__ == "ReduceLROnPlateau":
            # It needs the metric on the host anyway (it compares floats). Flushing
            # here makes the metric the loss of *this* step, not of whenever the
            # last snapshot happened to read losses, so runs and replays agree.
            if self._evals:
                metric = self._evals[-1].loss
            else:
                self._flush_losses()
                metric = self._losses.last
            if metric is not None:
                sched.step(metric)
        else:
            sched.step()

    def _set_finished(self, text: str) -> None:
        self.state = RunState.FINISHED
        self._append_log("info", text)
        self._flush_losses()
        self._done.set()
        self._publish()

    def _train_step(self) -> None:
        if self.max_steps is not None and self.step >= self.max_steps:
            self._set_finished(f"reached --max-steps {self.max_steps}")
            return
        if self.epochs is not None and self.epoch >= self.epochs:  # resumed a finished run
            self._set_finished(f"finished {self.epoch} epoch(s) at step {self.step}")
            return
        where = self._where
        where.phase, where.batch = "data", None
        try:
            loss = self._one_step(where)
        except BaseException as exc:  # sys.exit / KeyboardInterrupt in a step too: see _hint
            # The traceback's frames hold this step's activations; drop them so
            # the memory is free again (an OOM must not leave the GPU full).
            exc.__traceback__ = None
            self._fail(exc, where.batch, where.phase)
            return
        if loss is None:  # the run finished, or a non-finite loss was handled
            return
        self.step += 1
        pending = self._losses.record(self.step, loss)
        if self._step_budget > 0:
            self._step_budget -= 1
            if self._step_budget == 0:
                self.state = RunState.PAUSED
                self._snapshot_wanted = True
        log_every = self.config.log_every
        if (log_every and self.step % log_every == 0) or pending >= self._losses.max_pending:
            self._log_metrics()
        if self._snapshot_wanted and time.monotonic() - self._last_publish >= (
            self.config.snapshot_interval
        ):
            self._publish()

    def _one_step(self, where: _Where) -> torch.Tensor | float | None:
        """One training step; returns the loss to record (a float if already read), or None."""
        batch = self._next_batch()
        if batch is None:
            return None
        where.phase, where.batch = "forward", batch
        if not self._on_cpu:
            batch = _to_device(batch, self.device)
        model, optimizer = self.model, self.optimizer
        optimizer.zero_grad(set_to_none=True)
        if self.spec.training_step is not None:
            loss = self.spec.training_step(model, batch, self.criterion)
            if not isinstance(loss, torch.Tensor):
                raise TypeError(
                    f"training_step must return the loss as a tensor, got {type(loss).__name__}"
                )
        else:
            inputs, targets = batch
            loss = self.criterion(model(inputs), targets)
        value = None
        if self._nan_each_step:
            # Read once, used twice: the NaN check and the loss record (a float
            # needs no detach now and no batched read later).
            finite, value = _finite_on_cpu(loss)
            if not finite:
                self._nonfinite(self.step + 1, loss.detach().float().mean().item(), skipped=True)
                return None
        loss.backward()
        where.phase = "optimizer"
        if self._undo is None:
            optimizer.step()
        else:
            self._guarded_step()
        where.phase = "scheduler"
        if self.scheduler is not None and self.spec.scheduler_interval == "step":
            self._scheduler_step()
        return loss if value is None else value

    # ------------------------------------------------------------------ undo

    def _arm_undo(self, cmd: C.Command) -> None:
        """Before an optimizer command: remember what to put back if the next step fails."""
        if self._undo is not None:  # several commands before one step: undo them all
            self._undo.commands.append(cmd.text)
            return
        opt = self.optimizer
        lists = []
        for sched in G.scheduler_chain(self.scheduler):
            lists.append((sched, "optimizer", sched.optimizer))
            for attr in G.SCHED_GROUP_LISTS:
                value = getattr(sched, attr, None)
                if isinstance(value, list):
                    lists.append((sched, attr, list(value)))
        self._undo = _Undo(
            optimizer=opt,
            groups=[
                {k: (v.detach().clone() if torch.is_tensor(v) else v) for k, v in g.items()}
                | {"params": list(g["params"])}
                for g in opt.param_groups
            ],
            sched_lists=lists,
            had_state={id(p) for p in opt.state},
            group_origin=list(self.group_origin),
            state_reset=list(self.state_reset),
            commands=[cmd.text],
        )

    def _guarded_step(self) -> None:
        """The first optimizer.step() after a command: undo the command(s) if it fails
        before touching anything, and take the step as it would have been."""
        undo, self._undo = self._undo, None
        assert undo is not None
        opt = self.optimizer
        watched = [p for g in opt.param_groups for p in g["params"]]
        watched += [v for st in opt.state.values() for v in st.values() if torch.is_tensor(v)]
        versions = [t._version for t in watched]
        try:
            opt.step()
            return
        except Exception as exc:
            if [t._version for t in watched] != versions:
                raise  # it changed something: an ordinary failure (ERROR, no checkpoint)
            error = f"{type(exc).__name__}: {_one_line(str(exc), 300)}"
        finally:
            self._state_version += 1  # the first step after a change may add state
        del watched
        if opt is not undo.optimizer:
            opt.state.clear()  # a rebuilt optimizer's partial state: free it before re-stepping
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
        del opt
        self._restore_undo(undo)
        self.optimizer.step()  # the step the run would have taken without the command(s)
        text = "; ".join(undo.commands)
        message = (
            f"undone `{text}`: the next optimizer.step() failed before changing any "
            f"parameter ({error}); the optimizer is as it was before, training goes on"
        )
        self._append_log("command", message, ok=False, source="engine")
        if self.journal is not None:
            self.journal.write(
                {
                    "type": "undo",
                    "step": self.step + 1,
                    "time": time.time(),
                    "commands": undo.commands,
                    "error": error,
                    "groups": G.groups_record(self.optimizer),
                }
            )

    def _restore_undo(self, undo: _Undo) -> None:
        opt = undo.optimizer
        opt.param_groups[:] = undo.groups
        for p in [p for p in opt.state if id(p) not in undo.had_state]:
            del opt.state[p]  # state the failed step created
        for sched, attr, value in undo.sched_lists:
            setattr(sched, attr, value)
        self.optimizer = opt
        self.group_origin = undo.group_origin
        self.state_reset = undo.state_reset
        self._structure_version += 1

    # ------------------------------------------------------------------ failures

    def _nonfinite(self, step: int, value: float, skipped: bool) -> None:
        """A NaN/Inf loss at ``step``: pause (NAN-PAUSED), stop (ERROR) or just note it."""
        lrs = tuple((str(g.get("name")), float(g["lr"])) for g in self.optimizer.param_groups)
        event = NanEvent(step, value, lrs, skipped, step if skipped else self.step)
        mode = self.config.nan
        if mode == "ignore" or (self.state.is_terminal and mode != "stop"):
            if not self._nan_noted:
                self._nan_noted = True
                self._append_log("nan", f"{event} (--nan={mode}: training goes on)", ok=False)
            return
        self.nan_event = event
        record = {"step": step, "time": time.time(), "loss": repr(value), "action": mode}
        if self.journal is not None:
            lr_map = dict(lrs)
            self.journal.write(
                {"type": "nan", **record, "skipped": skipped, "detected_at": event.detected_at}
                | {"lrs": lr_map}
            )
        if self.metrics is not None:
            self.metrics.write({"type": "nan", "step": step, "loss": value})
        if mode == "stop":
            self._fail(NonFiniteLoss(str(event)), None, "forward" if skipped else None, step=step)
            return
        if skipped:
            # The step happened (its batch was used) but changed nothing: it still
            # counts, so commands made while NAN-PAUSED are journaled at this step
            # and a replay applies them after it, as the user did.
            self.step = step
        self._paused, self._step_budget = True, 0
        self.state = RunState.NAN_PAUSED
        self._append_log(
            "nan",
            f"NAN-PAUSED: {event}. Lower the lr (e.g. `decay 0.1`) and `resume`, or `stop`.",
            ok=False,
        )
        self._publish()

    def _fail(
        self, exc: BaseException, batch: Any, phase: str | None = None, step: int | None = None
    ) -> None:
        """ERROR state, journal record, and a checkpoint of the last good step if there is one.

        ``phase`` says how far the failing step got: before ``optimizer.step()``
        ("data", "forward") the weights are still those of the last good step.
        """
        message = _hint(exc, batch, self.criterion)
        step = self.step + 1 if step is None else step
        self.error = RunError(type(exc).__name__, message, step)
        self.state = RunState.ERROR
        self._append_log("error", f"training raised {self.error}", ok=False)
        checkpoint = self._error_checkpoint(phase)
        if isinstance(exc, StorageError):  # say what was kept, in the one line
            self.error = RunError(type(exc).__name__, f"{message}; {self._kept()}", step)
        self._write_quietly(
            {
                "type": "error",
                "step": step,
                "time": time.time(),
                "error": type(exc).__name__,
                "message": message,
                "phase": phase,
                "checkpoint": checkpoint,
            }
        )
        self._done.set()
        self._publish()

    def _kept(self) -> str:
        """What is on disk after a storage failure, for the error line."""
        journal = self.journal
        kept = []
        if journal is not None:
            if journal.failed is None:
                kept.append(f"journal through step {self.step}")
            else:
                kept.append("the journal up to its last whole line")
        kept.append(
            f"last checkpoint {self.last_checkpoint}" if self.last_checkpoint else "no checkpoint"
        )
        return "kept: " + ", ".join(kept)

    def _write_quietly(self, record: dict[str, Any], writer: Any = None) -> None:
        """A journal record on a failure/finish path: a storage error here is only
        logged, so the run still ends (and stop/SIGTERM still work)."""
        writer = writer or self.journal
        if writer is None:
            return
        try:
            writer.write(record)
        except StorageError as exc:
            self._append_log("error", str(exc), ok=False)

    def _error_checkpoint(self, phase: str | None) -> str | None:
        if phase in ("optimizer", "scheduler"):
            earlier = (
                f"resume from the last checkpoint, {self.last_checkpoint}"
                if self.last_checkpoint
                else "no earlier checkpoint exists"
            )
            self._append_log(
                "info",
                f"no checkpoint written: the error came from inside {phase}.step(), so "
                f"step {self.step + 1} may be half applied; {earlier}",
                ok=False,
            )
            return None
        if phase is None or self.run_dir is None:
            return None
        self.optimizer.zero_grad(set_to_none=True)  # free the failed step's gradients
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        try:
            path = self._write_checkpoint(None, "error")
        except (CommandError, RuntimeError) as exc:
            self._append_log("error", f"could not write a checkpoint: {exc}", ok=False)
            return None
        self._append_log("info", f"checkpoint of the last good step {self.step} written to {path}")
        return str(path)

    def _write_checkpoint(self, path: Path | None, reason: str) -> Path:
        path = path or self._default_checkpoint_path()
        save_checkpoint(path, self, reason)
        self.last_checkpoint = str(path)
        return path

    def _finish_up(self) -> None:
        self._finishing = True
        checkpoint = None
        try:
            try:
                self._flush_losses()
                self._log_metrics(force=True)
            except StorageError as exc:
                if self.state != RunState.ERROR:
                    self._fail(exc, None, "data", step=self.step)
            if (
                self.config.final_checkpoint
                and self.run_dir is not None
                and self.state not in (RunState.ERROR, RunState.STARTING)
                and self.unfinished is None  # abandoned: the process is leaving
            ):
                try:
                    checkpoint = str(self._write_checkpoint(None, "final"))
                    self._append_log("info", f"final checkpoint written to {checkpoint}")
                except (CommandError, RuntimeError) as exc:
                    self._append_log("error", f"could not write the final checkpoint: {exc}")
                    if isinstance(exc, CheckpointWriteError) and exc.disk_full:
                        # what the user counts on is not on disk: that is an error (exit 1)
                        self.error = RunError(
                            "StorageError",
                            f"disk full: could not write the final checkpoint; {self._kept()}",
                            self.step,
                        )
                        self.state = RunState.ERROR
        finally:
            if not self.state.is_terminal:
                self.state = RunState.STOPPED
            self._write_quietly(
                {
                    "type": "end",
                    "step": self.step,
                    "time": time.time(),
                    "state": self.state.value,
                    "checkpoint": checkpoint,
                }
            )
            self._publish()
            self._close_files()
            self._answer_queued()
            self._done.set()
            self._released.set()

    def _answer_queued(self) -> None:
        """Commands that arrived too late: answer them, so no caller waits forever."""
        while True:
            try:
                cmd, _, fut = self._queue.get_nowait()
            except queue.Empty:
                return
            if not fut.done():
                fut.set_result(C.CommandResult(False, "the run has ended", cmd.text))

    def _close_files(self) -> None:
        self._closed = True
        for f in (self.journal, self.metrics):
            if f is not None:
                f.close()

    # ------------------------------------------------------------------ metrics

    def _flush_losses(self) -> list[tuple[int, float]]:
        values = self._losses.flush()
        # Checked here when the loss is not checked every step (--nan=ignore, or
        # an accelerator): the first bad step is named exactly, from these values.
        if values and self.state not in (RunState.NAN_PAUSED, RunState.ERROR):
            bad = next(((s, v) for s, v in values if not math.isfinite(v)), None)
            if bad is not None:
                self._nonfinite(bad[0], bad[1], skipped=False)
        return values

    def _log_metrics(self, force: bool = False) -> None:
        values = self._flush_losses()
        if not values and not force:
            return
        if not values and self._losses.last is None:
            return
        loss = values[-1][1] if values else self._losses.last
        record = {
            "type": "train",
            "step": self.step,
            "epoch": self.epoch_shown,
            "loss": loss,
            "loss_mean": sum(v for _, v in values) / len(values) if values else loss,
            "lr": {str(g.get("name")): float(g["lr"]) for g in self.optimizer.param_groups},
        }
        if self.metrics is not None:
            self.metrics.write(record)
        now = time.monotonic()
        if values and (force or now - self._metrics_logged_at >= self.config.log_min_interval):
            self._metrics_logged_at = now
            lrs = " ".join(f"{name}={lr:.3g}" for name, lr in record["lr"].items())
            self._append_log(
                "metrics", f"step {self.step} epoch {self.epoch_shown} loss {loss:.4g} lr {lrs}"
            )

    # ------------------------------------------------------------------ commands

    def _handle(
        self, cmd: C.Command, source: str, fut: Future[C.CommandResult] | None
    ) -> C.CommandResult:
        try:
            message = self._dispatch(cmd)
            result = C.CommandResult(True, message, cmd.text)
        except StorageError as exc:  # e.g. eval's metrics line: the run ends
            if fut is not None:
                fut.set_result(C.CommandResult(False, str(exc), cmd.text))
            raise
        except CommandError as exc:
            result = C.CommandResult(False, str(exc), cmd.text)
        except _Stop:
            result = C.CommandResult(True, f"stopped at step {self.step}", cmd.text)
            self._record(cmd, source, result)
            if fut is not None:
                fut.set_result(result)
            raise
        except Exception as exc:  # nothing a front-end sends may raise inside the loop
            result = C.CommandResult(False, f"{type(exc).__name__}: {exc}", cmd.text)
        try:
            self._record(cmd, source, result)
        except StorageError as exc:  # not journaled: the run ends (see _run)
            result = C.CommandResult(False, f"{result.message}; but {exc}", cmd.text)
            raise
        finally:
            if fut is not None:
                fut.set_result(result)
        return result

    def _record(self, cmd: C.Command, source: str, result: C.CommandResult) -> None:
        if self.journal is not None:
            self.journal.write(
                {
                    "type": "command",
                    "step": self.step,
                    "time": time.time(),
                    "source": source,
                    "cmd": cmd.text,
                    "ok": result.ok,
                    "result": result.message,
                    "groups": G.groups_record(self.optimizer),
                }
            )
        self._append_log("command", f"{cmd.text}: {result.message}", ok=result.ok, source=source)
        # Publish before the caller's future resolves: once submit() has answered,
        # snapshot() shows the command's effect (a key press is visible at once,
        # not one refresh later).
        self._publish()

    def _dispatch(self, cmd: C.Command) -> str:
        if isinstance(cmd, C.Lr | C.Decay | C.Set | C.Split | C.Rebuild):
            undo_before = self._undo
            self._arm_undo(cmd)
            try:
                return self._dispatch_optimizer(cmd)
            except BaseException:
                self._undo = undo_before  # refused: nothing changed, nothing to undo
                if undo_before is not None and undo_before.commands[-1] == cmd.text:
                    undo_before.commands.pop()
                raise
        return self._dispatch_control(cmd)

    def _dispatch_optimizer(self, cmd: C.Command) -> str:
        opt, sched = self.optimizer, self.scheduler
        if isinstance(cmd, C.Lr | C.Decay):
            indices = G.resolve_target(cmd.target, self.model, opt)
            if isinstance(cmd, C.Decay):
                factor, op = cmd.factor, "*"
            else:
                factor, op = cmd.value, cmd.op
            new = {}
            for i in indices:
                old = float(opt.param_groups[i]["lr"])
                new[i] = factor if op == "=" else old * factor if op == "*" else old / factor
            before = {i: float(opt.param_groups[i]["lr"]) for i in indices}
            G.set_lrs(opt, sched, new)
            changes = ", ".join(
                f"{opt.param_groups[i]['name']} {before[i]:.3g}->{new[i]:.3g}" for i in indices
            )
            return f"lr {changes} (in place; momentum/Adam state kept)"
        if isinstance(cmd, C.Set):
            indices = G.resolve_target(cmd.target, self.model, opt)
            G.set_hparams(opt, sched, indices, cmd.items)
            names = ", ".join(str(opt.param_groups[i]["name"]) for i in indices)
            return f"set {C._items_text(cmd.items)} on {names} (in place; state kept)"
        if isinstance(cmd, C.Split):
            plan = G.plan_split(self.model, opt, cmd.group, cmd.modules, cmd.items, sched)
            G.apply_split(opt, sched, plan)
            self.group_origin = [self.group_origin[old] for old, _ in plan.origin]
            self.state_reset = [self.state_reset[old] for old, _ in plan.origin]
            self._structure_version += 1
            made = opt.param_groups[len(opt.param_groups) - plan.n_new :]
            if len(made) == 1:
                g = made[0]
                into = f"group {cmd.group!r} ({len(g['params'])} tensors, lr {float(g['lr']):.3g})"
            else:
                parts = ", ".join(
                    f"{g['name']!r} ({len(g['params'])} tensors from {src!r})"
                    for g, src in zip(made, plan.source_names, strict=True)
                )
                into = (
                    f"{len(made)} groups, one per source group so each parameter keeps its "
                    f"hyper-parameters: {parts}"
                )
            return f"split {' '.join(cmd.modules)} into {into}; momentum/Adam state kept"
        if isinstance(cmd, C.Rebuild):
            for key, value in cmd.items:
                G.check_not_cycled(sched, key, value, opt.param_groups[0].get(key))
            old_lrs = [float(g["lr"]) for g in opt.param_groups]
            G.check_rebuild_scheduler(sched, G.optimizer_class(cmd.cls, opt))
            rebuilt = G.build_optimizer(opt, cmd.cls, cmd.items, self.model)
            new_opt = rebuilt.optimizer
            had_state = len(opt.state)
            G.rescale_after_rebuild(new_opt, sched, old_lrs)  # may refuse: nothing attached yet
            G.reattach_scheduler(sched, new_opt)
            self.optimizer = new_opt
            self.state_reset = [self.step] * len(new_opt.param_groups)
            self._structure_version += 1
            note = rebuilt.note()
            return (
                f"rebuilt optimizer as {type(new_opt).__name__} with "
                f"{len(new_opt.param_groups)} group(s); momentum/Adam state of "
                f"{had_state} parameter(s) dropped" + (f"; {note}" if note else "")
            )
        raise CommandError(f"unsupported command {cmd.text!r}")  # pragma: no cover

    def _dispatch_control(self, cmd: C.Command) -> str:
        if isinstance(cmd, C.Pause):
            if self.state.is_terminal:
                raise CommandError(f"the run is {self.state.value}")
            self._paused, self._step_budget = True, 0
            if self.state in (RunState.RUNNING, RunState.STEPPING):
                self.state = RunState.PAUSED
            return f"paused at step {self.step}"
        if isinstance(cmd, C.Resume):
            if self.state.is_terminal:
                raise CommandError(f"the run is {self.state.value}; nothing to resume")
            self._paused, self._step_budget = False, 0
            self.state = RunState.RUNNING
            return f"resumed at step {self.step}"
        if isinstance(cmd, C.Step):
            if self.state.is_terminal:
                raise CommandError(f"the run is {self.state.value}; cannot step")
            if self.state == RunState.NAN_PAUSED:
                self.state = RunState.PAUSED
            self._paused, self._step_budget = True, cmd.n
            self.state = RunState.STEPPING
            return f"stepping {cmd.n} step(s) from step {self.step}"
        if isinstance(cmd, C.Eval):
            return self._evaluate()
        if isinstance(cmd, C.Checkpoint):
            path = None
            if cmd.path:  # a run's files stay together: relative paths are in the run dir
                try:
                    path = checked_target(cmd.path, self.run_dir)
                except TuiconsoleError as exc:
                    raise CommandError(str(exc)) from None
            path = self._write_checkpoint(path, "command")
            return f"checkpoint of step {self.step} written to {path}"
        if isinstance(cmd, C.Stop):
            if self.state not in (RunState.FINISHED, RunState.ERROR):
                self.state = RunState.STOPPED
            raise _Stop
        raise CommandError(f"unsupported command {cmd.text!r}")  # pragma: no cover

    def _default_checkpoint_path(self) -> Path:
        base = self.run_dir or Path(".")
        return base / f"checkpoint-step{self.step}.pt"

    # ------------------------------------------------------------------ eval

    def _evaluate(self) -> str:
        loader = self.spec.eval_loader
        if loader is None:
            raise CommandError("the script defines no eval_loader")
        previous = self.state
        self.state = RunState.EVALUATING
        self._publish()
        model, crit = self.model, self.criterion
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        total = torch.zeros((), device=self.device, dtype=torch.float64)
        correct = torch.zeros((), device=self.device, dtype=torch.int64)
        n_items = 0
        classify = True
        try:
            with torch.random.fork_rng(devices=devices), torch.no_grad():
                model.eval()
                for batch in loader:
                    batch = _to_device(batch, self.device)
                    if self.spec.training_step is not None:
                        loss = self.spec.training_step(model, batch, crit)
                        n = 1
                        classify = False
                    else:
                        inputs, targets = batch
                        out = model(inputs)
                        loss = crit(out, targets)
                        n = len(targets)
                        if (
                            classify
                            and out.dim() == 2
                            and targets.dim() == 1
                            and not (targets.is_floating_point())
                        ):
                            correct += (out.argmax(dim=1) == targets).sum()
                        else:
                            classify = False
                    total += loss.detach().double() * n
                    n_items += n
        except Exception as exc:
            raise CommandError(f"eval failed: {type(exc).__name__}: {exc}") from None
        finally:
            model.train()
            self.state = previous
        if n_items == 0:
            raise CommandError("eval_loader yielded no batches")
        mean = float(total) / n_items
        acc = float(correct) / n_items if classify else None
        point = EvalPoint(self.step, mean, acc)
        self._evals.append(point)
        if self.metrics is not None:
            self.metrics.write({"type": "eval", "step": self.step, "loss": mean, "accuracy": acc})
        text = f"eval at step {self.step}: loss {mean:.4g}" + (
            f", accuracy {acc:.1%}" if acc is not None else ""
        )
        return text  # logged once, as the eval command's result

    # ------------------------------------------------------------------ snapshots

    def _append_log(self, kind: str, text: str, ok: bool = True, source: str = "") -> None:
        if len(text) > LOG_TEXT_CHARS:
            text = f"{text[: LOG_TEXT_CHARS - 40]}… ({len(text):,} characters, cut)"
        with self._log_lock:
            self._log_seq += 1
            self._log.append(
                LogEntry(self._log_seq, self.step, time.time(), kind, text, ok, source)
            )
        self._snapshot_wanted = True

    def _log_tail(self) -> tuple[LogEntry, ...]:
        with self._log_lock:
            return tuple(self._log)

    def _modules(self) -> tuple[Any, ...]:
        if self._modules_cache is None or self._modules_cache[0] != self._structure_version:
            self._modules_cache = (
                self._structure_version,
                G.module_table(self.model, self.optimizer),
            )
        return self._modules_cache[1]

    def _steps_per_sec(self, now: float) -> float:
        self._rate_samples.append((now, self.step))
        while len(self._rate_samples) > 2 and now - self._rate_samples[0][0] > 3.0:
            self._rate_samples.popleft()
        (t0, s0), (t1, s1) = self._rate_samples[0], self._rate_samples[-1]
        return (s1 - s0) / (t1 - t0) if t1 > t0 else 0.0

    def _build_snapshot(self) -> Snapshot:
        now = time.monotonic()
        self._flush_losses()
        opt = self.optimizer
        lr_hist = self._lr_history.sample(
            [(str(g.get("name")), float(g["lr"])) for g in opt.param_groups]
        )
        self._snap_seq += 1
        status = RunStatus(
            script=self.spec.name,
            state=self.state,
            epoch=self.epoch_shown,
            step=self.step,
            steps_per_sec=self._steps_per_sec(now),
            elapsed=now - self._t0,
            device=str(self.device),
            last_eval=self._evals[-1] if self._evals else None,
            error=self.error,
            max_steps=self.max_steps,
            epochs=self.epochs,
            nan=self.nan_event,
            checkpoint=self.last_checkpoint,
        )
        return Snapshot(
            seq=self._snap_seq,
            status=status,
            groups=G.group_views(opt, lr_hist, self.state_reset, self._state_sizes()),
            modules=self._modules(),
            structure_version=self._structure_version,
            loss_recent=self._losses.recent_series(),
            loss_history=self._losses.history.series(),
            loss_min=self._losses.min,
            loss_last=self._losses.last,
            evals=tuple(self._evals),
            log=self._log_tail(),
            run_dir=str(self.run_dir or ""),
            optimizer=type(opt).__name__,
            scheduler=self._scheduler_view(),
        )

    def _state_sizes(self) -> list[tuple[int, int]]:
        """Per group, the optimizer state it holds; recounted only when the state grew."""
        opt = self.optimizer
        key = (id(opt), self._structure_version, len(opt.state), self._state_version)
        if self._sizes_cache is None or self._sizes_cache[0] != key:
            self._sizes_cache = (key, G.state_sizes(opt))
        return self._sizes_cache[1]

    def _scheduler_view(self) -> SchedulerView | None:
        """The scheduler and the lrs its next step sets; recomputed when those can change."""
        if self.scheduler is None:
            return None
        opt = self.optimizer
        key = (
            self.step,
            self.epoch,
            self._structure_version,
            tuple(float(g["lr"]) for g in opt.param_groups),
        )
        if self._sched_cache is None or self._sched_cache[0] != key:
            view = G.scheduler_view(self.scheduler, opt, self.spec.scheduler_interval)
            self._sched_cache = (key, view)
        return self._sched_cache[1]

    def _publish(self) -> None:
        self._snapshot_wanted = False
        self._last_publish = time.monotonic()
        self._snapshot = self._build_snapshot()
