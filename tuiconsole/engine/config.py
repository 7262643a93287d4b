"""RunConfig: what the engine reads, checked when it is made.

A front-end's own settings (the console's decay factor, its refresh rate) are not
here. Every field is coerced (a ``str`` path becomes a Path) or refused at
construction with a TuiconsoleError naming the field, so a bad value never
reaches the loop (where it would fail at step 1, or worse, later).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tuiconsole.engine.faults import NAN_CHECKS, NAN_MODES, NanPolicy
from tuiconsole.errors import CommandError, TuiconsoleError
from tuiconsole.script import AMP_MODES, max_norm

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


class ConfigError(TuiconsoleError, ValueError):
    """A RunConfig field with a value the engine cannot use."""


@dataclass
class RunConfig:
    run_dir: Path | None = None
    max_steps: int | None = None  # >= 0
    epochs: int | None = None  # >= 1
    device: str | None = None  # None: the script's `device`, else auto
    seed: int = 0
    log_every: int = DEFAULT_LOG_EVERY  # a metrics.jsonl record every N steps (0: none)...
    # ...and a metrics line in the run log (console, headless output) at most every
    # this many seconds (0: every time). `tuiconsole run` without --log-every uses
    # DEFAULT_LOG_MIN_INTERVAL: a tiny model does thousands of steps a second, and 50
    # log lines a second help nobody and cost the console redraws.
    log_min_interval: float = 0.0
    replay: Path | None = None
    snapshot_interval: float = 0.1  # seconds between snapshots while someone reads them
    start_paused: bool = False
    nan: str = "pause"  # what a non-finite loss does: "pause" | "stop" | "ignore"
    # When the loss is checked for NaN/Inf: "step" (every step, before the update;
    # exact), "flush" (when losses are read; no per-step work), "auto" (step on
    # CPU, flush on accelerators). See faults.NanPolicy.every_step.
    nan_check: str = "auto"
    resume: Path | None = None  # a checkpoint to continue from
    final_checkpoint: bool = True  # write one when the run finishes or is stopped
    # Under torchrun (WORLD_SIZE > 1): train as one rank of the job (engine/distributed.py).
    # False: this process trains alone whatever its environment says.
    distributed: bool = True
    # Throughput, data wait vs compute, ETA, GPU state in the snapshot (engine/telemetry.py);
    # off only to measure what it costs (benchmarks/telemetry.py).
    telemetry: bool = True
    # Per-group signals (grad norm, update ratio, Adam step: engine/signals.py), measured
    # one optimizer step in K: None picks K from a time budget; N fixes it; 0: off.
    signal_every: int | None = None
    # The training step (engine/step.py); None: the script's value (script.py). Given
    # here (`run --amp/--grad-clip/--accumulate/--compile`), they win over the script's.
    amp: str | None = None  # "bf16" | "fp16" | "off"
    grad_clip: float | str | None = None  # a max norm > 0, or "off"
    accumulate: int | None = None  # micro-batches per optimizer step, >= 1
    compile: bool | None = None  # torch.compile the model

    def __post_init__(self) -> None:
        self.run_dir = _path("run_dir", self.run_dir)
        self.replay = _path("replay", self.replay)
        if self.replay is not None and self.replay.is_dir():  # a run dir: its journal
            self.replay = self.replay / "journal.jsonl"
        self.resume = _path("resume", self.resume)
        self.max_steps = _int("max_steps", self.max_steps, 0, optional=True)
        self.epochs = _int("epochs", self.epochs, 1, optional=True)
        self.seed = _int("seed", self.seed, None)
        self.log_every = _int("log_every", self.log_every, 0)
        self.log_min_interval = _seconds("log_min_interval", self.log_min_interval)
        self.snapshot_interval = _seconds("snapshot_interval", self.snapshot_interval)
        for name in ("start_paused", "final_checkpoint", "distributed", "telemetry"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if self.device is not None and not isinstance(self.device, str):
            raise ConfigError(f"device must be a string such as 'cpu', got {self.device!r}")
        if self.amp is not None and self.amp not in (*AMP_MODES, "off"):
            raise ConfigError(f"--amp must be one of bf16, fp16, off, got {self.amp!r}")
        if self.grad_clip is not None and self.grad_clip != "off":
            self.grad_clip = max_norm("--grad-clip", self.grad_clip, ConfigError, text=True)
        self.accumulate = _int("accumulate", self.accumulate, 1, optional=True)
        self.signal_every = _int("signal_every", self.signal_every, 0, optional=True)
        if self.compile is not None and not isinstance(self.compile, bool):
            raise ConfigError(f"compile must be true or false, got {self.compile!r}")
        if self.nan not in NAN_MODES:
            raise ConfigError(f"--nan must be one of {', '.join(NAN_MODES)}, got {self.nan!r}")
        if self.nan_check not in NAN_CHECKS:
            raise ConfigError(
                f"nan_check must be one of {', '.join(NAN_CHECKS)}, got {self.nan_check!r}"
            )

    @property
    def nan_policy(self) -> NanPolicy:
        return NanPolicy(self.nan, self.nan_check)


def _path(name: str, value: Any) -> Path | None:
    if value is None or isinstance(value, Path):
        return value
    if isinstance(value, str | os.PathLike) and str(value):
        return Path(value)
    raise ConfigError(f"{name} must be a path, got {value!r}")


def _int(name: str, value: Any, minimum: int | None, optional: bool = False) -> Any:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name} must be an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise ConfigError(f"{name} must be >= {minimum}, got {value}")
    return value


def _seconds(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(f"{name} must be a number of seconds, got {value!r}")
    if value < 0:
        raise ConfigError(f"{name} must be >= 0, got {value}")
    return float(value)


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
