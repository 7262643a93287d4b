"""The smaller ways out: a SIGTERM while a step is stuck in the loader, a thread
the script leaves running, Ctrl+C while the script loads. Real subprocesses of
the CLI and real signals; each wait is a deadline, not a sleep."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.reliability.helpers import (
    MODEL,
    ROOT,
    STUCK_SCRIPT,
    cli_env,
    finish,
    jsonl,
    write_script,
)


def start(script: Path, run_dir: Path, *args: str, **env: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "tuiconsole", "run", str(script), "--headless", "--no-listen"]
        + ["--run-dir", str(run_dir), *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env() | env,
    )


def wait_for_path(path: Path, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)


@pytest.mark.subprocess
def test_sigterm_while_a_step_is_stuck_in_the_loader_exits_with_the_journal_flushed(tmp_path):
    """Two SIGTERMs used to be ignored and the process hung until kill -9."""
    script = write_script(tmp_path, STUCK_SCRIPT)
    proc = start(script, tmp_path / "run", TUICONSOLE_STOP_GRACE="1")
    wait_for_path(tmp_path / "stuck", proc)
    proc.send_signal(signal.SIGTERM)
    code, out, err = finish(proc)
    assert code == 143, (out, err)
    assert (
        "tuiconsole: stopped by SIGTERM; step 6 did not finish within 1 s (stuck in the "
        "loader), so no final checkpoint was written; journal flushed"
    ) in err, err
    assert "Traceback" not in out + err
    assert "stopped at step 5" in out
    recs = jsonl(tmp_path / "run" / "journal.jsonl")  # every line is whole JSON
    stop, end = recs[-2:]
    assert (stop["type"], stop["cmd"], stop["source"], stop["step"]) == (
        "command", "stop", "signal:SIGTERM", 5,
    )  # fmt: skip
    assert end["type"] == "end" and end["state"] == "STOPPED" and end["step"] == 5
    assert end["unfinished"] == {"step": 6, "phase": "data"}


@pytest.mark.subprocess
def test_a_thread_the_script_leaves_running_does_not_keep_the_process_alive(tmp_path):
    """Python waits for non-daemon threads at exit: the finished run used to hang."""
    script = write_script(
        tmp_path,
        MODEL
        + """
train_loader = [(X, y)] * 4
threading.Thread(target=threading.Event().wait, name="script-worker").start()
""",
    )
    code, out, err = finish(start(script, tmp_path / "run", "--max-steps", "3"))
    assert code == 0, (out, err)
    assert "finished at step 3" in out or "reached --max-steps 3" in out
    assert (
        "tuiconsole: the run has ended, but the script's thread 'script-worker' is still "
        "running; exiting without waiting for it"
    ) in err, err
    end = jsonl(tmp_path / "run" / "journal.jsonl")[-1]
    assert end["type"] == "end" and json.dumps(end)


@pytest.mark.subprocess
def test_ctrl_c_while_the_script_loads_prints_one_line(tmp_path):
    """Typer turned it into "Aborted!" with exit 1."""
    script = write_script(
        tmp_path,
        """
        import pathlib, time
        pathlib.Path(__file__).with_name("loading").write_text("")
        time.sleep(600)
        """,
    )
    proc = start(script, tmp_path / "run")
    wait_for_path(tmp_path / "loading", proc)
    proc.send_signal(signal.SIGINT)
    code, out, err = finish(proc)
    assert code == 130, (out, err)
    assert err == f"tuiconsole: {script}: interrupted while loading the script; nothing written\n"
    assert not (tmp_path / "run").exists()


def test_a_run_that_cannot_start_leaves_no_signal_blocked(tmp_path, monkeypatch):
    """Stop signals are held while the trainer starts. A start that failed (a run dir
    of another user) left them blocked in the process, and every child it started
    after that (in a test session: every CLI run) could no longer be stopped."""
    from tuiconsole import cli

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    os.chown(foreign, 4242, 4242)
    script = ROOT / "tests" / "e2e" / "scripts" / "tiny.py"
    argv = ["tuiconsole", "run", str(script), "--headless", "--no-listen"]
    monkeypatch.setattr(sys, "argv", [*argv, "--run-dir", str(foreign)])
    with pytest.raises(SystemExit) as exit_:
        cli.main()
    assert exit_.value.code == 2
    assert signal.pthread_sigmask(signal.SIG_BLOCK, []) == set()
