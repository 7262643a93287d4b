"""Throughput, data wait vs compute, ETA and the device in the snapshot (engine/telemetry.py).

Real runs of small models, driven step by step (Trainer.prepare / step_now) or by a
loop of the test's own (tuiconsole.steer). Timings are only checked against what
the test made them at least (a loader or a step that sleeps), never as speeds.
"""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from tests.unit.models import make_spec
from tuiconsole.engine.config import RunConfig
from tuiconsole.engine.snapshot import RunState, Telemetry
from tuiconsole.engine.telemetry import Meter, Nvml, batch_counts, nvml_reading, nvml_uuid
from tuiconsole.engine.trainer import Trainer
from tuiconsole.script import TrainingSpec

HAS_PYNVML = importlib.util.find_spec("pynvml") is not None
CUDA_FIELDS = ("memory_allocated", "memory_reserved", "memory_peak")
NVML_FIELDS = (
    "gpu_utilization",
    "gpu_memory_used",
    "gpu_memory_total",
    "gpu_power",
    "gpu_temperature",
)


def _trainer(tmp_path: Path, spec: TrainingSpec | None = None, **config) -> Trainer:
    config.setdefault("run_dir", tmp_path / "run")
    return Trainer(spec or make_spec(), RunConfig(**config)).prepare()


class SlowLoader:
    """A real train_loader whose every batch takes ``nap`` s to come (a slow dataset)."""

    def __init__(self, batches: list, nap: float) -> None:
        self.batches, self.nap = batches, nap

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        for b in self.batches:
            time.sleep(self.nap)
            yield b


def _sleepy_step(nap: float):
    def training_step(model, batch, criterion):
        time.sleep(nap)
        inputs, targets = batch
        return criterion(model(inputs), targets)

    return training_step


def test_samples_per_sec_is_the_batch_size_times_the_step_rate(tmp_path) -> None:
    t = _trainer(tmp_path)
    try:
        assert t._build_snapshot().telemetry.samples_per_sec is None  # no step yet
        began = time.monotonic()
        t.step_now(40)
        elapsed = time.monotonic() - began
        snap = t._build_snapshot()
    finally:
        t.close()
    tel, sps = snap.telemetry, snap.status.steps_per_sec
    assert tel.batch_size == 32  # make_data: batches of 32
    assert tel.samples_per_sec is not None and tel.samples_per_sec > 0
    assert tel.samples_per_sec == pytest.approx(32 * sps)
    overall = 32 * 40 / elapsed  # batch size x steps / elapsed, within loose bounds
    assert overall / 4 < tel.samples_per_sec < overall * 4
    assert tel.tokens_per_sec is None  # float inputs: no tokens
    assert 1 <= tel.sample_every <= 1000
    assert tel.data_wait is not None and tel.compute is not None and tel.compute > 0
    assert tel.data_fraction is not None and 0 <= tel.data_fraction < 1


def test_a_slow_loader_shows_as_data_wait_and_a_slow_step_as_compute(tmp_path) -> None:
    nap = 0.01
    slow_data = make_spec()
    slow_data.train_loader = SlowLoader(list(slow_data.train_loader), nap)
    slow_step = make_spec()
    slow_step.training_step = _sleepy_step(nap)
    tels: list[Telemetry] = []
    for i, spec in enumerate((slow_data, slow_step)):
        t = _trainer(tmp_path / str(i), spec)
        try:
            t.step_now(12)
            tels.append(t._build_snapshot().telemetry)
        finally:
            t.close()
    waiting, computing = tels
    assert waiting.data_wait is not None and waiting.data_wait >= nap
    assert computing.compute is not None and computing.compute >= nap
    assert waiting.data_fraction is not None and computing.data_fraction is not None
    assert waiting.data_fraction > computing.data_fraction
    assert computing.data_wait is not None and computing.data_wait < nap  # a list: no wait


