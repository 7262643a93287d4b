"""The loop: the only code that touches the model, optimizer and scheduler.

Commands arrive on a queue and are applied between ``optimizer.step()`` and the
next forward, journaled (fsynced) first, then answered through a Future.
Losses stay on the device until a snapshot or a log line is due (no per-step
host sync). Front-ends pull snapshots; the trainer never calls into them.

The trainer keeps the loop, the queue, the step and the run's position; the
rest lives beside it, each part given what it acts on (no calls back):

- record.py: what the run did and shows (run files, log, losses, evals,
  snapshots); the trainer tells it and asks it to publish RunFacts.
- stopping.py: stop / close / abandon between the loop thread and a closer.
- keeper.py: checkpoints (command, last good step, final).
- failures.py: the error and NaN event (policy and hints in faults.py): a step
  that raises puts the run in ERROR and keeps the last good step; a non-finite
  loss pauses (NAN-PAUSED), stops or is ignored per ``RunConfig.nan``.
- ops.py (optimizer operations) and control.py (pause, step, eval, checkpoint,
  stop): the commands; runstate.py: the state machine; journal.py: every
  record and the replay; data.py: the data position; evaluate.py: eval.

Every stop writes a final checkpoint and an ``end`` journal record.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tuiconsole.engine import commands as C
from tuiconsole.engine import control, faults, ops
from tuiconsole.engine import distributed as D
from tuiconsole.engine import groups as G
from tuiconsole.engine import journal as J
from tuiconsole.engine import rollback as RB
from tuiconsole.engine.checkpoint import (
    Restored,
    check_rng,
    checkpoint_digest,
    load_checkpoint,
    restore,
)
from tuiconsole.engine.config import (
    DEFAULT_LOG_EVERY,
    DEFAULT_LOG_MIN_INTERVAL,
    RunConfig,
    resolve_device,
    stop_grace,
)
from tuiconsole.engine.control import Stopped
from tuiconsole.engine.data import END_OF_EPOCH, EpochData, set_rng_state, to_device
from tuiconsole.engine.evaluate import evaluate
from tuiconsole.engine.failures import Failures
from tuiconsole.engine.faults import NonFiniteLoss, ReplayError
from tuiconsole.engine.history import History
from tuiconsole.engine.keeper import Keeper
from tuiconsole.engine.lrfind import LrFinder
from tuiconsole.engine.metrics import LossTracker
from tuiconsole.engine.record import RunFacts, RunRecord, RunShape
from tuiconsole.engine.rundir import StorageError
from tuiconsole.engine.runstate import RunControl
from tuiconsole.engine.schedule import Schedule, dry_check
from tuiconsole.engine.snapshot import (
    Change,
    EvalPoint,
    LogEntry,
    NanEvent,
    RunError,
    RunState,
    Snapshot,
)
from tuiconsole.engine.step import COMMANDS as STEP_COMMANDS
from tuiconsole.engine.step import Stepping, StepSettings, loss_of, take_step
from tuiconsole.engine.stopping import Stopping
from tuiconsole.engine.views import LOG_TEXT_CHARS
from tuiconsole.errors import CommandError, TuiconsoleError
from tuiconsole.script import TrainingSpec

# Commands applied at one step boundary, at most; the rest wait for the next one, so a
# flood of commands cannot starve training. An expensive command (eval: the whole
# eval_loader; checkpoint: a torch.save) uses the whole boundary. The boundary also
# ends once its commands took longer than the step before it: training keeps about
# half the time however fast commands come in.
COMMANDS_PER_STEP = 8
EXPENSIVE_COMMANDS = (C.Eval, C.Checkpoint, C.Rollback)
TUNING_COMMANDS = (C.UndoLast, C.At, C.AtCancel, C.Rollback)  # engine/history, schedule
Item = tuple[C.Command, str, Future[C.CommandResult]]  # a queued command: its source, its answer


def _shown(text: str) -> str:
    """A command line as it may be echoed: control characters escaped (no terminal tricks)."""
    text = text.strip()
    return text if text.isprintable() else repr(text)


class Trainer:
    # The loop is someone else's (engine/ownloop.py): rebuild keeps the optimizer object.
    OWN_LOOP = False

    def __init__(self, spec: TrainingSpec, config: RunConfig | None = None) -> None:
        self.config = config or RunConfig()
        # torchrun: every rank trains, rank 0 is the run (engine/distributed.py)
        self._ddp: nn.Module | None = None
        ranks = D.env_ranks() if self.config.distributed else None
        notes: list[str] = []
        self._dist: D.Coordinator | None = None
        if ranks is None:
            self.device = resolve_device(self.config.device or spec.device)
        else:
            spec, notes, self._dist = self._join(spec, ranks)
        self.spec = spec
        self.model = spec.model
        self.criterion = spec.criterion
        self.epochs = (
            None  # an own loop counts its epochs itself
            if self.OWN_LOOP
            else self.config.epochs or spec.epochs or (None if self.config.max_steps else 1)
        )
        self.max_steps = self.config.max_steps
        self.step = 0
        self.epoch = 0
        self.run_dir = self.config.run_dir
        self._record = RunRecord(
            RunShape(
                script=spec.name,
                device=str(self.device),
                max_steps=self.max_steps,
                epochs=self.epochs,
                run_dir=self.run_dir,
                scheduler_interval=spec.scheduler_interval,
                world_size=self._dist.world_size if self._dist is not None else 1,
                telemetry=self.config.telemetry,
                # under torchrun rank 0 alone measures the signals (the snapshot is its)
                signal_every=self.config.signal_every if self.leads else 0,
            )
        )
        self._control = RunControl(self.config.start_paused)
        self._ops = ops.Optimization.of(
            spec.model, spec.optimizer, spec.scheduler, in_place=self.OWN_LOOP
        )
        self._undo: ops.Undo | None = None
        self._history = History()  # `undo` (engine/history.py)
        self._schedule = Schedule()  # `at` (engine/schedule.py)
        self._record.pending = self._schedule.views
        self._source = ""  # of the command being applied
        self._resumed_from: tuple[int, str] | None = None  # (step, checkpoint): rollback
        # The scheduler's per-group lists as the script made them (lr_lambdas...): a
        # checkpoint's groups are mapped from these (group_origin), also at a rollback.
        self._script_lists = [
            (s, attr, list(v))
            for s in G.scheduler_chain(spec.scheduler)
            for attr in G.SCHED_GROUP_LISTS
            if isinstance(v := getattr(s, attr, None), list)
        ]
        self._data = EpochData(spec.train_loader)
        self._stepping = self._make_stepping(spec)  # amp, clip, accumulation, compile
        self._record.step_view = self._stepping.view
        d = self._dist
        self._keeper = Keeper(
            self._ops,
            self._data,
            spec.sha256,
            self._record,
            ranks=None if d is None else lambda mine: D.rank_states(d, mine),
            writes=d is None or d.leader,
            step_features=self._stepping.state,
            pending=self._schedule.state,
        )
        self._controls = control.Controls(
            self._control, self._record, self._keeper, self._ops, spec, self.device, self._evaluate
        )
        self._failures = Failures(
            self._record,
            self._keeper,
            self._control,
            self.config.nan_policy,
            self.criterion,
            self.device,
        )
        self._where = faults.Where()
        self._lrfind = LrFinder(self)  # `lrfind`: the lr range test (engine/lrfind.py)
        self._nan_each_step = self.config.nan_policy.every_step(self.device)
        self._queue: queue.SimpleQueue[tuple[C.Command, str, Future[C.CommandResult]]] = (
            queue.SimpleQueue()
        )
        self._step_ended = time.monotonic()  # when the last command boundary ended
        self._nan_found: tuple[int, float] | None = None  # to report at the next tick
        # torchrun on the CPU: the NaN check agreed every step is the tick (one all_reduce)
        self._flags_each_step = self._nan_each_step and not self.OWN_LOOP
        self._done = threading.Event()
        self._stopping = Stopping()
        # The loop runs once: in a thread of its own (start) or in the caller's (run).
        self._launched = False
        self._num_threads = torch.get_num_threads()
        self._on_cpu = self.device.type == "cpu"
        self._resumed: Restored | None = None
        G.ensure_names(self.optimizer, self.model)
        resume = self.config.resume
        if resume is not None:
            self._adopt(resume, load_checkpoint(resume))
            self._resumed_from = (self.step, str(resume))
            self._record.changed(Change(self.step, f"resume {resume}", "engine", (), "resume"))
        for note in self._stepping.notes:
            self._append_log("info", note)
        self._step_fn = self._one_step  # or step.take_step, once the step needs more
        self._choose_step()
        resume_step = self.step if resume is not None else None
        self._replay = J.Replay(self.config.replay, resume_step, resume)
        if self._dist is not None and self._dist.leader:
            self._append_log("info", D.world_note(self._dist.ranks, self.device, notes))
        self._record.snapshot = self._build_snapshot()

    def _make_stepping(self, spec: TrainingSpec) -> Stepping:
        """How steps are taken: the script's amp / grad_clip / accumulate / compile, or
        run's options (engine/step.py)."""
        return Stepping(StepSettings.of(spec, self.config), spec.model, self.device)

    def _choose_step(self) -> None:
        """The plain step while no step feature is on, else engine/step.py's."""
        self._step_fn = functools.partial(take_step, self) if self._stepping.on else self._one_step

    def _join(
        self, spec: TrainingSpec, ranks: D.Ranks
    ) -> tuple[TrainingSpec, list[str], D.Coordinator | None]:
        """This process is one rank of a torchrun job: its device, the process group,
        the coordination with the other ranks; each rank its shard of the data. Rank 0
        alone keeps the run's files. Returns the spec to train and notes for the log."""
        inner, ddp = D.unwrap(spec.model)
        notes: list[str] = []
        if self.OWN_LOOP:  # the user's loop: its process group, its DDP, its data
            self.device = resolve_device(spec.device)
            if not torch.distributed.is_initialized():
                raise TuiconsoleError(
                    "under torchrun, call torch.distributed.init_process_group() (and wrap "
                    "the model in DistributedDataParallel) before tuiconsole.steer()"
                )
            made = False
        else:
            self.device = D.rank_device(ranks, self.config.device or spec.device)
            made = D.join(ranks, self.device)
            train, note = D.shard(spec.train_loader, ranks, self.config.seed, train=True)
            evals, eval_note = D.shard(spec.eval_loader, ranks, self.config.seed, train=False)
            notes += [n for n in (note, eval_note) if n]
            spec = dataclasses.replace(spec, train_loader=train, eval_loader=evals)
        self._ddp = ddp
        spec = dataclasses.replace(spec, model=inner)
        coordinator = D.Coordinator(ranks, made, files=self.config.run_dir is not None)
        if not ranks.leader:  # rank 0 keeps the journal, metrics and checkpoints
            self.config = dataclasses.replace(self.config, run_dir=None)
        return spec, notes, coordinator

    def _evaluate(self, step: int) -> EvalPoint:
        """The ``eval`` command: the eval_loader under model.eval() and no_grad()."""
        spec = self.spec
        d = self._dist
        with self._stepping.autocast():  # as the steps are taken (eager, not compiled)
            return evaluate(
                spec.model,
                spec.criterion,
                spec.eval_loader,
                self.device,
                step,
                spec.training_step,
                reduce=None if d is None or d.broken else lambda local: D.reduce_eval(d, local),
            )

    def _adopt(self, path: Path, ckpt: dict[str, Any]) -> None:
        """Take over what a checkpoint restores: optimizer, group bookkeeping, position."""
        r = restore(
            ckpt,
            path,
            model=self.model,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            generators=self._data.generators,
            rank=self._dist.ranks.rank if self._dist is not None else 0,
            world_size=self._dist.world_size if self._dist is not None else 1,
        )
        o = self._ops
        opt = r.optimizer
        if o.in_place and opt is not o.optimizer:  # a rebuild had changed its class
            opt = G.become(o.optimizer, opt)
            G.reattach_scheduler(o.scheduler, opt)
        o.optimizer, o.group_origin, o.state_reset = opt, r.group_origin, r.state_reset
        self.step, self.epoch = r.step, r.epoch
        self._record.views.structure_version += 1
        G.ensure_names(self.optimizer, self.model)
        self._resumed = r
        self._schedule.load(r.pending)
        for note in self._stepping.load(r.step_features):
            self._append_log("info", f"resumed: {note}", ok=False)
        if r.note is not None:
            self._append_log("info", f"warning: {path}: {r.note}", ok=False)
        if not r.has_digest:
            self._append_log(
                "info",
                f"warning: {path} has no digest (written by an older "
                "tuiconsole), so damage to it cannot be detected; loaded anyway",
                ok=False,
            )

    # ------------------------------------------------------------------ what tests and tools read

    @property
    def leads(self) -> bool:
        """This process is the run: on its own, or rank 0 of a torchrun job."""
        return self._dist is None or self._dist.leader

    @property
    def journal(self) -> J.Journal | None:
        return self._record.files.journal

    @property
    def error(self) -> RunError | None:
        return self._failures.error

    @property
    def nan_event(self) -> NanEvent | None:
        return self._failures.nan_event

    @property
    def last_checkpoint(self) -> str:
        return self._keeper.last

    @property
    def unfinished(self) -> str | None:
        """Set by abandon(): what did not finish, and why."""
        return self._stopping.unfinished

    @property
    def _losses(self) -> LossTracker:
        return self._record.losses

    @property
    def _snapshot_wanted(self) -> bool:
        return self._record.wanted

    @_snapshot_wanted.setter
    def _snapshot_wanted(self, wanted: bool) -> None:
        self._record.wanted = wanted

    @property
    def state(self) -> RunState:
        return self._control.state

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        return self._ops.optimizer

    @property
    def scheduler(self) -> Any:
        return self._ops.scheduler

    @property
    def group_origin(self) -> list[int]:
        return self._ops.group_origin

    @property
    def state_reset(self) -> list[int | None]:
        return self._ops.state_reset

    @property
    def loader_generators(self) -> list[torch.Generator]:
        return self._data.generators

    @property
    def epoch_shown(self) -> int:
        """The epoch as every front-end, log line and message says it: 1-based, the
        epoch the last step was taken in (the first one before any step). A run that
        finished 8 epochs is "epoch 8"; 29 batches into the 8th it is "epoch 8" too."""
        return self.epoch + 1 if self._data.started or self.epoch == 0 else self.epoch

    def data_position(self) -> dict[str, Any]:
        """Where the loader is: batches taken in this epoch, and the RNGs before its iter()."""
        return self._data.position()

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
        return self.latest_snapshot()

    def _launch(self) -> None:
        if self._launched:
            raise RuntimeError("a trainer runs its loop once")
        try:
            self._open_run_files()
        except BaseException:
            self._record.close()
            raise
        self._launched = True
        self._stopping.begin()

    def prepare(self) -> Trainer:
        """Set the run up (device, run files, resume, due replay commands) without a thread.

        For tests and tools that drive a trainer synchronously with
        :meth:`apply_now`; a trainer that was prepared can not be started.
        """
        if self._launched:
            raise RuntimeError("prepare() is for a trainer that is not started")
        if self.state == RunState.STARTING:
            self._setup()
            with contextlib.suppress(Stopped):
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
        except Stopped:
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
        if self._launched and not self._stopping.looping:
            fut.set_result(C.CommandResult(False, "the run has ended", cmd.text))
            return fut
        if isinstance(cmd, C.Stop):
            self._stopping.asked(source)
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
            except Stopped:
                break
            if self.state.is_terminal or self.state == RunState.NAN_PAUSED:
                break
            self._train_step()
        with contextlib.suppress(Stopped):
            self._apply_replay()  # commands due at the step reached, as the idle loop would
        return self.step

    def latest_snapshot(self) -> Snapshot:
        self._record.wanted = True
        snapshot = self._record.snapshot
        assert snapshot is not None  # published as the trainer is made
        return snapshot

    def wait_done(self, timeout: float | None = None) -> bool:
        return self._done.wait(timeout)

    def close(self, timeout: float | None = None) -> None:
        """Stop the run and wait for its end record, at most ``timeout`` seconds
        (default :func:`stop_grace`); then give up on the step in flight (abandon)."""
        if self._stopping.looping and self.unfinished is None:
            grace = stop_grace() if timeout is None else timeout
            self.submit("stop", source="close")
            if not self._stopping.wait(grace):
                self.abandon(grace)
        elif not self._launched and self.state != RunState.STARTING and not self._record.closed:
            self._finish_up()  # a prepared, synchronously driven trainer ends the same way
        self._record.close()

    @property
    def alive(self) -> bool:
        return self._stopping.looping

    def abandon(self, waited: float) -> None:
        """End the run's files without the loop thread, which is stuck in a step.

        Called from another thread once a stop has waited ``waited`` seconds
        (see stopping.py): the stop and an ``end`` record naming the step that
        did not finish are journaled, the files closed, the run marked done.
        """
        evaluating = self.state == RunState.EVALUATING
        where, step = self._where, self.step
        if self._stopping.abandon(
            self._record, self.optimizer, waited, step, self.epoch_shown, where, evaluating
        ):
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
            self._loop(train=True)
        except BaseException as exc:
            self._ended_by(exc)
        finally:
            self._end()

    def _loop(self, *, train: bool) -> None:
        """Steps and commands until a stop (Stopped); without ``train``, only commands."""
        while True:
            self._apply_pending()
            if train and self._control.can_step:
                self._train_step()
            elif self._lrfind.running:  # a slice of the lr range test, then commands
                self._lrfind.slice()
            else:
                self._idle()

    def _ended_by(self, exc: BaseException) -> None:
        """What ended the loop, if it was not a stop: noted, or the run's error."""
        if isinstance(exc, Stopped):
            return
        if self._dist is not None and self._dist.broken is None:
            self._dist.broken = "this rank's loop ended on its own"  # no final gather
        if isinstance(exc, KeyboardInterrupt):  # in the main thread, no stop handler: a stop
            self._stopping.asked("KeyboardInterrupt")
            self._append_log("info", f"interrupted at step {self.step}; stopping")
        elif isinstance(exc, StorageError):  # the journal or metrics could not be written
            self._fail(exc, None, "data", step=self.step)
        else:  # pragma: no cover - last-resort guard
            self._fail(exc, None)

    def _end(self) -> None:
        """The final checkpoint and the end record; the loop is over."""
        try:
            self._finish_up()
        finally:
            if self._dist is not None:
                with contextlib.suppress(Exception):  # a debugging aid: never in the way
                    D.dump(self._dist, self.optimizer, self.model, self.step, self.state.value)
                self._dist.close()
            self._stopping.ended()

    @property
    def _together_to_the_end(self) -> bool:
        """Under torchrun: every rank ends here together (a stop applied at a tick), and
        rank 0 writes the final checkpoint with every rank's RNGs and data position."""
        d = self._dist
        return d is not None and d.broken is None and d.leader_files

    def _setup(self) -> None:
        self.model.to(self.device)
        for state in self.optimizer.state.values():
            for k, v in state.items():
                if isinstance(v, torch.Tensor) and k != "step":
                    state[k] = v.to(self.device)
        if self._dist is not None and self._ddp is None:
            self._ddp = D.wrap(self.model, self.device)  # a collective: every rank, here
        self.model.train()
        self._open_run_files()
        if self._resumed is not None:
            self._restore_position(self._resumed)
        for text, ok in self._replay.notes(self.spec.sha256):
            self._append_log("info", text, ok=ok)
        self._record.started()
        self._control.begin()
        self._publish()

    def _open_run_files(self) -> None:
        if self._record.unopened:
            self._record.open(self._header())

    def _header(self) -> J.Record:
        resumed = self.config.resume if self._resumed is not None else None
        return J.header_record(
            script=str(self.spec.path.resolve()) if self.spec.path else None,
            sha256=self.spec.sha256,
            seed=self.config.seed,
            torch_version=torch.__version__,
            device=str(self.device),
            optimizer=type(self.optimizer).__name__,
            scheduler=type(self.scheduler).__name__ if self.scheduler is not None else None,
            groups=G.groups_record(self.optimizer),
            optimizer_state=self._build_snapshot().optimizer_state(),
            nan=self.config.nan,
            resumed_from=str(resumed) if resumed is not None else None,
            resumed_step=self.step if resumed is not None else None,
            world_size=self._dist.world_size if self._dist is not None else 1,
            step=self._stepping.settings.record() if self._stepping.shown else None,
        )

    def _restore_position(self, r: Restored) -> None:
        """Resume: same shuffle for the current epoch, skip its taken batches, then RNG."""
        path = self.config.resume
        assert path is not None
        taken = self._data.restore(r.data, path, self.epoch)
        set_rng_state(r.rng, self._data.generators)
        where = f", {taken} batch(es) into epoch {self.epoch_shown}" if taken else ""
        self._append_log("info", f"resumed from {path} at step {self.step}{where}")

    def _idle(self) -> None:
        """Paused or finished: wait for a command, keep snapshots fresh."""
        if self._record.wanted:
            self._publish()
        d = self._dist
        if d is not None:
            if d.broken is None:
                held = None
                if d.leader:  # a little wait for a command, then the idle tick
                    with contextlib.suppress(queue.Empty):
                        held = self._queue.get(timeout=D.IDLE_TICK_S)
                d.flags(self.step, say=held is not None or self._wants_to_say(), idle=True)
                if d.exchange_due:
                    self._tick(held)
                elif held is not None:  # pragma: no cover - said, so an exchange is due
                    self._queue.put(held)
                return
            if not d.leader:  # the job is over for this rank: leave
                raise Stopped
        try:
            item = self._queue.get(timeout=0.05)
        except queue.Empty:
            return
        self._handle(*item)

    def _apply_replay(self) -> None:
        """Journaled commands due at this step. Control commands are not replayed,
        except a resume/step that took the original run out of NAN-PAUSED."""
        while self.state != RunState.ERROR:
            self._fire_scheduled()  # due `at` commands come first, as in the original run
            due = self._replay.due(self.step) if self._control.state != RunState.ERROR else None
            if due is None:
                break
            entry, cmd = due
            if entry.source == "at":  # applied again by the replayed `at`'s own queue
                continue
            if cmd.control:
                if isinstance(cmd, C.Resume | C.Step) and self.state == RunState.NAN_PAUSED:
                    self._control.nan_resumed()
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

    def _wants_to_say(self) -> bool:
        """This rank has something for an exchange with the others: commands (rank 0; on
        another rank, a stop its signals asked for), or a non-finite loss it found."""
        return self._nan_found is not None or not self._queue.empty()

    def _tick(self, held: Item | None = None) -> None:
        """The exchange of a tick (engine/distributed.py): rank 0's commands, applied on
        every rank at this step, in the same order; then what the ranks reported (a
        non-finite loss, a stop asked by a signal); then the optimizers compared."""
        d = self._dist
        assert d is not None
        items, stop = self._take_for_tick(held)
        report = D.Report(stop=stop, nan=self._nan_found)
        self._nan_found = None
        try:
            tick = d.tick([(c, s) for c, s, _ in items], report)
        except D.PeerLost as exc:
            for cmd, _, waiting in items:
                waiting.set_result(C.CommandResult(False, str(exc), cmd.text))
            self._fail(exc, None, step=self.step)
            return
        futures: list[Future[C.CommandResult] | None] = (
            [f for _, _, f in items] if d.leader else [None] * len(tick.commands)
        )
        changed = []
        try:
            for (cmd, source), fut in zip(tick.commands, futures, strict=True):
                futures = futures[1:]
                if isinstance(cmd, C.Stop):
                    self._stopping.asked(source)
                d.applied.append((self.step, cmd.text))
                result = self._handle(cmd, source, fut)
                if result.ok and ops.is_op(cmd):
                    changed.append(cmd.text)
            for rank, rep in enumerate(tick.reports):
                if rep.nan is not None and self.state not in (RunState.NAN_PAUSED, RunState.ERROR):
                    d.applied.append((self.step, f"nan from rank {rank} at step {rep.nan[0]}"))
                    self._nonfinite(*rep.nan, skipped=False, rank=rank)
            asked = next(((r, rep.stop) for r, rep in enumerate(tick.reports) if rep.stop), None)
            if asked is not None:
                source = asked[1] if asked[0] == 0 else f"rank {asked[0]}: {asked[1]}"
                self._stopping.asked(source)
                self._handle(C.coerce("stop"), source, None)
        finally:
            for fut in futures:
                if fut is not None and not fut.done():
                    fut.set_result(C.CommandResult(False, "the run has stopped", ""))
        if changed:
            try:
                d.agree(self.optimizer, self.model, f"`{'; '.join(changed)}` at step {self.step}")
            except D.PeerLost as exc:
                self._fail(exc, None, step=self.step)

    def _take_for_tick(self, held: Item | None) -> tuple[list[Item], str | None]:
        """Rank 0: the commands for this tick (``held``, taken already, first). Another
        rank takes only a stop (its signals'); commands go to rank 0."""
        items: list[Item] = []
        assert self._dist is not None
        leader, stop = self._dist.leader, None
        while len(items) < COMMANDS_PER_STEP:
            if held is not None:
                item, held = held, None
            else:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
            if leader:
                items.append(item)
                if isinstance(item[0], EXPENSIVE_COMMANDS):
                    break
            elif isinstance(item[0], C.Stop):
                stop = item[1]
                item[2].set_result(C.CommandResult(True, "stopping all ranks", item[0].text))
            else:
                item[2].set_result(
                    C.CommandResult(False, "commands go to rank 0 of the job", item[0].text)
                )
        return items, stop

    def _apply_pending(self) -> None:
        # Runs every step: the common case (nothing queued) must cost ~nothing.
        if self._replay or self._schedule.items:
            self._apply_replay()
        d = self._dist
        if d is not None and d.broken is None:
            if not d.exchange_due and not self._flags_each_step and d.due(self.step):
                d.flags(self.step, say=self._wants_to_say())
            if d.exchange_due:
                self._tick()
            return
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

    # ------------------------------------------------------------------ the step

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
            if self._record.evals:
                metric: float | None = self._record.evals[-1].loss
            else:
                self._flush_losses()
                metric = self._record.losses.last
            if metric is not None:
                sched.step(metric)
        else:
            sched.step()

    def _set_finished(self, text: str) -> None:
        self._control.finish()
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
            loss = self._step_fn(where)
        except BaseException as exc:  # sys.exit / KeyboardInterrupt in a step too: see hint
            # The traceback's frames hold this step's activations; drop them so
            # the memory is free again (an OOM must not leave the GPU full).
            exc.__traceback__ = None
            self._fail(exc, where.batch, where.phase)
            return
        if loss is None:  # the run finished, or a non-finite loss was handled
            return
        self.step += 1
        self._after_step(self._record.losses.record(self.step, loss))

    def _after_step(self, pending: int) -> None:
        """Step ``self.step`` is taken and its loss recorded (``pending`` losses unread):
        a `step N` counted, a metrics line and a snapshot when due."""
        record = self._record
        if self._control.stepped():  # a `step N` is done: show the pause at once
            record.wanted = True
        log_every = self.config.log_every
        if (log_every and self.step % log_every == 0) or pending >= record.losses.max_pending:
            self._log_metrics()
        if record.due(self.config.snapshot_interval):
            self._publish()

    def _one_step(self, where: faults.Where) -> torch.Tensor | float | None:
        """One training step; returns the loss to record (a float if already read), or None."""
        meter = self._record.meter
        timed = meter.sampled()  # one step in K is timed (engine/telemetry.py)
        while (batch := self._data.take(self.epoch)) is END_OF_EPOCH:
            self._end_epoch()
            if self.state == RunState.FINISHED:
                return None
        if timed:
            meter.took(batch)
        where.phase, where.batch = "forward", batch
        if not self._on_cpu:
            batch = to_device(batch, self.device)
        model, optimizer = self._ddp or self.model, self.optimizer
        optimizer.zero_grad(set_to_none=True)
        loss = loss_of(self.spec.training_step, self.criterion, model, batch)
        value = None
        if self._nan_each_step:
            # Read once, used twice: the NaN check and the loss record (a float
            # needs no detach now and no batched read later).
            finite, value = faults.finite_on_cpu(loss)
            if (not finite or self._dist is not None) and self._skip_nonfinite(finite, loss):
                return None
        loss.backward()
        where.phase = "optimizer"
        signals = self._record.signals
        measured = signals.before(optimizer)  # one step in K (engine/signals.py)
        if self._undo is None:
            optimizer.step()
        else:
            self._guarded_step(self._undo)
        if measured:
            signals.after(self.optimizer, self.step + 1)
        where.phase = "scheduler"
        if self.scheduler is not None and self.spec.scheduler_interval == "step":
            self._scheduler_step()
        if timed:
            meter.done()
        return loss if value is None else value

    def _skip_nonfinite(self, finite: bool, loss: torch.Tensor) -> bool:
        """The loss checked before the update (``_nan_each_step``): a non-finite one skips
        this step's update (True). Under torchrun every rank skips it or none does (DDP's
        backward is a collective), so every rank asks the others, each step."""
        d = self._dist
        if d is not None and d.broken is None:
            # the same all_reduce is this step's tick (see _flags_each_step)
            if not d.flags(self.step, skip=not finite, say=self._wants_to_say()):
                return False
            bad = loss.detach().float().mean().item() if not finite else None
            rank, worst = next((r, v) for r, v in enumerate(d.exchange(bad)) if v is not None)
            d.applied.append((self.step + 1, f"nan on rank {rank}"))
            self._nonfinite(self.step + 1, worst, skipped=True, rank=rank)
            return True
        if finite:
            return False
        self._nonfinite(self.step + 1, loss.detach().float().mean().item(), skipped=True)
        return True

    def _guarded_step(
        self, undo: ops.Undo, take: Callable[[torch.optim.Optimizer], object] | None = None
    ) -> None:
        """The first optimizer.step() after optimizer commands (see ops.guarded_step);
        ``take`` takes the step (engine/step.py's GradScaler), default optimizer.step()."""
        self._undo = None
        try:
            error = ops.guarded_step(self._ops, undo, self.device, take)
        finally:
            self._record.views.state_version += 1  # the first step after a change may add state
            if undo.restored:  # even if the step taken after it failed too
                self._record.views.structure_version += 1
        if error is None:
            return
        self._history.taken_back()
        self._record.changed(
            Change(self.step + 1, f"undone {'; '.join(undo.commands)}", "engine", (), "undone")
        )
        self._append_log("command", ops.undone_text(undo, error), ok=False, source="engine")
        self._record.write(
            J.undo_record(
                step=self.step + 1,
                commands=undo.commands,
                error=error,
                groups=G.groups_record(self.optimizer),
            )
        )

    # ------------------------------------------------------------------ failures and the end

    def _nonfinite(self, step: int, value: float, skipped: bool, rank: int | None = None) -> None:
        """A NaN/Inf loss at ``step``: pause (NAN-PAUSED), stop (ERROR) or just note it."""
        lrs = tuple((str(g.get("name")), float(g["lr"])) for g in self.optimizer.param_groups)
        run_ended = self.state.is_terminal
        outcome = self._failures.nonfinite(
            step, value, skipped, self.step, lrs, run_ended, self.epoch, rank
        )
        if outcome == "noted":
            return
        if outcome == "failed":
            self._done.set()
        elif skipped:
            # The step happened (its batch was used) but changed nothing: it still
            # counts, so commands made while NAN-PAUSED are journaled at this step
            # and a replay applies them after it, as the user did.
            self.step = step
        self._publish()

    def _fail(
        self, exc: BaseException, batch: Any, phase: str | None = None, step: int | None = None
    ) -> None:
        """The step after the last good one (or ``step``) raised in ``phase``: ERROR."""
        step = self.step + 1 if step is None else step
        d = self._dist
        if d is not None:
            if not isinstance(exc, D.PeerLost) and D.collective_error(exc):
                exc = d.lost(exc)  # a DDP all-reduce failed: say which rank went away
            d.broken = d.broken or str(exc)
        self._failures.failed(exc, batch, phase, step, self.step, self.epoch)
        if d is not None:
            d.close()  # peers waiting in a collective for this rank fail now, not at a timeout
        self._done.set()
        self._publish()

    def _finish_up(self) -> None:
        self._stopping.finishing = True
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
                and (self.run_dir is not None or self._together_to_the_end)
                and self.state not in (RunState.ERROR, RunState.STARTING)
                and self.unfinished is None  # abandoned: the process is leaving
            ):
                checkpoint, disk_full = self._keeper.final(
                    self.step, self.epoch, together=self._together_to_the_end
                )
                if disk_full:
                    self._failures.final_lost(self.step)
        finally:
            self._control.end()
            self._record.write_quietly(
                self.step,
                J.end_record(step=self.step, state=self.state.value, checkpoint=checkpoint),
            )
            self._publish()
            self._record.close()
            self._answer_queued()
            self._done.set()
            self._stopping.released()

    def _answer_queued(self) -> None:
        """Commands that arrived too late: answer them, so no caller waits forever."""
        while True:
            try:
                cmd, _, fut = self._queue.get_nowait()
            except queue.Empty:
                return
            if not fut.done():
                fut.set_result(C.CommandResult(False, "the run has ended", cmd.text))

    # ------------------------------------------------------------------ metrics

    def _flush_losses(self) -> list[tuple[int, float]]:
        values = self._record.losses.flush()
        # Checked here when the loss is not checked every step (--nan=ignore, or
        # an accelerator): the first bad step is named exactly, from these values.
        if values and self.state not in (RunState.NAN_PAUSED, RunState.ERROR):
            bad = next(((s, v) for s, v in values if not math.isfinite(v)), None)
            if bad is not None:
                self._found_nonfinite(*bad)
        return values

    def _found_nonfinite(self, step: int, value: float) -> None:
        """A non-finite loss found after its step was taken; under torchrun, the ranks
        act on it together at the next tick (it was found at a time of this rank's own)."""
        d = self._dist
        if d is None or d.broken is not None:
            self._nonfinite(step, value, skipped=False)
        elif self._nan_found is None:
            self._nan_found = (step, value)

    def _log_metrics(self, force: bool = False) -> None:
        values = self._flush_losses()
        lr = {str(g.get("name")): float(g["lr"]) for g in self.optimizer.param_groups}
        self._record.train_metrics(self._facts(), values, lr, self.config.log_min_interval, force)

    # ------------------------------------------------------------------ commands

    def _handle(
        self, cmd: C.Command, source: str, fut: Future[C.CommandResult] | None
    ) -> C.CommandResult:
        self._source, at = source, self.step  # a rollback moves the step: journaled at this one
        try:
            cmd = self._concrete(cmd)
            message = self._dispatch(cmd)
            result = C.CommandResult(True, message, cmd.text)
        except StorageError as exc:  # e.g. eval's metrics line: the run ends
            if fut is not None:
                fut.set_result(C.CommandResult(False, str(exc), cmd.text))
            raise
        except CommandError as exc:
            result = C.CommandResult(False, str(exc), cmd.text)
        except Stopped:
            result = C.CommandResult(True, f"stopped at step {self.step}", cmd.text)
            self._journal_command(cmd, source, result)
            if fut is not None:
                fut.set_result(result)
            raise
        except Exception as exc:  # nothing a front-end sends may raise inside the loop
            result = C.CommandResult(False, f"{type(exc).__name__}: {exc}", cmd.text)
        try:
            self._journal_command(cmd, source, result, at)
        except StorageError as exc:  # not journaled: the run ends (see _run)
            result = C.CommandResult(False, f"{result.message}; but {exc}", cmd.text)
            raise
        finally:
            if fut is not None:
                fut.set_result(result)
        return result

    def _journal_command(
        self, cmd: C.Command, source: str, result: C.CommandResult, step: int | None = None
    ) -> None:
        self._record.write(
            J.command_record(
                step=self.step if step is None else step,
                source=source,
                cmd=cmd.text,
                ok=result.ok,
                result=result.message,
                groups=G.groups_record(self.optimizer),
            )
        )
        self._append_log("command", f"{cmd.text}: {result.message}", ok=result.ok, source=source)
        # Publish before the caller's future resolves: once submit() has answered,
        # snapshot() shows the command's effect (a key press is visible at once,
        # not one refresh later).
        self._publish()

    def _dispatch(self, cmd: C.Command) -> str:
        """Apply one command; its result line, or a CommandError having changed nothing."""
        if isinstance(cmd, C.LrFind):
            return self._lrfind.apply(cmd)
        if self._lrfind.running:  # stop puts the run back first; most others wait
            self._lrfind.before(cmd)
        if isinstance(cmd, TUNING_COMMANDS):
            return self._tuning(cmd)
        if ops.is_op(cmd):
            before = self._history.before(cmd, self._ops, self.step, self._stepping)
            if self._undo is None:
                self._history.arm()
            result, self._undo = ops.apply(cmd, self._ops, self.step, self._undo)
            self._changed(self._history.applied(cmd, self._ops, self.step, before))
            if result.structure_changed:
                self._record.views.structure_version += 1
            return result.message
        if isinstance(cmd, STEP_COMMANDS):  # clip, accumulate: how the next step is taken
            before = self._history.before(cmd, self._ops, self.step, self._stepping)
            message = self._stepping.apply(cmd, own_loop=self.OWN_LOOP)
            self._choose_step()
            self._changed(self._history.applied(cmd, self._ops, self.step, before))
            return message
        return control.apply(cmd, self._controls, self._facts())

    # ------------------------------------------------------------------ undo, rollback, at

    def _changed(self, entry: Any, kind: str | None = None, text: str | None = None) -> None:
        """An applied change for Snapshot.changes (``entry``: a history.Entry)."""
        if entry is not None:
            self._record.changed(
                Change(
                    self.step,
                    entry.text if text is None else text,
                    self._source,
                    entry.groups,
                    entry.kind if kind is None else kind,
                )
            )

    def _tuning(self, cmd: C.Command) -> str:
        if isinstance(cmd, C.UndoLast):
            return self._undo_last()
        if isinstance(cmd, C.At):
            return self._schedule_at(cmd)
        if isinstance(cmd, C.AtCancel):
            item = self._schedule.cancel(cmd.id)
            return f"cancelled #{item.id}: `{item.cmd.text}` at step {item.step}"
        assert isinstance(cmd, C.Rollback)
        return self._rollback(cmd)

    def _undo_last(self) -> str:
        """``undo``: the newest change on the stack taken back (engine/history.py), its lr
        edits applied through ops (checked and guarded as any), the rest put back."""
        fresh = self._undo is None
        armed = self._undo if self._undo is not None else ops.Undo.capture(self._ops)
        stack = list(self._history.entries)
        reverted = self._history.undo(self._ops)  # CommandError: nothing changed
        for c in reverted.commands:
            if ops.is_op(c):
                ops.apply(c, self._ops, self.step, armed)
            else:
                self._stepping.apply(c, own_loop=self.OWN_LOOP)
                self._choose_step()
        reverted.commit()
        self._history.done(reverted)
        if reverted.structure_changed or any(ops.is_op(c) for c in reverted.commands):
            armed.commands.append("undo")
            if fresh:
                self._history.entries, kept = stack, self._history.entries
                self._history.arm()  # the guard's picture: the stack before this undo
                self._history.entries = kept
            self._undo = armed
        if reverted.structure_changed:
            self._record.views.structure_version += 1
        self._changed(reverted.entry, kind="undo", text="undo")
        left = len(self._history.entries)
        return f"{reverted.message}; {left} change(s) left to undo"

    def _schedule_at(self, cmd: C.At) -> str:
        """``at STEP COMMAND``: checked now, queued for the boundary at STEP."""
        if cmd.step <= self.step:
            raise CommandError(
                f"at {cmd.step}: the run is at step {self.step}; schedule a later step "
                "(or give the command now)"
            )
        if self.max_steps is not None and cmd.step > self.max_steps:
            raise CommandError(f"at {cmd.step}: the run ends at --max-steps {self.max_steps}")
        inner = cmd.command
        if ops.is_op(inner):
            dry_check(inner, self._ops)
        elif isinstance(inner, C.Accumulate) and self.OWN_LOOP:
            self._stepping.apply(inner, own_loop=True)  # refused there: says why
        item = self._schedule.add(cmd.step, inner, self._source)
        return (
            f"#{item.id}: `{inner.text}` at step {cmd.step} ({cmd.step - self.step} "
            f"step(s) from now; `at cancel {item.id}` cancels it)"
        )

    def _fire_scheduled(self) -> None:
        """The `at` commands due at this step, applied and journaled with source "at"."""
        while (item := self._schedule.due(self.step)) is not None:
            if item.cmd.control and item.source.startswith("replay:"):
                # as journaled control commands are: a replay does not pause, step or
                # write checkpoints over the original run's files
                self._append_log(
                    "info", f"replay: `at {item.step} {item.cmd.text}` not applied (control)"
                )
                continue
            self._handle(item.cmd, "at", None)

    def _concrete(self, cmd: C.Command) -> C.Command:
        """The command as it is journaled: a rollback names its file and digest (so a
        replay loads that very file, or refuses one that changed since)."""
        if not isinstance(cmd, C.Rollback):
            return cmd
        self._rollback_allowed()
        path = self._rollback_path(cmd.path)
        try:
            digest = checkpoint_digest(path)
        except TuiconsoleError as exc:
            raise CommandError(str(exc)) from None
        if cmd.digest is not None and cmd.digest != digest:
            raise CommandError(
                f"{path} changed since it was journaled (its sha256 is {digest[:12]}…, "
                f"the command names {cmd.digest[:12]}…); nothing changed"
            )
        return C.Rollback(str(path), digest)

    def _rollback_path(self, given: str | None) -> Path:
        run_dir = self.run_dir
        if given is None:
            known = RB.candidates(self._keeper.written, self._resumed_from, run_dir)
            nan = self.nan_event
            nan_step = nan.step if nan is not None and self.state == RunState.NAN_PAUSED else None
            return RB.default(known, self.step, nan_step)
        path = Path(given).expanduser()
        if not path.is_absolute() and run_dir is not None and (run_dir / path).is_file():
            path = run_dir / path
        if not path.is_file():
            raise CommandError(f"{given}: no such checkpoint file")
        return path.resolve()

    def _rollback(self, cmd: C.Rollback) -> str:
        """Load a checkpoint into this run, live: validated whole before anything changes."""
        replaying = self._rollback_allowed()
        assert cmd.path is not None
        return self._load_rollback(replaying, Path(cmd.path))

    def _rollback_allowed(self) -> bool:
        """Refuse a rollback where it can't be done (CommandError); True when replaying."""
        if self.OWN_LOOP:
            raise CommandError(
                "rollback: this loop is the script's own (its data and its step counter are "
                "its code's), so it cannot be moved back; stop, then start it with --resume"
            )
        if self._dist is not None:
            raise CommandError("rollback is not offered under torchrun; stop, then --resume")
        replaying = self._source.startswith("replay:")
        if not replaying and self.state in (RunState.RUNNING, RunState.STEPPING):
            raise CommandError(
                f"rollback: pause the run first (it is {self.state.value}); nothing changed"
            )
        if not replaying and self.state not in (RunState.PAUSED, RunState.NAN_PAUSED):
            raise CommandError(
                f"rollback is only for a PAUSED or NAN-PAUSED run (it is {self.state.value})"
            )
        return replaying

    def _load_rollback(self, replaying: bool, path: Path) -> str:
        """Check the checkpoint fits, then take it over: model, optimizer, scheduler,
        step, epoch, RNG, data position, clip/accumulate and the pending `at` commands."""
        try:
            ckpt = load_checkpoint(path)
            RB.check_fits(ckpt, path, self.model, self.optimizer, self.scheduler, self._data.length)
            check_rng(self._data.generators, ckpt, path)
        except TuiconsoleError as exc:
            raise CommandError(str(exc)) from None
        before = self.step
        pending, next_id = self._schedule.views(), self._schedule.next_id
        self._flush_losses()
        for sched, attr, values in self._script_lists:  # restore() maps them from the script's
            setattr(sched, attr, list(values))
        try:
            self._adopt(path, ckpt)
            r = self._resumed
            assert r is not None
            self._data.rewind()
            taken = self._data.restore(r.data, path, self.epoch)
            set_rng_state(r.rng, self._data.generators)
        except TuiconsoleError as exc:
            raise CommandError(
                f"rollback failed part-way ({exc}): the run's state is mixed now; roll back "
                "to another checkpoint, or stop"
            ) from None
        self._undo, self._nan_found = None, None
        self._history.clear()
        self._record.losses.rewind(self.step)  # the losses after it are of a gone future
        self._record.views.rewound()
        self._record.signals.reset()  # their history is of the gone future too
        self._choose_step()
        self._control.rolled_back(replaying)
        self._record.views.state_version += 1
        self._record.changed(Change(before, f"rollback {path}", self._source, (), "rollback"))
        where = f", {taken} batch(es) into epoch {self.epoch_shown}" if taken else ""
        # The checkpoint's `at` queue replaces this one: say what went with the gone
        # future, and never hand out an id the user saw before the rollback again.
        self._schedule.next_id = max(self._schedule.next_id, next_id)
        kept = set(self._schedule.views())
        gone = [p for p in pending if p not in kept]
        dropped = ""
        if gone:
            listed = ", ".join(f"#{p.id} at {p.step}: {p.text}" for p in gone)
            dropped = f"; dropped {len(gone)} `at` command(s) queued after it ({listed})"
        return (
            f"rolled back from step {before} to step {self.step} ({path}){where}; model, "
            f"optimizer, scheduler, RNG and data position as they were there{dropped}"
        )

    # ------------------------------------------------------------------ snapshots

    def _append_log(self, kind: str, text: str, ok: bool = True, source: str = "") -> None:
        self._record.note(self.step, kind, text, ok, source)

    def _log_tail(self) -> tuple[LogEntry, ...]:
        return self._record.tail()

    def _facts(self) -> RunFacts:
        return RunFacts(
            state=self.state,
            step=self.step,
            epoch=self.epoch,
            epoch_shown=self.epoch_shown,
            error=self.error,
            nan=self.nan_event,
            checkpoint=self.last_checkpoint,
            epoch_batches=self._data.batches if self._data.started else 0,
            epoch_length=self._data.length,
        )

    def _build_snapshot(self) -> Snapshot:
        self._flush_losses()  # first: a non-finite loss it finds changes the facts
        return self._record.build(self._facts(), self._ops)

    def _publish(self) -> None:
        self._flush_losses()
        self._record.publish(self._facts(), self._ops)


__all__ = [
    "COMMANDS_PER_STEP",
    "DEFAULT_LOG_EVERY",
    "DEFAULT_LOG_MIN_INTERVAL",
    "LOG_TEXT_CHARS",
    "NonFiniteLoss",
    "ReplayError",
    "RunConfig",
    "Trainer",
    "resolve_device",
    "stop_grace",
]
