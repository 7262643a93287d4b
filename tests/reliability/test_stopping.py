"""Stopping: Ctrl+C, SIGTERM, SIGHUP (and `q` in the console) stop within one step,
write a final checkpoint, flush journal and metrics and exit with a documented
code; `kill -9` leaves a journal that is valid JSONL holding every command the
user saw applied. Real subprocesses; the console runs in a real pty."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import struct
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path

import pytest

from tests.reliability.helpers import (
    SLOW_SCRIPT,
    cli_env,
    jsonl,
    wait_for_file_line,
    wait_until,
    write_script,
)
from tuiconsole.engine.checkpoint import load_checkpoint
from tuiconsole.engine.commands import parse
from tuiconsole.engine.journal import read_journal

pytestmark = pytest.mark.subprocess

EXIT = {"SIGINT": 130, "SIGTERM": 143, "SIGHUP": 129}


def assert_clean_stop(run_dir: Path, source: str, state: str = "STOPPED") -> int:
    """The journal ends with the stop and an `end` record; checkpoint + metrics at that step."""
    recs = jsonl(run_dir / "journal.jsonl")
    end = recs[-1]
    assert end["type"] == "end" and end["state"] == state, end
    stop = recs[-2]
    assert stop["type"] == "command" and stop["cmd"] == "stop" and stop["source"] == source
    assert stop["step"] == end["step"]  # no step after the stop arrived
    ckpt = load_checkpoint(Path(end["checkpoint"]))
    assert ckpt["step"] == end["step"] and ckpt["reason"] == "final"
    train = [r for r in jsonl(run_dir / "metrics.jsonl") if r["type"] == "train"]
    assert train[-1]["step"] == end["step"]  # the metrics were flushed at the stop
    return end["step"]


def test_headless_signals_stop_cleanly(tmp_path):
    script = write_script(tmp_path, SLOW_SCRIPT)
    procs = {}
    for name in EXIT:
        out = tmp_path / f"{name}.out"
        proc = subprocess.Popen(
            [sys.executable, "-m", "tuiconsole", "run", str(script), "--headless"]
            + ["--no-listen", "--log-every", "10", "--run-dir", str(tmp_path / name)],
            stdin=subprocess.DEVNULL,
            stdout=out.open("w"),
            stderr=subprocess.STDOUT,
            env=cli_env(),
        )
        procs[name] = (proc, out, tmp_path / name)
    try:
        for name, (proc, out, _) in procs.items():
            wait_for_file_line(out, "step 10 ", timeout=120)  # printing: handlers are in
            proc.send_signal(getattr(signal, name))
        for name, (proc, out, run_dir) in procs.items():
            t0 = time.monotonic()
            assert proc.wait(60) == EXIT[name], out.read_text()
            assert time.monotonic() - t0 < 30
            text = out.read_text()
            assert f"tuiconsole: stopped by {name}; final checkpoint written" in text
            assert "Traceback" not in text
            step = assert_clean_stop(run_dir, f"signal:{name}")
            assert f"stopped at step {step}" in text and "final checkpoint written to" in text
    finally:
        for proc, _, _ in procs.values():
            if proc.poll() is None:
                proc.kill()


class ConsoleInPty:
    """`tuiconsole run` with a pty as its controlling terminal, 80x24, output drained."""

    def __init__(self, script: Path, run_dir: Path, *extra: str) -> None:
        self.master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
        env = cli_env() | {"TERM": "xterm-256color", "COLUMNS": "80", "LINES": "24"}
        self.run_dir = run_dir

        def become_session_leader() -> None:  # so that closing the pty sends SIGHUP
            os.setsid()
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)

        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tuiconsole", "run", str(script), "--no-listen", *extra]
            + ["--run-dir", str(run_dir)],
            stdin=slave,
            stdout=slave,
            stderr=slave,
            env=env,
            preexec_fn=become_session_leader,
            close_fds=True,
        )
        os.close(slave)
        self.output = bytearray()
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()

    def _drain(self) -> None:
        while True:
            try:
                chunk = os.read(self.master, 65536)
            except OSError:
                return
            if not chunk:
                return
            self.output += chunk

    def wait_running(self, timeout: float = 120) -> None:
        """Until the console shows RUNNING and the run has trained (its first metrics
        record, at step 50: a stop then has steps to checkpoint and metrics to flush)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if b"RUNNING" in self.output and '"type": "train"' in self._metrics():
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"console did not come up: {bytes(self.output[-2000:])!r}")

    def _metrics(self) -> str:
        path = self.run_dir / "metrics.jsonl"
        return path.read_text(errors="replace") if path.exists() else ""

    def wait_for(self, text: bytes, since: int = 0, timeout: float = 60) -> None:
        start = since
        deadline = time.monotonic() + timeout
        while text not in self.output[start:]:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise AssertionError(f"{text!r} never shown: {bytes(self.output[-2000:])!r}")
            time.sleep(0.05)

    def drained(self, timeout: float) -> None:
        """Wait until the reader saw the end of the output (the pty closes on exit)."""
        self._reader.join(timeout)
        assert not self._reader.is_alive(), "the console's output never ended"

    def type(self, keys: str) -> None:
        os.write(self.master, keys.encode())

    def hang_up(self) -> None:
        os.close(self.master)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        with contextlib.suppress(OSError):
            os.close(self.master)