def test_eta_counts_down_to_max_steps_and_to_the_last_epoch(tmp_path) -> None:
    t = _trainer(tmp_path / "a", max_steps=40)
    try:
        t.step_now(10)
        early = t._build_snapshot()
        t.step_now(20)
        late = t._build_snapshot()
        t.step_now(10)
        there = t._build_snapshot()
        t.step_now(1)  # the loop finds --max-steps reached
        done = t._build_snapshot()
    finally:
        t.close()
    for snap, left in ((early, 30), (late, 10)):
        assert snap.telemetry.eta == pytest.approx(left / snap.status.steps_per_sec)
    assert early.telemetry.eta > late.telemetry.eta > there.telemetry.eta == 0
    assert done.status.state == RunState.FINISHED and done.telemetry.eta is None

    spec = make_spec()
    spec.epochs = 3  # 8 batches an epoch: 24 steps in all
    t = _trainer(tmp_path / "b", spec)
    try:
        t.step_now(5)
        first = t._build_snapshot()
        t.step_now(13)  # into the third epoch
        third = t._build_snapshot()
    finally:
        t.close()
    assert first.telemetry.eta == pytest.approx(19 / first.status.steps_per_sec)
    assert third.telemetry.eta == pytest.approx(6 / third.status.steps_per_sec)


def test_eta_is_none_while_paused_and_without_an_end(tmp_path) -> None:
    t = _trainer(tmp_path / "a", max_steps=100, start_paused=True)
    try:
        assert t.apply_now("step 5").ok
        t.step_now(5)
        snap = t._build_snapshot()
    finally:
        t.close()
    assert snap.status.state == RunState.PAUSED and snap.telemetry.eta is None

    spec = make_spec()
    spec.epochs = 2
    spec.train_loader = NoLen(spec.train_loader)  # 8 batches, but it does not say so
    t = _trainer(tmp_path / "b", spec)
    try:
        t.step_now(4)
        unknown = t._build_snapshot().telemetry.eta
        t.step_now(6)  # the first epoch ran out: now its length is known
        known = t._build_snapshot()
    finally:
        t.close()
    assert unknown is None
    assert known.telemetry.eta == pytest.approx(6 / known.status.steps_per_sec)


class NoLen:
    """A train_loader without len(): only iterating it tells how long an epoch is."""

    def __init__(self, batches: list) -> None:
        self.batches = batches

    def __iter__(self):
        return iter(self.batches)


class TinyLM(nn.Module):
    def __init__(self, vocab: int = 50) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, 16)
        self.head = nn.Linear(16, vocab)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(ids))


def _lm_spec(b: int, t: int) -> TrainingSpec:
    torch.manual_seed(0)
    model = TinyLM()
    ids = torch.randint(0, 50, (8 * b, t + 1))
    data = [(ids[i : i + b, :-1], ids[i : i + b, 1:]) for i in range(0, 8 * b, b)]
    ce = nn.CrossEntropyLoss()
    return TrainingSpec(
        model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        criterion=lambda out, y: ce(out.flatten(0, 1), y.flatten()),
        train_loader=data,
        epochs=100,
    )


def test_tokens_per_sec_only_for_integer_sequence_inputs(tmp_path) -> None:
    t = _trainer(tmp_path, _lm_spec(b=4, t=16))
    try:
        t.step_now(12)
        snap = t._build_snapshot()
    finally:
        t.close()
    tel, sps = snap.telemetry, snap.status.steps_per_sec
    assert tel.batch_size == 4
    assert tel.samples_per_sec == pytest.approx(4 * sps)
    assert tel.tokens_per_sec == pytest.approx(4 * 16 * sps)


