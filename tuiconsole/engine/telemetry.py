"""Throughput, progress and the device's state for the snapshot: cheap to measure.

The loop times one step in K (:class:`Meter`): on such a step the host clock
splits the step into waiting for ``train_loader`` (``next()``) and the rest
(forward, backward, optimizer, scheduler), and the batch is looked at for its
size and tokens. On CUDA "the rest" is device time, from a pair of CUDA events
recorded around it and read once they completed (``Event.query()``: no host
sync); the host clock there only says how long it took to queue the work.

K comes from a time budget: a timed step costs about :data:`SAMPLE_COST` of
the loop's time, and K is the smallest count that keeps that under
:data:`BUDGET` of the step time measured between timed steps (never above
:data:`MAX_EVERY`). Each gap is drawn around K from a private RNG (the run's
RNGs are not touched), so the timed steps do not fall in step with an epoch's
length (a short last batch is seen in its share of the samples).

Between timed steps the loop pays one method call and a countdown. What a
snapshot shows is built when one is (:meth:`Meter.view`): rates are the
snapshot's steps/s times the means of the timed steps of the last
:data:`WINDOW_S` seconds (:data:`SAMPLES_KEPT` at most). On CUDA the caching allocator's counters (host
memory, no sync) and, at most once every :data:`NVML_INTERVAL_S`, NVML
(``nvidia-ml-py``, an optional dependency, imported only on CUDA) are read.
"""

from __future__ import annotations

import math
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

from tuiconsole.engine.snapshot import RunState, Telemetry

BUDGET = 0.001  # timed steps cost at most this share of the loop's time...
SAMPLE_COST = {"cpu": 8e-6, "cuda": 30e-6}  # ...at about this much each (benchmarks/telemetry.py)
MAX_EVERY = 1000
WINDOW_S = 3.0  # the snapshot's means are over the timed steps of the last 3 s (as steps/s)...
SAMPLES_KEPT = 64  # ...and the last 64 at most (a view reads them all: ~20 us)
NVML_INTERVAL_S = 1.0  # NVML's own sample period is 1/6 s to 1 s
EVENT_PAIRS = 4  # CUDA event pairs in flight, at most (a timed step waits for a free one)
GPU_EXTRA = "pip install 'tuiconsole[gpu]'"

T = TypeVar("T")


# --------------------------------------------------------------------------- batches


def first_tensor(batch: Any, depth: int = 0) -> torch.Tensor | None:
    """The batch's inputs: the tensor itself, a dict's ``input_ids`` (Hugging Face), else
    the first tensor found depth-first in the first items of a tuple, list or dict."""
    if isinstance(batch, torch.Tensor):
        return batch
    if depth > 3:
        return None
    if isinstance(batch, dict):
        ids = batch.get("input_ids")
        if isinstance(ids, torch.Tensor):
            return ids
        items: Any = list(batch.values())[:4]
    elif isinstance(batch, tuple | list):
        items = batch[:4]
    else:
        return None
    for item in items:
        found = first_tensor(item, depth + 1)
        if found is not None:
            return found
    return None


def batch_counts(batch: Any) -> tuple[int | None, int | None]:
    """(samples, tokens) of one batch: the inputs' dim 0, and their element count when
    they are integer sequences (an integer tensor of 2 or more dims: token ids; padding
    counts). None where not known. Reads shapes only: no device access."""
    inputs = first_tensor(batch)
    if inputs is None or inputs.dim() == 0:
        return None, None
    integer = not (inputs.is_floating_point() or inputs.is_complex() or inputs.dtype == torch.bool)
    return int(inputs.shape[0]), inputs.numel() if integer and inputs.dim() >= 2 else None


# --------------------------------------------------------------------------- GPU


def nvml_uuid(torch_uuid: str) -> str:
    """NVML's name for the GPU torch calls ``torch_uuid`` (torch prints the UUID
    without NVML's ``GPU-`` prefix; a MIG instance's keeps its ``MIG-``)."""
    return torch_uuid if torch_uuid.startswith(("GPU-", "MIG-")) else f"GPU-{torch_uuid}"


