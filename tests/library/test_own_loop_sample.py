"""sample_models/own_loop.py, run as `python sample_models/own_loop.py`: it learns, and a
run stopped mid-epoch and resumed from its checkpoint ends bit for bit as the run that
was never stopped (its loop starts at steer.start_step)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.reliability.helpers import assert_same
from tuiconsole.engine.checkpoint import load_checkpoint
from tuiconsole.remote.registry import ENV_DIR

pytestmark = pytest.mark.subprocess

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "sample_models" / "own_loop.py"


def _run(cwd: Path, *args: str) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """The sample in ``cwd`` (its run dir lands in cwd/runs); returns the run dir."""
    cwd.mkdir(parents=True, exist_ok=True)
    runtime = tempfile.mkdtemp(prefix="tcrt-", dir="/tmp")
    env = {
        **os.environ,
        ENV_DIR: runtime,
        "PYTHONPATH": str(ROOT),
        "OMP_NUM_THREADS": "1",  # the same kernels in every run: bit for bit
    }
    try:
        done = subprocess.run(
            [sys.executable, str(SAMPLE), *args],
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=600,
        )
    finally:
        shutil.rmtree(runtime, ignore_errors=True)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    (run_dir,) = (cwd / "runs").iterdir()
    return run_dir, done


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def whole(tmp_path_factory) -> Iterator[tuple[Path, subprocess.CompletedProcess[str]]]:
    """160 steps, never interrupted (an argument the sample does not know is left alone)."""
    yield _run(tmp_path_factory.mktemp("whole"), "--max-steps", "160", "--not-the-samples", "x")


def test_the_sample_learns_and_finishes(whole) -> None:
    run_dir, done = whole
    assert "own_loop: steps 0..12800 (200 epochs)" in done.stdout
    assert "epoch 2/200 done at step 128" in done.stdout
    assert "tuiconsole attach" in done.stderr  # python own_loop.py is served
    end = _records(run_dir / "journal.jsonl")[-1]
    assert end["type"] == "end" and end["state"] == "FINISHED" and end["step"] == 160
    train = [r for r in _records(run_dir / "metrics.jsonl") if r["type"] == "train"]
    assert train[0]["step"] == 50 and train[-1]["step"] == 160
    assert train[-1]["loss_mean"] < 0.8 * train[0]["loss_mean"], train


def test_a_run_stopped_mid_epoch_and_resumed_ends_as_the_whole_run(whole, tmp_path) -> None:
    whole_dir, _ = whole
    first, _ = _run(tmp_path / "first", "--max-steps", "70")
    stop = _records(first / "journal.jsonl")[-1]
    assert stop["state"] == "FINISHED" and stop["step"] == 70  # 6 batches into epoch 2
    second, done = _run(tmp_path / "second", "--max-steps", "160", "--resume", stop["checkpoint"])
    assert "own_loop: steps 70..12800 (200 epochs)" in done.stdout
    a = load_checkpoint(_records(whole_dir / "journal.jsonl")[-1]["checkpoint"])
    b = load_checkpoint(_records(second / "journal.jsonl")[-1]["checkpoint"])
    assert a["step"] == b["step"] == 160
    for key in ("model", "optimizer", "scheduler"):
        assert_same(a[key], b[key], key)
    # torch's RNG (Dropout) too; the sample never seeds Python's or numpy's
    assert_same(a["rng"]["torch"], b["rng"]["torch"], "rng.torch")
