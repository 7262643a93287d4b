"""The loop thread: the only code that touches the model, optimizer and scheduler.

Commands arrive on a queue and are applied between ``optimizer.step()`` and the
next forward, journaled (fsynced) first, then answered through a Future.
Losses stay on the device until a snapshot or a log line is due (no per-step
host sync). Front-ends pull snapshots; the trainer never calls into them.
"""

from __future__ import annotations

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
from tuiconsole.engine.checkpoint import save_checkpoint
from tuiconsole.engine.journal import JOURNAL_VERSION, Journal, MetricsWriter, read_journal
from tuiconsole.engine.metrics import LossTracker, LrHistory
from tuiconsole.engine.snapshot import (
    EvalPoint,
    LogEntry,
    RunError,
    RunState,
    RunStatus,
    Snapshot,
)
from tuiconsole.errors import CommandError
from tuiconsole.script import CLASS_INDEX_LOSSES, TrainingSpec

LOG_KEEP = 500


@dataclass
class RunConfig:
    run_dir: Path | None = None
    max_steps: int | None = None
    epochs: int | None = None
    device: str | None = None  # None: the script's `device`, else auto
    seed: int = 0
    log_every: int = 50
    replay: Path | None = None
    snapshot_interval: float = 0.1  # seconds between snapshots while someone reads them
    start_paused: bool = False
    decay_factor: float = 0.1


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


def _hint(exc: BaseException, batch: Any, criterion: Any) -> str:
    """A useful sentence for errors users hit most (the seed's float-label pitfall)."""
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
    return str(exc) or type(exc).__name__


