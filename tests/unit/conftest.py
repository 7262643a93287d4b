"""Fixtures: a paused trainer over a real small torch model."""

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
        t = Trainer(spec or make_spec(), cfg).start()
        trainers.append(t)
        return Driver(t)

    yield make
    for t in trainers:
        t.close()
