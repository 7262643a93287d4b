"""Fixtures for the console tests: a real paused run (behaviour) and a frozen fake (pixels)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.ui.fake_session import FakeSession
from tests.ui.real_run import RecordingSession, start_run


@pytest.fixture
def run_factory(tmp_path: Path):
    # One intra-op thread: the model is tiny, and on a small loaded CI box two OpenMP
    # threads contending with the app's thread make each step 100x slower. Restored after.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    sessions: list[RecordingSession] = []

    def make(**kwargs) -> RecordingSession:
        s = start_run(tmp_path / f"s{len(sessions)}", **kwargs)
        sessions.append(s)
        return s

    yield make
    for s in sessions:
        s.close()
    torch.set_num_threads(threads)


@pytest.fixture
def paused_run(run_factory) -> RecordingSession:
    return run_factory(paused=True)


@pytest.fixture
def fake_session() -> FakeSession:
    return FakeSession()