class _Stop(Exception):
    pass


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
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tuiconsole-trainer", daemon=True)
        self._losses = LossTracker()
        self._lr_history = LrHistory()
        self._evals: deque[EvalPoint] = deque(maxlen=200)
        self._log: deque[LogEntry] = deque(maxlen=LOG_KEEP)
        self._log_seq = 0
        self._snap_seq = 0
        self._structure_version = 0
        self._modules_cache: tuple[int, tuple[Any, ...]] | None = None
        self._snapshot_wanted = True
        self._last_publish = 0.0
        self._rate_samples: deque[tuple[float, int]] = deque(maxlen=20)
        self._t0 = time.monotonic()
        self._epoch_iter: Iterator[Any] | None = None
        self._replay: deque[Any] = deque()
        self.run_dir = self.config.run_dir
        self.journal: Journal | None = None
        self.metrics: MetricsWriter | None = None
        G.ensure_names(self.optimizer, self.model)
        self._snapshot = self._build_snapshot()

    # ------------------------------------------------------------------ public API

    def start(self) -> Trainer:
        self._thread.start()
        return self

    def submit(self, command: str | C.Command, source: str = "ui") -> Future[C.CommandResult]:
        fut: Future[C.CommandResult] = Future()
        try:
            cmd = C.coerce(command)
        except CommandError as exc:
            text = command if isinstance(command, str) else str(command)
            fut.set_result(C.CommandResult(False, str(exc), text.strip()))
            self._append_log("command", f"{text.strip()}: {exc}", ok=False, source=source)
            return fut
        if not self._thread.is_alive() and self._thread.ident is not None:
            fut.set_result(C.CommandResult(False, "the run has ended", cmd.text))
            return fut
        self._queue.put((cmd, source, fut))
        return fut

    def latest_snapshot(self) -> Snapshot:
        self._snapshot_wanted = True
        return self._snapshot

    def wait_done(self, timeout: float | None = None) -> bool:
        return self._done.wait(timeout)

    def close(self, timeout: float = 30.0) -> None:
        if self._thread.is_alive():
            self.submit("stop", source="close")
            self._thread.join(timeout)
        self._close_files()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    # ------------------------------------------------------------------ the loop

    def _run(self) -> None:
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
        except BaseException as exc:  # pragma: no cover - last-resort guard
            self._fail(exc, None)
        finally:
            self._finish_up()

    def _setup(self) -> None:
        self.model.to(self.device)
        for state in self.optimizer.state.values():
            for k, v in state.items():
                if isinstance(v, torch.Tensor) and k != "step":
                    state[k] = v.to(self.device)
        self.model.train()
        if self.run_dir is not None:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self.journal = Journal(self.run_dir / "journal.jsonl")
            self.metrics = MetricsWriter(self.run_dir / "metrics.jsonl")
            self.journal.write(self._header())
        if self.config.replay is not None:
            _, entries = read_journal(self.config.replay)
            self._replay.extend(e for e in entries if e.ok)
            self._append_log(
                "info", f"replaying {len(self._replay)} command(s) from {self.config.replay}"
            )
        self._t0 = time.monotonic()
        self.state = RunState.PAUSED if self._paused else RunState.RUNNING
        self._publish()

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
        }

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

    def _apply_pending(self) -> None:
        while self._replay and self._replay[0].step <= self.step:
            entry = self._replay.popleft()
            cmd = C.parse(entry.cmd)
            if not cmd.control:
                self._handle(cmd, f"replay:{entry.source}", None)
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            self._handle(*item)

    def _next_batch(self) -> Any:
        while True:
            if self._epoch_iter is None:
                self._epoch_iter = iter(self.spec.train_loader)
            try:
                return next(self._epoch_iter)
            except StopIteration:
                self._epoch_iter = None
                self._end_epoch()
                if self.state == RunState.FINISHED:
                    return None

    def _end_epoch(self) -> None:
        self.epoch += 1
        if self.scheduler is not None and self.spec.scheduler_interval == "epoch":
            self._scheduler_step()
        if self.epochs is not None and self.epoch >= self.epochs:
            self._set_finished(f"finished {self.epoch} epoch(s) at step {self.step}")

    def _scheduler_step(self) -> None:
        sched = self.scheduler
        if type(sched).__name__ == "ReduceLROnPlateau":
            metric = self._evals[-1].loss if self._evals else self._losses.last
            if metric is None:
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
        try:
            batch = self._next_batch()
            if batch is None:
                return
            if self.device.type != "cpu":
                batch = _to_device(batch, self.device)
            model, optimizer = self.model, self.optimizer
            optimizer.zero_grad(set_to_none=True)
            if self.spec.training_step is not None:
                loss = self.spec.training_step(model, batch, self.criterion)
            else:
                inputs, targets = batch
                loss = self.criterion(model(inputs), targets)
            loss.backward()
            optimizer.step()
            if self.scheduler is not None and self.spec.scheduler_interval == "step":
                self._scheduler_step()
        except Exception as exc:
            self._fail(exc, locals().get("batch"))
            return
        self.step += 1
        self._losses.record(self.step, loss)
        if self._step_budget > 0:
            self._step_budget -= 1
            if self._step_budget == 0:
                self.state = RunState.PAUSED
                self._snapshot_wanted = True
        log_every = self.config.log_every
        if (log_every and self.step % log_every == 0) or (
            self._losses.pending >= self._losses.max_pending
        ):
            self._log_metrics()
        if self._snapshot_wanted and time.monotonic() - self._last_publish >= (
            self.config.snapshot_interval
        ):
            self._publish()

    def _fail(self, exc: BaseException, batch: Any) -> None:
        message = _hint(exc, batch, self.criterion)
        self.error = RunError(type(exc).__name__, message, self.step + 1)
        self.state = RunState.ERROR
        self._append_log("error", f"training raised {self.error}", ok=False)
        if self.journal is not None:
            self.journal.write(
                {
                    "type": "error",
                    "step": self.step + 1,
                    "time": time.time(),
                    "error": type(exc).__name__,
                    "message": message,
                }
            )
        self._done.set()
        self._publish()

    def _finish_up(self) -> None:
        try:
            self._flush_losses()
            self._log_metrics(force=True)
        finally:
            if not self.state.is_terminal:
                self.state = RunState.STOPPED
            self._publish()
            self._close_files()
            self._done.set()

    def _close_files(self) -> None:
        for f in (self.journal, self.metrics):
            if f is not None:
                f.close()

    # ------------------------------------------------------------------ metrics

    def _flush_losses(self) -> list[tuple[int, float]]:
        return self._losses.flush()

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
            "epoch": self.epoch,
            "loss": loss,
            "loss_mean": sum(v for _, v in values) / len(values) if values else loss,
            "lr": {str(g.get("name")): float(g["lr"]) for g in self.optimizer.param_groups},
        }
        if self.metrics is not None:
            self.metrics.write(record)
        if values:
            lrs = " ".join(f"{name}={lr:.3g}" for name, lr in record["lr"].items())
            self._append_log(
                "metrics", f"step {self.step} epoch {self.epoch} loss {loss:.4g} lr {lrs}"
            )

    # ------------------------------------------------------------------ commands

    def _handle(self, cmd: C.Command, source: str, fut: Future[C.CommandResult] | None) -> None:
        try:
            message = self._dispatch(cmd)
            result = C.CommandResult(True, message, cmd.text)
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
        self._record(cmd, source, result)
        if fut is not None:
            fut.set_result(result)

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
        self._snapshot_wanted = True

    def _dispatch(self, cmd: C.Command) -> str:
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
            return f"lr {changes} (in place; optimizer state kept)"
        if isinstance(cmd, C.Set):
            indices = G.resolve_target(cmd.target, self.model, opt)
            G.set_hparams(opt, sched, indices, cmd.items)
            names = ", ".join(str(opt.param_groups[i]["name"]) for i in indices)
            return f"set {C._items_text(cmd.items)} on {names} (in place; state kept)"
        if isinstance(cmd, C.Split):
            plan = G.plan_split(self.model, opt, cmd.group, cmd.modules, cmd.items)
            G.apply_split(opt, sched, plan)
            self._structure_version += 1
            g = opt.param_groups[-1]
            return (
                f"split {' '.join(cmd.modules)} into group {cmd.group!r} "
                f"({len(g['params'])} tensors, lr {float(g['lr']):.3g}); optimizer state kept"
            )
        if isinstance(cmd, C.Rebuild):
            new_opt = G.build_optimizer(opt, cmd.cls, cmd.items)
            had_state = len(opt.state)
            G.reattach_scheduler(sched, new_opt)
            self.optimizer = new_opt
            self._structure_version += 1
            return (
                f"rebuilt optimizer as {type(new_opt).__name__} with "
                f"{len(new_opt.param_groups)} group(s); momentum/Adam state of "
                f"{had_state} parameter(s) dropped"
            )
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
            path = Path(cmd.path) if cmd.path else self._default_checkpoint_path()
            save_checkpoint(path, self)
            return f"checkpoint written to {path}"
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
        self._append_log("eval", text)
        return text

    # ------------------------------------------------------------------ snapshots

    def _append_log(self, kind: str, text: str, ok: bool = True, source: str = "") -> None:
        self._log_seq += 1
        self._log.append(LogEntry(self._log_seq, self.step, time.time(), kind, text, ok, source))
        self._snapshot_wanted = True

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
            epoch=self.epoch,
            step=self.step,
            steps_per_sec=self._steps_per_sec(now),
            elapsed=now - self._t0,
            device=str(self.device),
            last_eval=self._evals[-1] if self._evals else None,
            error=self.error,
            max_steps=self.max_steps,
            epochs=self.epochs,
        )
        return Snapshot(
            seq=self._snap_seq,
            status=status,
            groups=G.group_views(opt, lr_hist),
            modules=self._modules(),
            structure_version=self._structure_version,
            loss_recent=self._losses.recent_series(),
            loss_history=self._losses.history.series(),
            loss_min=self._losses.min,
            loss_last=self._losses.last,
            evals=tuple(self._evals),
            log=tuple(self._log),
            run_dir=str(self.run_dir or ""),
            optimizer=type(opt).__name__,
        )

    def _publish(self) -> None:
        self._snapshot_wanted = False
        self._last_publish = time.monotonic()
        self._snapshot = self._build_snapshot()