def test_batch_counts_read_the_inputs_shapes() -> None:
    images, labels = torch.randn(8, 3, 4, 4), torch.randint(0, 3, (8,))
    assert batch_counts((images, labels)) == (8, None)
    assert batch_counts([labels, images]) == (8, None)  # 1-D integers: labels, not sequences
    ids = torch.randint(0, 9, (4, 7))
    assert batch_counts((ids, ids)) == (4, 28)
    mask = torch.ones(4, 7, dtype=torch.bool)
    assert batch_counts({"attention_mask": mask, "input_ids": ids}) == (4, 28)
    assert batch_counts({"attention_mask": mask}) == (4, None)  # booleans are no tokens
    assert batch_counts({"pixels": [images]}) == (8, None)
    assert batch_counts(torch.tensor(3.0)) == (None, None)
    assert batch_counts(("text", 3)) == (None, None)


def test_cpu_runs_have_no_cuda_or_nvml_fields(tmp_path) -> None:
    t = _trainer(tmp_path)
    try:
        t.step_now(3)
        tel = t._build_snapshot().telemetry
    finally:
        t.close()
    assert all(getattr(tel, f) is None for f in CUDA_FIELDS + NVML_FIELDS)
    assert tel.gpu_note == ""


def test_telemetry_off_shows_nothing_and_costs_no_timing(tmp_path) -> None:
    t = _trainer(tmp_path, telemetry=False)
    try:
        t.step_now(5)
        snap = t._build_snapshot()
    finally:
        t.close()
    assert snap.telemetry == Telemetry()
    assert snap.status.steps_per_sec > 0  # the rest of the snapshot is as ever


def test_the_sampling_rate_follows_the_time_budget() -> None:
    """K is the smallest count whose timed steps cost <= BUDGET of the step time."""
    fast, slow = Meter("cpu"), Meter("cpu")
    for meter, step_s in ((fast, 0.0), (slow, 0.01)):
        for _ in range(300):
            if meter.sampled():
                meter.took(None)
                meter.done()
            if step_s:
                time.sleep(step_s / 10)  # a step of about a millisecond
    assert fast.every > slow.every >= 1
    assert slow.every <= 10  # ~1 ms steps: at most 4 us / (0.1% of 1 ms) = 4


def test_nvml_uuid_names_the_gpu_as_nvml_does() -> None:
    uuid = "58e5a5c3-5d9c-2b3a-1c4d-9e8f7a6b5c4d"
    assert nvml_uuid(uuid) == f"GPU-{uuid}"
    assert nvml_uuid(f"GPU-{uuid}") == f"GPU-{uuid}"
    assert nvml_uuid(f"MIG-{uuid}") == f"MIG-{uuid}"


@pytest.mark.skipif(HAS_PYNVML, reason="nvidia-ml-py is installed here")
def test_without_nvidia_ml_py_the_gpu_fields_say_why() -> None:
    nvml = Nvml(torch.device("cuda"))  # it fails at the import, before touching CUDA
    assert "nvidia-ml-py is not installed" in nvml.note
    assert "tuiconsole[gpu]" in nvml.note
    assert nvml.read() == nvml_reading(None, None, None, None)


@pytest.mark.skipif(not HAS_PYNVML, reason="needs nvidia-ml-py (the gpu extra)")
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-driver path")
def test_nvidia_ml_py_without_a_driver_is_a_note() -> None:
    nvml = Nvml(torch.device("cuda"))
    assert nvml.note.startswith("NVML: ")
    assert nvml.read() == nvml_reading(None, None, None, None)


@pytest.mark.skipif(not HAS_PYNVML, reason="needs nvidia-ml-py (the gpu extra)")
def test_nvml_answers_are_read_into_our_units() -> None:
    import pynvml

    util = pynvml.c_nvmlUtilization_t(gpu=87, memory=40)
    memory = pynvml.c_nvmlMemory_t(total=80 * 2**30, free=30 * 2**30, used=50 * 2**30)
    r = nvml_reading(util, memory, 312_456, 71)
    assert (r.utilization, r.memory_used, r.memory_total) == (87.0, 50 * 2**30, 80 * 2**30)
    assert r.power == pytest.approx(312.456) and r.temperature == 71.0
    assert nvml_reading(util, None, None, 71).power is None  # a query that failed: None
