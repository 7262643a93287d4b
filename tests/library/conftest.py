"""Fixtures: ``tuiconsole.steer`` in this process, over a tmp run dir, not served."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import tuiconsole
from tests.library.steerloop import Parts
from tuiconsole.library import Steer


@pytest.fixture
def new_steer(tmp_path: Path) -> Iterator[Callable[..., Steer]]:
    """``new_steer(parts, **kw)``: tuiconsole.steer over ``parts`` (listen=False, run dir
    ``tmp_path/runN`` unless given); every run is closed at teardown."""
    made: list[Steer] = []

    def make(parts: Parts, **kw: Any) -> Steer:
        kw.setdefault("run_dir", tmp_path / f"run{len(made)}")
        kw.setdefault("listen", False)
        if parts.scheduler is not None:
            kw.setdefault("scheduler", parts.scheduler)
        steer = tuiconsole.steer(parts.model, parts.optimizer, **kw)
        made.append(steer)
        return steer

    yield make
    for steer in made:
        with contextlib.suppress(Exception):
            steer.close()
