"""Helpers for the detach/attach tests: the CLI as a subprocess, real background runs."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from tuiconsole.remote.registry import ENV_DIR, RunInfo, pid_alive, read_info

HERE = Path(__file__).parent
TINY = HERE / "tiny_model.py"
START_TIMEOUT = 60.0


def cli(
    *args: str, env: dict[str, str], timeout: float = 60.0, **kw
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tuiconsole", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        **kw,
    )


def kill_pid(pid: int, timeout: float = 10.0, *, hard: bool = False) -> None:
    """SIGTERM (unless ``hard``), then SIGKILL; a process already gone (or a zombie) is fine."""
    for sig in (signal.SIGKILL,) if hard else (signal.SIGTERM, signal.SIGKILL):
        if not pid_alive(pid):
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        deadline = time.monotonic() + (timeout if sig == signal.SIGTERM else 5.0)
        while time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
            if not pid_alive(pid):
                return
            time.sleep(0.05)


def wait_until(
    cond: Callable[[], object], timeout: float = 20.0, what: str = "condition"
) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def kill_matching(marker: str) -> None:
    """Kill every process whose command line mentions ``marker`` (a test's own tmp path).

    The background runs a test starts are not its children (the CLI parent
    exits), so this is how teardown finds one that never reported ready.
    """
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if marker in cmdline and int(proc.name) != os.getpid():
            kill_pid(int(proc.name), hard=True)


class Detached:
    """A background run started through the CLI (`run --detach`).

    Construction starts the CLI and returns at once; :meth:`ready` waits for it,
    so several runs can start side by side.
    """

    def __init__(self, env: dict[str, str], run_dir: Path, *extra: str) -> None:
        self.env = env
        self.run_dir = run_dir
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "tuiconsole", "run", str(TINY), "--detach"]
            + ["--run-dir", str(run_dir), "--linger", "0", *extra],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def ready(self, timeout: float = START_TIMEOUT) -> Detached:
        out, err = self._proc.communicate(timeout=timeout)
        assert self._proc.returncode == 0, err
        self.id = out.strip().splitlines()[-1]
        info = read_info(Path(self.env[ENV_DIR]) / f"{self.id}.json")
        assert info is not None, err
        self.info: RunInfo = info
        self.pid = info.pid
        return self

    def alive(self) -> bool:
        return pid_alive(self.pid)

    def journal(self) -> list[dict]:
        path = self.run_dir / "journal.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def kill(self) -> None:
        with contextlib.suppress(OSError):
            self._proc.kill()
        kill_matching(str(self.run_dir))
