"""Fixtures for detach/attach tests: a private runtime dir and real background runs.

Every process a test starts is killed in teardown, whatever the test did.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator

import pytest

from tuiconsole.remote.registry import ENV_DIR


@pytest.fixture
def runtime_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """A short private runtime dir (socket paths must stay under ~100 bytes)."""
    path = tempfile.mkdtemp(prefix="tcrt-", dir="/tmp")
    monkeypatch.setenv(ENV_DIR, path)
    env = {**os.environ, ENV_DIR: path, "PYTHONUNBUFFERED": "1"}
    yield env
    shutil.rmtree(path, ignore_errors=True)
