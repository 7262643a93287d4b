"""The loop makes no per-step host sync on the loss: reads happen in batches."""

from __future__ import annotations

import pytest
import torch

from tests.unit.models import make_spec
from tuiconsole.engine.signals import MAX_PENDING
from tuiconsole.engine.snapshot import RunState
from tuiconsole.engine.trainer import RunConfig, Trainer

SYNC_METHODS = ("item", "cpu", "tolist", "__float__", "__bool__", "numpy", "__int__")


def count_syncs(monkeypatch) -> dict[str, int]:
    counts = dict.fromkeys(SYNC_METHODS, 0)
    for name in SYNC_METHODS:
        original = getattr(torch.Tensor, name)

        def counted(self, *a, _orig=original, _name=name, **k):
            counts[_name] += 1
            return _orig(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, counted)
    return counts


# The step of engine/step.py: clipping (its norm and count kept on the device) and 3
# micro-batches a step (their mean loss kept there too).
FEATURED = {"grad_clip": 0.5, "accumulate": 3}
# The per-group signals (engine/signals.py) measured at every step, not one in K: norms,
# the update, kept on the device; read when MAX_PENDING measurements wait, and at the end.
SIGNALS = {"signal_every": 1}


@pytest.mark.parametrize(
    "features",
    [{}, FEATURED, SIGNALS, FEATURED | SIGNALS],
    ids=["plain", "clip+accumulate", "signals", "clip+accumulate+signals"],
)
def test_thousand_steps_without_per_step_sync(monkeypatch, features):
    counts = count_syncs(monkeypatch)
    spec = make_spec()
    # reads disabled: no log lines, no snapshot reader. nan_check="flush" is what "auto"
    # picks on an accelerator; on CPU "auto" reads each loss from host memory instead
    # (free there: tests/reliability/test_faults.py covers that path).
    cfg = RunConfig(
        max_steps=1000, log_every=0, snapshot_interval=1e9, nan_check="flush", **features
    )
    trainer = Trainer(spec, cfg)
    trainer._snapshot_wanted = False
    trainer.prepare()
    trainer._snapshot_wanted = False
    assert trainer.step_now(1001) == 1000  # the 1001st finds the run finished
    trainer.close()
    assert trainer.state == RunState.FINISHED
    total = sum(counts.values())
    # one batched read when the run finishes (and a handful at start/stop), never per step;
    # the signals measured each step are read once every MAX_PENDING of them
    reads = 1000 // MAX_PENDING if features.get("signal_every") == 1 else 0
    assert total <= 10 + reads, counts
    assert counts["tolist"] >= 1  # the batched read did happen
    assert trainer._losses.last is not None and len(trainer._losses.recent) > 200
    if "grad_clip" in features:  # the device-side figures, read once as a snapshot is built
        before = sum(counts.values())
        view = trainer._build_snapshot().step_view
        assert view is not None and view.clip_steps == 1000 and view.grad_norm is not None
        assert sum(counts.values()) - before <= 3, counts
    if "signal_every" in features:
        assert trainer._record.signals.measured == 1000
        before = sum(counts.values())
        signals = trainer._build_snapshot().signals
        assert all(s.step == 1000 and s.update_ratio is not None for s in signals)
        assert sum(counts.values()) - before <= 4, counts


def test_adam_signals_add_no_read_to_adams_own(monkeypatch):
    """Adam's step from its state (engine/signals.py) is device ops too. torch's Adam on
    the CPU reads its own step counters (``.item()``, 8 a step here, not a device sync):
    the signals measured at every step add nothing to that but their batched reads."""
    counts = count_syncs(monkeypatch)
    made = {}
    for every in (0, 1):
        cfg = RunConfig(
            max_steps=300,
            log_every=0,
            snapshot_interval=1e9,
            nan_check="flush",
            signal_every=every,
        )
        trainer = Trainer(make_spec("adam"), cfg)
        trainer._snapshot_wanted = False
        trainer.prepare()
        trainer._snapshot_wanted = False
        before = sum(counts.values())
        trainer.step_now(300)
        made[every] = sum(counts.values()) - before
        if every:
            assert trainer._record.signals.measured == 300
            assert all(s.adam_step is not None for s in trainer._build_snapshot().signals)
        trainer.close()
    assert made[0] <= made[1] <= made[0] + 300 // MAX_PENDING, made


@pytest.mark.parametrize("nan_check", ["flush", "step"])
def test_batched_read_returns_every_step(nan_check):
    spec = make_spec()
    t = Trainer(spec, RunConfig(max_steps=300, log_every=100, nan_check=nan_check))
    assert t.step_now(301) == 300
    t.close()
    steps = [s for s, _ in t._losses.recent]
    assert steps == list(range(61, 301))  # recent window holds the last 240 steps, in order
    assert t._losses.history.count == 300


def test_host_read_losses_equal_the_batched_read():
    """On CPU with a per-step check the loss is recorded as the float read for the check:
    the very same numbers the batched device read gives, step for step."""
    runs = {}
    for nan_check in ("flush", "step"):
        t = Trainer(make_spec(), RunConfig(max_steps=150, log_every=0, nan_check=nan_check))
        t.step_now(150)
        t._flush_losses()
        runs[nan_check] = list(t._losses.recent)
    assert len(runs["step"]) == 150
    assert runs["step"] == runs["flush"]
