"""Immutable views of a run, built by the trainer thread and read by front-ends.

Everything here is a frozen dataclass of plain Python values (no tensors), so a
snapshot can be handed across threads, pickled, or sent as JSON to a remote
client without touching torch state.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any


class RunState(StrEnum):
    LOADING = "LOADING"  # the console's view while the training process loads the script
    STARTING = "STARTING"
    RUNNING = "RUNNING"
    PAUSED = "PAUSED"
    STEPPING = "STEPPING"
    EVALUATING = "EVALUATING"
    NAN_PAUSED = "NAN-PAUSED"
    FINISHED = "FINISHED"
    STOPPED = "STOPPED"
    ERROR = "ERROR"

    @property
    def is_terminal(self) -> bool:
        return self in (RunState.FINISHED, RunState.STOPPED, RunState.ERROR)


@dataclass(frozen=True)
class EvalPoint:
    step: int
    loss: float
    accuracy: float | None = None


@dataclass(frozen=True)
class RunError:
    type: str
    message: str
    step: int

    def __str__(self) -> str:
        return f"{self.type} at step {self.step}: {self.message}"


@dataclass(frozen=True)
class NanEvent:
    """A non-finite training loss: where it happened and the lrs it happened at.

    ``skipped`` is True when the bad step's update was not applied (the loss is
    checked every step on CPU); False when it was found later, when losses were
    read (accelerators), and the updates up to ``detected_at`` were applied.
    """

    step: int
    loss: float
    lrs: tuple[tuple[str, float], ...]
    skipped: bool = True
    detected_at: int = 0
    rank: int | None = None  # under torchrun: the rank whose loss it was

    def __str__(self) -> str:
        lrs = ", ".join(f"{name}={lr:.3g}" for name, lr in self.lrs)
        on = f" on rank {self.rank}" if self.rank is not None else ""
        text = f"loss is {self.loss}{on} at step {self.step} (lr {lrs})"
        if self.skipped:
            return text + "; that step's update was skipped"
        return text + f"; found at step {self.detected_at}, updates up to it were applied"


@dataclass(frozen=True)
class RunStatus:
    script: str
    state: RunState
    epoch: int  # 1-based: the epoch the last step was taken in (Trainer.epoch_shown)
    step: int
    steps_per_sec: float
    elapsed: float
    device: str
    last_eval: EvalPoint | None = None
    error: RunError | None = None
    max_steps: int | None = None
    epochs: int | None = None
    nan: NanEvent | None = None  # set while NAN-PAUSED (and kept after, until the next one)
    checkpoint: str = ""  # the last checkpoint written, if any
    unfinished: str = ""  # a stop that gave up on a stuck step: which, and why (no checkpoint)
    world_size: int = 1  # ranks training this run (torchrun); the snapshot is rank 0's


@dataclass(frozen=True)
class StepView:
    """How each training step is taken, when it is more than forward, backward, step
    (engine/step.py): mixed precision, gradient clipping, accumulation, compile.

    The device-side figures (grad norm, counts, the scaler's scale) are read when a
    snapshot is built, never per step.
    """

    amp: str = ""  # "bf16" | "fp16" | "" (full precision)
    scale: float | None = None  # the GradScaler's loss scale (fp16), else None
    scaler_skipped: int = 0  # optimizer steps the scaler skipped (inf/NaN gradients)
    grad_clip: float | None = None  # the max norm gradients are clipped to; None: off
    grad_norm: float | None = None  # the total gradient norm of the last clipped step
    clipped: int = 0  # steps whose norm was above the max norm (so they were clipped)
    clip_steps: int = 0  # steps taken with clipping on: ``clipped`` is out of these
    accumulate: int = 1  # micro-batches per optimizer step
    compile: str = ""  # "" (off) | "compiling" | "compiled" | "failed: why (eager)"


@dataclass(frozen=True)
class GroupView:
    """One optimizer param group as the user sees it."""

    index: int
    name: str
    lr: float
    # Other hyper-parameters in the group: momentum, betas, weight_decay, ...
    # Values are floats, bools or tuples of floats.
    hparams: tuple[tuple[str, Any], ...]
    n_tensors: int
    n_params: int
    lr_history: tuple[float, ...] = ()
    # The step at which this group's optimizer state was last dropped (rebuild);
    # None: never, the state is the script's optimizer's own.
    state_reset_step: int | None = None
    state_tensors: int = 0  # tensors of optimizer state (momentum buffers, exp_avg...)
    state_bytes: int = 0

    def get(self, key: str, default: Any = None) -> Any:
        if key == "lr":
            return self.lr
        for k, v in self.hparams:
            if k == key:
                return v
        return default


@dataclass(frozen=True)
class SchedulerView:
    """The lr scheduler as a user needs it: what it is, where it is, what it does next."""

    cls: str
    step: int  # its last_epoch: how many times it has stepped
    # Per group, the lr its next step() will set (None: not knowable, e.g. a
    # ReduceLROnPlateau waiting for a metric, or past the end of a OneCycleLR).
    next_lrs: tuple[float | None, ...] = ()
    interval: str = "epoch"  # "step" | "epoch": when the engine steps it
    chain: tuple[str, ...] = ()  # the schedulers it wraps (SequentialLR, ChainedScheduler)


@dataclass(frozen=True)
class ModuleNode:
    """One module of the model: its direct parameters and where they live.

    ``groups`` names the groups holding this module's *own* parameters
    (recurse=False); ``subtree_groups`` those of the whole subtree.
    """

    path: str  # "" is the root module
    cls: str
    n_params: int  # own trainable parameter elements (direct, not shared)
    n_params_total: int  # whole subtree, each tensor counted once
    groups: tuple[str, ...]
    subtree_groups: tuple[str, ...]
    frozen: tuple[str, ...] = ()  # names of own parameters with requires_grad=False
    shared: tuple[tuple[str, str], ...] = ()  # (own name, path of the first owner)
    children: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return self.path.rsplit(".", 1)[-1] if self.path else "(model)"


@dataclass(frozen=True)
class LogEntry:
    """One line of the run's live log: commands, results, evals, errors."""

    seq: int
    step: int
    time: float
    kind: str  # "command" | "eval" | "error" | "info" | "metrics" | "nan"
    text: str
    ok: bool = True
    source: str = ""


@dataclass(frozen=True)
class Series:
    """A downsampled series: ``values[i]`` is the mean over ``steps[i]``'s bucket."""

    steps: tuple[int, ...] = ()
    values: tuple[float, ...] = ()

    def __len__(self) -> int:
        return len(self.values)


@dataclass(frozen=True)
class GroupSignals:
    """One param group's health signals, measured on the device every K optimizer steps
    (engine/signals.py): over the group's parameters with a dense gradient at that step.
    None: not measured (yet), or not for this group (no gradients; not an Adam)."""

    name: str  # the param group's name (GroupView.name)
    step: int = 0  # the step these were measured at
    grad_norm: float | None = None  # L2 norm of the group's gradients
    param_norm: float | None = None  # L2 norm of the group's weights
    update_ratio: float | None = None  # ||last update|| / ||weights||
    # Adam family: ||effective step|| (lr*m_hat/(sqrt(v_hat)+eps)); else None
    adam_step: float | None = None
    grad_norm_history: Series = field(default_factory=Series)  # downsampled, like loss_history
    update_ratio_history: Series = field(default_factory=Series)


@dataclass(frozen=True)
class Telemetry:
    """Throughput, progress and the device, as measured by engine/telemetry.py.

    None: not known (yet), or not measured here: every ``memory_*`` field off CUDA,
    every ``gpu_*`` field off CUDA or without nvidia-ml-py (``gpu_note`` says why).
    Step timings come from one step in ``sample_every`` (``sample_every`` 0: none yet).
    """

    samples_per_sec: float | None = None  # steps/s x the mean batch size (first tensor's dim 0)
    tokens_per_sec: float | None = None  # only when the inputs are integer sequences (B, T, ...)
    batch_size: float | None = None  # samples per step, mean over the measured steps
    data_wait: float | None = None  # s per step waiting for the train_loader (host clock)
    compute: float | None = None  # s per step after the batch: host clock; CUDA: device time
    data_fraction: float | None = None  # data_wait / (data_wait + compute)
    eta: float | None = None  # s until --max-steps / the last epoch, at the current rate
    sample_every: int = 0  # one step in this many is timed
    memory_allocated: int | None = None  # bytes, torch.cuda.memory_allocated(device)
    memory_reserved: int | None = None  # bytes, torch.cuda.memory_reserved(device)
    memory_peak: int | None = None  # bytes, torch.cuda.max_memory_allocated(device)
    gpu_utilization: float | None = None  # %, NVML: time a kernel ran in its last sample period
    gpu_memory_used: int | None = None  # bytes, NVML: the whole GPU's (every process)
    gpu_memory_total: int | None = None  # bytes, NVML
    gpu_power: float | None = None  # W, NVML
    gpu_temperature: float | None = None  # degrees C, NVML
    gpu_note: str = ""  # on CUDA, why the gpu_* fields are None ("" when read)


@dataclass(frozen=True)
class LrFindView:
    """The latest lr range test (``lrfind``, engine/lrfind.py): its points so far (at
    most lrfind.VIEW_POINTS, evenly downsampled; the journal's ``lrfind`` record has
    all), the suggested lr and the rule that chose it."""

    state: str  # "running" | "done" | "cancelled" | "failed"
    target: str  # the group/module/"all" swept
    lr_from: float = 0.0
    lr_to: float = 0.0
    steps: int = 0  # steps planned
    taken: int = 0  # steps done so far (progress = taken/steps)
    lrs: tuple[float, ...] = ()
    losses: tuple[float, ...] = ()
    suggestion: float | None = None
    rule: str = ""  # how the suggestion was chosen, in words
    at_step: int = 0  # the run's step when it ran (the run is restored to it)
    message: str = ""  # e.g. why it failed / was cancelled


@dataclass(frozen=True)
class PendingCommand:
    """A command scheduled with ``at STEP COMMAND`` (engine/schedule.py), not yet applied."""

    id: int
    step: int  # applied at the boundary where the run's step reaches this (after STEP steps)
    text: str  # canonical command text
    source: str = ""


@dataclass(frozen=True)
class Change:
    """An applied optimizer change (engine/history.py), as the console marks it on the plots."""

    step: int
    text: str  # canonical command text (e.g. "lr features 0.001", "undo", "rollback ...")
    source: str = ""  # "console" | "attach" | "stdin" | "at" | "engine" | ...
    groups: tuple[str, ...] = ()  # the groups it touched (empty: the whole optimizer)
    kind: str = ""  # "lr" | "decay" | "set" | "split" | "rebuild" | "clip" | "undo" | ...


@dataclass(frozen=True)
class Snapshot:
    seq: int
    status: RunStatus
    groups: tuple[GroupView, ...]
    # Module table; rebuilt only when group membership changes. Front-ends can
    # compare ``structure_version`` to skip re-rendering an unchanged tree.
    modules: tuple[ModuleNode, ...]
    structure_version: int
    loss_recent: Series = field(default_factory=Series)
    loss_history: Series = field(default_factory=Series)
    loss_min: float | None = None
    loss_last: float | None = None
    evals: tuple[EvalPoint, ...] = ()
    log: tuple[LogEntry, ...] = ()
    run_dir: str = ""
    optimizer: str = ""
    scheduler: SchedulerView | None = None
    telemetry: Telemetry = field(default_factory=Telemetry)
    step_view: StepView | None = None  # None: a plain step (no amp, clip, accumulation)
    lrfind: LrFindView | None = None  # the latest lr range test (kept after it ends)
    pending: tuple[PendingCommand, ...] = ()  # `at` commands not yet applied, by step
    changes: tuple[Change, ...] = ()  # applied optimizer changes, newest last (at most 500)
    signals: tuple[GroupSignals, ...] = ()  # one per group, same order as groups
    signal_every: int = 0  # K: measured every K steps (0: not yet)

    def group(self, name: str) -> GroupView | None:
        for g in self.groups:
            if g.name == name:
                return g
        return None

    def module(self, path: str) -> ModuleNode | None:
        for m in self.modules:
            if m.path == path:
                return m
        return None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def optimizer_state(self) -> dict[str, Any]:
        """The whole optimizer as JSON-ready values: class, every group's every
        hyper-parameter and state, the scheduler (``ls --json`` shows this)."""
        groups = []
        for g in self.groups:
            groups.append(
                {"name": g.name, "lr": g.lr, **{k: _json(v) for k, v in g.hparams}}
                | {
                    "n_tensors": g.n_tensors,
                    "n_params": g.n_params,
                    "state_reset_step": g.state_reset_step,
                    "state_tensors": g.state_tensors,
                    "state_bytes": g.state_bytes,
                }
            )
        sched = asdict(self.scheduler) if self.scheduler is not None else None
        if sched is not None:
            sched["class"] = sched.pop("cls")
        return {"class": self.optimizer, "groups": groups, "scheduler": sched}


def _json(v: Any) -> Any:
    if isinstance(v, tuple):
        return [_json(x) for x in v]
    if isinstance(v, float) and v != v:
        return "nan"
    return v
