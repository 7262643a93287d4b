"""The console and the training process are two processes: each can fail alone.

`tuiconsole run` in a real pty: the console (this test's child) shows the script
loading, then the run; the training process beside it trains and serves the socket.
Killing either one must leave the other, the journal and the checkpoints in the
state the README promises. Real processes, real signals, real files.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from tests.reliability.helpers import SLOW_SCRIPT, STUCK_SCRIPT, wait_until, write_script
from tests.reliability.test_stopping import ConsoleInPty, assert_clean_stop
from tuiconsole.remote.registry import live_runs

pytestmark = [pytest.mark.pty, pytest.mark.subprocess]

LOADING_SCRIPT = (
    "import time\n"
    "print('building the dataset...', flush=True)\n"
    "time.sleep(4)  # a dataset that takes a while to build\n" + SLOW_SCRIPT
)


def training_pid(run_dir: Path, timeout: float = 60) -> int:
    """The pid of the training process serving ``run_dir`` (from its run info file)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for info in live_runs():
            if Path(info.run_dir) == run_dir.resolve():
                return info.pid
        time.sleep(0.05)
    raise AssertionError(f"no training process serves {run_dir}")


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def wait_gone(pid: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not gone(pid):
        assert time.monotonic() < deadline, f"pid {pid} is still running"
        time.sleep(0.05)


def test_the_console_shows_the_script_loading_then_the_run(tmp_path):
    script = tmp_path / "loading.py"
    script.write_text(LOADING_SCRIPT)
    console = ConsoleInPty(script, tmp_path / "run")
    try:
        console.wait_for(b"LOADING", timeout=60)  # at once: the console imports no torch
        console.wait_for(b"building the dataset...")  # what the script printed so far
        assert not (tmp_path / "run" / "journal.jsonl").exists()
        console.wait_running()
        mark = len(console.output)
        console.type("q")
        console.wait_for(b"Quit tuiconsole?", since=mark)
        console.type("y")
        assert console.proc.wait(60) == 0
        assert_clean_stop(tmp_path / "run", "ui")
    finally:
        console.close()


def test_quitting_while_the_script_loads_ends_both_and_leaves_nothing(tmp_path):
    script = tmp_path / "loading.py"
    script.write_text(LOADING_SCRIPT)
    console = ConsoleInPty(script, tmp_path / "run")
    try:
        console.wait_for(b"building the dataset...", timeout=60)
        mark = len(console.output)
        console.type("q")
        console.wait_for(b"Quit tuiconsole?", since=mark)
        console.type("y")
        assert console.proc.wait(60) == 130
        console.drained(10)
        after = bytes(console.output).rsplit(b"\x1b[?1049l", 1)[1].decode()
        assert "interrupted while loading the script; nothing written" in after, after
        assert not (tmp_path / "run").exists()
    finally:
        console.close()


def test_a_killed_console_stops_the_run_cleanly(tmp_path):
    """kill -9 of the console: its owner pipe closes, so the training process stops at
    the next step with its final checkpoint, and exits (the user had not detached)."""
    console = ConsoleInPty(write_script(tmp_path, SLOW_SCRIPT), tmp_path / "run")
    try:
        console.wait_running()
        pid = training_pid(tmp_path / "run")
        console.proc.kill()
        console.proc.wait(10)
        wait_gone(pid)
        assert_clean_stop(tmp_path / "run", "console")
        assert not [i for i in live_runs() if i.pid == pid]  # socket and info removed
    finally:
        console.close()


def test_a_killed_training_process_is_shown_with_its_step_and_what_is_on_disk(tmp_path):
    console = ConsoleInPty(write_script(tmp_path, SLOW_SCRIPT), tmp_path / "run")
    try:
        console.wait_running()
        pid = training_pid(tmp_path / "run")
        mark = len(console.output)
        console.type("c")  # a checkpoint to find on disk afterwards
        wait_until(lambda: list((tmp_path / "run").glob("checkpoint-step*.pt")), "a checkpoint")
        os.kill(pid, signal.SIGKILL)
        console.wait_for(b"was killed by SIGKILL at step", since=mark)
        assert console.proc.poll() is None, "the console must stay up to show it"
        console.type("q")
        console.wait_for(b"Quit tuiconsole?", since=mark)
        console.type("y")
        assert console.proc.wait(30) == 128 + signal.SIGKILL
        console.drained(10)
        after = bytes(console.output).rsplit(b"\x1b[?1049l", 1)[1]  # the terminal is back
        assert b"was killed by SIGKILL at step" in after and b"checkpoint-step" in after, after
        lines = (tmp_path / "run" / "journal.jsonl").read_text().splitlines()
        records = [json.loads(line) for line in lines]  # whole lines only
        assert records[-1]["type"] == "command" and records[-1]["cmd"] == "checkpoint"
    finally:
        console.close()


def test_a_broken_script_is_one_line_and_exit_2_in_the_terminal(tmp_path):
    script = tmp_path / "broken.py"
    script.write_text("import torch\nmodel = torch.nn.Linear(2, 2)\n")
    console = ConsoleInPty(script, tmp_path / "run")
    try:
        assert console.proc.wait(60) == 2
        console.drained(10)
        text = bytes(console.output).decode(errors="replace")
        assert "the script must define `optimizer`" in text and "Traceback" not in text
        assert not (tmp_path / "run").exists()  # nothing left behind
    finally:
        console.close()


def test_a_stop_from_the_console_gives_up_on_a_stuck_step_after_the_grace(tmp_path, monkeypatch):
    """q, or SIGTERM to the console, while the training process's main thread is stuck
    in the loader: after the stop grace the run's files are ended without that step,
    the console says no final checkpoint was written, and both processes are gone."""
    monkeypatch.setenv("TUICONSOLE_STOP_GRACE", "1")
    consoles = {}
    for how in ("q", "SIGTERM"):
        folder = tmp_path / how
        folder.mkdir()
        consoles[how] = ConsoleInPty(write_script(folder, STUCK_SCRIPT), folder / "run")
    try:
        pids = {}
        for how, console in consoles.items():
            wait_until(lambda how=how: (tmp_path / how / "stuck").exists(), "the loader to hang")
            pids[how] = training_pid(tmp_path / how / "run")
            if how == "q":
                mark = len(console.output)
                console.type("q")
                console.wait_for(b"Quit tuiconsole?", since=mark)
                console.type("y")
            else:
                console.proc.send_signal(signal.SIGTERM)
        for how, code in (("q", 0), ("SIGTERM", 143)):
            console = consoles[how]
            assert console.proc.wait(60) == code, bytes(console.output[-2000:])
            console.drained(10)
            after = bytes(console.output).rsplit(b"\x1b[?1049l", 1)[1].decode()
            assert "step 6 did not finish within 1 s (stuck in the loader)" in after, after
            assert "no final checkpoint was written" in after and "last checkpoint" not in after
            wait_gone(pids[how])
            records = [
                json.loads(line)
                for line in (tmp_path / how / "run" / "journal.jsonl").read_text().splitlines()
            ]
            assert records[-1]["type"] == "end" and records[-1]["checkpoint"] is None
            assert records[-1]["unfinished"] == {"step": 6, "phase": "data"}
            source = "ui" if how == "q" else "signal:SIGTERM"
            assert (records[-2]["cmd"], records[-2]["source"]) == ("stop", source)
    finally:
        for console in consoles.values():
            console.close()


OWN_LOOP_SCRIPT = """
import time
import torch
from torch import nn
import tuiconsole

torch.manual_seed(0)
model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
x, y = torch.randn(32, 8), torch.randint(0, 2, (32,))


def main():
    steer = tuiconsole.steer(model, optimizer)
    while True:
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        steer.step(loss)
        time.sleep(0.002)


if __name__ == "__main__":
    main()
"""


def test_the_console_steers_a_program_with_a_loop_of_its_own(tmp_path):
    """`tuiconsole run own.py`: the console opens on the script's steer() run; a command
    typed there reaches the script's optimizer; quitting stops it with a final checkpoint."""
    script = tmp_path / "own.py"
    script.write_text(OWN_LOOP_SCRIPT)
    console = ConsoleInPty(script, tmp_path / "run")
    try:
        console.wait_running()
        mark = len(console.output)
        console.type(":")
        time.sleep(0.3)
        console.type("lr all 0.02\r")
        console.wait_for(b"0.1->0.02", since=mark)
        mark = len(console.output)
        console.type("q")
        console.wait_for(b"Quit tuiconsole?", since=mark)
        console.type("y")
        assert console.proc.wait(60) == 0
        step = assert_clean_stop(tmp_path / "run", "ui")
        records = [json.loads(x) for x in (tmp_path / "run" / "journal.jsonl").open()]
        (lr,) = [r for r in records if r.get("cmd") == "lr all 0.02"]
        assert lr["ok"] and 0 < lr["step"] <= step
        assert lr["groups"][0]["lr"] == 0.02
    finally:
        console.close()
