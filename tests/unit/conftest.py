"""Fixtures: a paused trainer over a real small torch model, driven synchronously."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.models import Driver, make_spec
from tuiconsole.engine.trainer import RunConfig, Trainer
from tuiconsole.script import TrainingSpec


@pytest.fixture
def drive(tmp_path: Path):
    trainers: list[Trainer] = []

    def make(spec: TrainingSpec | None = None, **config) -> Driver:
        cfg = RunConfig(run_dir=tmp_path / f"run{len(trainers)}", start_paused=True, **config)
        d = Driver(Trainer(spec or make_spec(), cfg))
        trainers.append(d.trainer)
        return d

    yield make
    for t in trainers:
        t.close()