CONSOLE_CASES = [
    ("q", 0, "ui"),
    ("ctrl+c", 0, "ui"),
    ("SIGINT", 130, "signal:SIGINT"),
    ("SIGTERM", 143, "signal:SIGTERM"),
    ("SIGHUP", 129, "signal:SIGHUP"),
]


@pytest.mark.pty
def test_console_stops_cleanly(tmp_path):
    """All five ways out of the console, each in its own pty, side by side."""
    script = write_script(tmp_path, SLOW_SCRIPT)
    consoles = {
        how: ConsoleInPty(script, tmp_path / how, "--refresh-hz", "2")
        for how, _, _ in CONSOLE_CASES
    }
    try:
        for how, _, _ in CONSOLE_CASES:
            console = consoles[how]
            console.wait_running()
            if how == "q":
                mark = len(console.output)
                console.type("q")
                console.wait_for(b"Quit tuiconsole?", since=mark)
                console.type("y")
            elif how == "ctrl+c":  # raw mode: a key, not a signal; the confirm takes another
                mark = len(console.output)
                console.type("\x03")
                console.wait_for(b"Quit tuiconsole?", since=mark)
                console.type("\x03")
            elif how == "SIGHUP":  # the terminal (SSH connection) goes away
                console.hang_up()
            else:
                console.proc.send_signal(getattr(signal, how))
        for how, code, source in CONSOLE_CASES:
            console = consoles[how]
            try:
                rc = console.proc.wait(60)
            except subprocess.TimeoutExpired:
                raise AssertionError((how, "did not exit", bytes(console.output[-3000:]))) from None
            assert rc == code, (how, bytes(console.output[-3000:]))
            if how != "SIGHUP":
                console.drained(10)  # every byte the console wrote before it exited
                assert b"\x1b[?1049l" in console.output, how  # left the alt screen: restored
                after = bytes(console.output).rsplit(b"\x1b[?1049l", 1)[1]
                assert b"stopped at step" in after and b"last checkpoint: " in after, after
            assert_clean_stop(console.run_dir, source)
    finally:
        for console in consoles.values():
            console.close()


def test_kill_9_leaves_a_valid_journal_with_every_acknowledged_command(tmp_path):
    script = write_script(tmp_path, SLOW_SCRIPT)
    out = tmp_path / "out.txt"
    run_dir = tmp_path / "run"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tuiconsole",
            "run",
            str(script),
            "--headless",
            "--no-listen",
            "--nan",
            "pause",
            "--run-dir",
            str(run_dir),
        ],
        stdin=subprocess.PIPE,
        stdout=out.open("w"),
        stderr=subprocess.STDOUT,
        env=cli_env(),
        text=True,
    )
    try:
        wait_for_file_line(run_dir / "journal.jsonl", '"type": "header"')
        sent = [f"lr all {0.05 - i * 0.001:.4f}" if i % 2 else "decay 0.99" for i in range(40)]
        for text in sent:
            proc.stdin.write(text + "\n")
            proc.stdin.flush()
            time.sleep(0.01)
        # Kill once at least ten of the 40 results were shown (more may follow).
        wait_until(lambda: out.read_text().count("[stdin] ") >= 10, "ten results shown")
        # the results the user already saw (complete lines only), in order
        shown = out.read_text().split("\n")[:-1]
        seen = [ln.split("[stdin] ", 1)[1].split(":", 1)[0] for ln in shown if "[stdin] " in ln]
        proc.kill()
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    lines = (run_dir / "journal.jsonl").read_text().splitlines()
    recs = [json.loads(line) for line in lines]  # every line is complete JSON
    commands = [r for r in recs if r["type"] == "command"]
    assert seen and seen == [parse(text).text for text in sent][: len(seen)]  # as journaled
    assert [r["cmd"] for r in commands][: len(seen)] == seen  # every one the user saw
    assert all(r["ok"] for r in commands)
    header, entries = read_journal(run_dir / "journal.jsonl")
    assert len(entries) == len(commands) and not any(r["type"] == "end" for r in recs)
    assert [e.step for e in entries] == sorted(e.step for e in entries)
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        json.loads(line)
