"""`python train.py` with tuiconsole.steer(): the run is served on its private Unix
socket (one stderr line says how to attach), steered from other processes, and ends
with exit code 0, its journal complete and no traceback."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tuiconsole.remote.client import RemoteSession
from tuiconsole.remote.registry import ENV_DIR

pytestmark = pytest.mark.subprocess

SCRIPT = Path(__file__).parent / "scripts" / "own_loop_tiny.py"
ROOT = Path(__file__).resolve().parents[2]
RESULT_TIMEOUT = 30.0


class Script:
    """``python own_loop_tiny.py RUN_DIR MODE`` in a private runtime dir."""

    def __init__(self, run_dir: Path, mode: str = "serve") -> None:
        self.runtime = Path(tempfile.mkdtemp(prefix="tcrt-", dir="/tmp"))  # short socket paths
        self.env = {
            **os.environ,
            ENV_DIR: str(self.runtime),
            "PYTHONUNBUFFERED": "1",
            "PYTHONPATH": str(ROOT),
        }
        self.run_dir = run_dir
        self.proc = subprocess.Popen(
            [sys.executable, str(SCRIPT), str(run_dir), mode],
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.stderr_lines: list[str] = []

    def attach_line(self) -> str:
        """The run's one stderr line at start: how to attach (read as it is printed)."""
        assert self.proc.stderr is not None
        while True:
            line = self.proc.stderr.readline()
            assert line, f"the script ended without saying how to attach: {self.stderr_lines}"
            self.stderr_lines.append(line)
            if "attach:" in line:
                return line.strip()

    def finish(self, timeout: float = 60.0) -> tuple[int, str, str]:
        out, err = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, out, "".join(self.stderr_lines) + err

    def journal(self) -> list[dict]:
        text = (self.run_dir / "journal.jsonl").read_text()
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            with contextlib.suppress(Exception):
                self.proc.communicate(timeout=10)
        shutil.rmtree(self.runtime, ignore_errors=True)


@pytest.fixture
def script(tmp_path: Path) -> Iterator[type[Script]]:
    made: list[Script] = []

    def start(mode: str = "serve") -> Script:
        s = Script(tmp_path / f"run{len(made)}", mode)
        made.append(s)
        return s

    yield start  # type: ignore[misc]
    for s in made:
        s.close()


def test_python_train_py_is_served_and_steered_by_a_remote_client(script) -> None:
    run = script()
    line = run.attach_line()
    assert line.startswith(f"tuiconsole: steering this run (journal in {run.run_dir})")
    run_id = line.split()[-1]
    client = RemoteSession(run.runtime / f"{run_id}.sock")
    try:
        assert client.snapshot().status.script == "own_loop_tiny.py"
        lr = client.submit("lr head 0.01").result(RESULT_TIMEOUT)
        assert lr.ok, lr
        assert {g.name: g.lr for g in client.snapshot().groups}["head"] == 0.01
        assert client.submit("stop").result(RESULT_TIMEOUT).ok
        assert client.wait(30)
    finally:
        client.close()
    code, _, err = run.finish()
    assert code == 0, err
    assert "Traceback" not in err
    assert "tuiconsole: stopped at step" in err
    records = run.journal()
    cmds = [(r["cmd"], r["source"], r["ok"]) for r in records if r["type"] == "command"]
    assert cmds == [("lr head 0.01", client.source, True), ("stop", client.source, True)]
    end = records[-1]
    assert end["type"] == "end" and end["state"] == "STOPPED" and Path(end["checkpoint"]).is_file()
    assert list(run.runtime.iterdir()) == []  # the socket and info file are gone


def test_tuiconsole_attach_from_another_process_steers_it(script) -> None:
    """The real `tuiconsole attach ID --headless`: stdin lines are commands."""
    run = script()
    run_id = run.attach_line().split()[-1]
    listed = subprocess.run(
        [sys.executable, "-m", "tuiconsole", "ls", "--json"],
        env=run.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    rows = [json.loads(line) for line in listed.stdout.splitlines()]
    assert [(r["id"], r["state"]) for r in rows] == [(run_id, "RUNNING")], listed.stderr
    attached = subprocess.run(
        [sys.executable, "-m", "tuiconsole", "attach", run_id, "--headless"],
        env=run.env,
        input="lr body 0.002\nstop\n",
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert attached.returncode == 0, attached.stderr
    assert "lr body 0.002: lr body 0.01->0.002" in attached.stdout
    code, _, err = run.finish()
    assert code == 0 and "Traceback" not in err, err
    cmds = [r["cmd"] for r in run.journal() if r["type"] == "command"]
    assert cmds == ["lr body 0.002", "stop"]
    assert run.journal()[-1]["state"] == "STOPPED"


def test_ctrl_c_stops_python_train_py_with_a_final_checkpoint(script) -> None:
    """Ctrl+C inside a step: that step finishes, the run stops at its boundary with a
    final checkpoint, and the process exits 130 without a traceback (as `tuiconsole run`)."""
    run = script("interrupt")
    run.attach_line()
    assert run.proc.stdout is not None
    assert run.proc.stdout.readline().strip() == "waiting in the forward pass"
    run.proc.send_signal(signal.SIGINT)
    code, _, err = run.finish()
    assert code == 128 + signal.SIGINT, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    assert "tuiconsole: stopped at step 6; last checkpoint" in err
    records = run.journal()
    stop, end = records[-2], records[-1]
    assert (stop["cmd"], stop["source"], stop["step"]) == ("stop", "signal:SIGINT", 6)
    assert end == {**end, "type": "end", "state": "STOPPED", "step": 6}
    assert Path(end["checkpoint"]).is_file()


def test_misuse_is_one_error_at_the_users_line(script) -> None:
    run = script("misuse")
    run.attach_line()
    code, _, err = run.finish()
    assert code == 1
    assert (
        "tuiconsole.errors.TuiconsoleError: steer.step(loss): the loss must be a tensor or a "
        "number, got str" in err
    )
    assert "own_loop_tiny.py" in err and "tuiconsole/engine" not in err
    assert run.journal()[-1]["state"] == "ERROR"