@dataclass(frozen=True)
class NvmlReading:
    utilization: float | None = None
    memory_used: int | None = None
    memory_total: int | None = None
    power: float | None = None
    temperature: float | None = None


def nvml_reading(util: Any, memory: Any, power_mw: Any, temperature: Any) -> NvmlReading:
    """NVML's answers as numbers in our units (None where a query failed): ``util`` a
    ``c_nvmlUtilization_t`` (``.gpu`` %), ``memory`` a ``c_nvmlMemory_t`` (bytes),
    the power in mW, the temperature in degrees C."""
    return NvmlReading(
        utilization=None if util is None else float(util.gpu),
        memory_used=None if memory is None else int(memory.used),
        memory_total=None if memory is None else int(memory.total),
        power=None if power_mw is None else power_mw / 1000.0,
        temperature=None if temperature is None else float(temperature),
    )


def _or_none(query: Callable[[], T]) -> T | None:
    try:
        return query()
    except Exception:  # NVMLError_NotSupported (power on some boards), a lost GPU...
        return None


class Nvml:
    """One GPU through NVML; :attr:`note` says why not, when it cannot be read."""

    def __init__(self, device: torch.device) -> None:
        self.note = ""
        self._nvml: Any = None
        self._handle: Any = None
        try:
            import pynvml  # nvidia-ml-py: optional (the `gpu` extra)
        except ImportError:
            self.note = f"nvidia-ml-py is not installed ({GPU_EXTRA})"
            return
        try:
            pynvml.nvmlInit()
            uuid = nvml_uuid(str(torch.cuda.get_device_properties(device).uuid))
            self._handle = pynvml.nvmlDeviceGetHandleByUUID(uuid)
        except Exception as exc:  # pynvml.NVMLError: no driver, an unknown UUID...
            self.note = f"NVML: {exc}"
            return
        self._nvml = pynvml

    def read(self) -> NvmlReading:
        nv, h = self._nvml, self._handle
        if nv is None:
            return NvmlReading()
        return nvml_reading(
            _or_none(lambda: nv.nvmlDeviceGetUtilizationRates(h)),
            _or_none(lambda: nv.nvmlDeviceGetMemoryInfo(h)),
            _or_none(lambda: nv.nvmlDeviceGetPowerUsage(h)),
            _or_none(lambda: nv.nvmlDeviceGetTemperature(h, nv.NVML_TEMPERATURE_GPU)),
        )


class CudaState:
    """The allocator's counters every view (host counters, no sync); NVML once a second.
    Nothing before CUDA is initialized (by the model's move to the GPU)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._nvml: Nvml | None = None  # opened at the first view: pynvml loads only then
        self._read_at = -math.inf
        self._reading = NvmlReading()

    def fields(self, now: float) -> dict[str, Any]:
        if not torch.cuda.is_initialized():
            return {}  # the model is not on the GPU yet: reading would initialize CUDA
        if self._nvml is None:
            self._nvml = Nvml(self.device)
        if now - self._read_at >= NVML_INTERVAL_S:
            self._read_at, self._reading = now, self._nvml.read()
        r, d = self._reading, self.device
        return {
            "memory_allocated": torch.cuda.memory_allocated(d),
            "memory_reserved": torch.cuda.memory_reserved(d),
            "memory_peak": torch.cuda.max_memory_allocated(d),
            "gpu_utilization": r.utilization,
            "gpu_memory_used": r.memory_used,
            "gpu_memory_total": r.memory_total,
            "gpu_power": r.power,
            "gpu_temperature": r.temperature,
            "gpu_note": self._nvml.note,
        }


# --------------------------------------------------------------------------- steps


class _Sample:
    """One timed step."""

    __slots__ = ("at", "batches", "compute", "samples", "tokens", "wait")

    def __init__(self, at: float) -> None:
        self.at = at  # host clock when the step began
        self.wait: float | None = 0.0  # None: not timed (a loop of its own)
        self.compute: float | None = None  # on CUDA: set once its events completed
        self.samples: int | None = 0
        self.tokens: int | None = 0
        self.batches = 0

    def count(self, batch: Any) -> None:
        samples, tokens = batch_counts(batch)
        self.batches += 1
        self.samples = None if samples is None or self.samples is None else self.samples + samples
        self.tokens = None if tokens is None or self.tokens is None else self.tokens + tokens


class _Events:
    """CUDA event pairs around the compute of timed steps, read once completed."""

    def __init__(self, device: torch.device) -> None:
        self._device = device
        self._free = [
            (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
            for _ in range(EVENT_PAIRS)
        ]
        self._pending: deque[tuple[_Sample, torch.cuda.Event, torch.cuda.Event]] = deque()
        self._open: tuple[torch.cuda.Event, torch.cuda.Event] | None = None

    def start(self) -> None:
        self.poll()
        if self._open is not None:  # a step that ended early (a NaN skipped it): reuse
            self._free.append(self._open)
        self._open = self._free.pop() if self._free else None  # none free: not timed
        if self._open is not None:
            self._open[0].record(torch.cuda.current_stream(self._device))

    def end(self, sample: _Sample) -> None:
        if self._open is None:
            return
        start, end = self._open
        self._open = None
        end.record(torch.cuda.current_stream(self._device))
        self._pending.append((sample, start, end))

    def poll(self) -> None:
        """Timings of the pairs that completed (in order); the rest stay pending."""
        while self._pending and self._pending[0][2].query():
            sample, start, end = self._pending.popleft()
            sample.compute = start.elapsed_time(end) / 1000.0
            self._free.append((start, end))


@dataclass(frozen=True)
class Progress:
    """Where the run is, for the ETA (what the trainer knows)."""

    state: RunState
    step: int
    max_steps: int | None
    epochs: int | None
    epoch: int  # epochs completed
    epoch_batches: int  # batches taken in the current epoch
    epoch_length: int | None  # batches in an epoch (None: not known yet)


def eta(progress: Progress, steps_per_sec: float, batches_per_step: float) -> float | None:
    """Seconds to the nearer end, --max-steps or the last epoch, at ``steps_per_sec``;
    None while the run does not train (paused, ended) or where neither end is known."""
    p = progress
    if p.state != RunState.RUNNING or steps_per_sec <= 0:
        return None
    left: list[float] = []
    if p.max_steps is not None:
        left.append(max(0, p.max_steps - p.step))
    if p.epochs is not None and p.epoch_length:
        batches = (p.epochs - p.epoch) * p.epoch_length - p.epoch_batches
        left.append(max(0, batches) / max(batches_per_step, 1e-9))
    return min(left) / steps_per_sec if left else None


class Meter:
    """Times one step in K and builds the snapshot's :class:`Telemetry`.

    The loop calls, on every step, :meth:`sampled` (True on a timed step) and, on a
    timed step only, :meth:`took` after each batch it took (:meth:`taking` before a
    further one, for micro-batches) and :meth:`done` at its end. A loop of its own
    calls :meth:`counted` with its batch instead. All in the loop thread.
    """

    def __init__(self, device: torch.device | str, *, enabled: bool = True) -> None:
        self.device = torch.device(device)
        self.enabled = enabled
        self.every = 1  # K: a timed step every K steps, on average
        self._countdown = 1  # the first step is timed
        self._rng = random.Random(0x7E1E)  # the gaps: a private RNG, not the run's
        self._cost = SAMPLE_COST.get(self.device.type, SAMPLE_COST["cuda"])
        self._samples: deque[_Sample] = deque(maxlen=SAMPLES_KEPT)
        self._current: _Sample | None = None
        self._taking = 0.0  # host clock when the current take began
        self._last_at: float | None = None  # when the last timed step began
        self._since_last = 0  # steps since then
        cuda = self.device.type == "cuda" and enabled
        self._events = _Events(self.device) if cuda else None
        self._cuda = CudaState(self.device) if cuda else None

    # ------------------------------------------------------------------ the loop

    def sampled(self) -> bool:
        """A step begins: is it one to time? (If so its clock starts now.)"""
        if not self.enabled:
            return False
        self._countdown -= 1
        if self._countdown > 0:
            return False
        now = time.perf_counter()
        self._reschedule(now)
        self._current = _Sample(now)
        self._taking = now
        return True

    def taking(self) -> None:
        """A timed step takes a further batch (a micro-batch): its wait starts now."""
        self._taking = time.perf_counter()

    def took(self, batch: Any) -> None:
        """The batch came: the data wait ends, the batch is counted, compute starts."""
        sample = self._current
        if sample is None:
            return
        now = time.perf_counter()
        if sample.wait is not None:
            sample.wait += now - self._taking
        sample.count(batch)
        if self._events is not None and sample.batches == 1:
            self._events.start()  # device time from the first batch to the step's end

    def done(self) -> None:
        """The timed step is over (its optimizer and scheduler steps taken)."""
        sample, self._current = self._current, None
        if sample is None:
            return
        if self._events is not None:
            self._events.end(sample)
        elif sample.wait is not None:
            sample.compute = time.perf_counter() - sample.at - sample.wait
        self._samples.append(sample)

    def counted(self, batch: Any) -> None:
        """A loop of its own took a step with ``batch`` (None: unknown): counted on the
        steps the budget picks; its data and compute are not seen (no split)."""
        if batch is None or not self.sampled():
            return
        sample, self._current = self._current, None
        assert sample is not None
        sample.wait = None
        sample.count(batch)
        self._samples.append(sample)

    def _reschedule(self, now: float) -> None:
        """K from the step time measured since the last timed step; the next gap."""
        if self._last_at is not None and self._since_last > 0:
            step_s = (now - self._last_at) / self._since_last
            if step_s > 0:
                self.every = max(1, min(MAX_EVERY, math.ceil(self._cost / (BUDGET * step_s))))
        self._last_at = now
        k = self.every
        self._countdown = self._since_last = k if k < 3 else self._rng.randint(k // 2, k + k // 2)

    # ------------------------------------------------------------------ the snapshot

    def view(self, steps_per_sec: float, progress: Progress) -> Telemetry:
        """What the snapshot shows now (steps_per_sec: the snapshot's own rate)."""
        if not self.enabled:
            return Telemetry()
        now = time.perf_counter()
        if self._events is not None:
            self._events.poll()
        n = batches = samples = tokens = timed = 0
        wait = compute = 0.0
        samples_known = tokens_known = True
        for s in reversed(self._samples):  # newest first, until the window's start
            if n and now - s.at > WINDOW_S:
                break  # (a run slower than the window keeps its last step)
            n += 1
            batches += s.batches
            samples_known = samples_known and s.samples is not None
            tokens_known = tokens_known and s.tokens is not None
            samples += s.samples or 0
            tokens += s.tokens or 0
            if s.wait is not None and s.compute is not None:
                timed += 1
                wait += s.wait
                compute += s.compute
        mean_samples = samples / n if n and samples_known else None
        mean_tokens = tokens / n if n and tokens_known else None
        mean_wait = wait / timed if timed else None
        mean_compute = compute / timed if timed else None
        rate = steps_per_sec if steps_per_sec > 0 else 0.0
        cuda = self._cuda.fields(now) if self._cuda is not None else {}
        return Telemetry(
            samples_per_sec=None if mean_samples is None else mean_samples * rate,
            tokens_per_sec=None if mean_tokens is None else mean_tokens * rate,
            batch_size=mean_samples,
            data_wait=mean_wait,
            compute=mean_compute,
            data_fraction=wait / (wait + compute) if timed and wait + compute > 0 else None,
            eta=eta(progress, rate, batches / n if n else 1.0),
            sample_every=self.every if self._samples else 0,
            **cuda,
        )
