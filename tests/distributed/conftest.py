"""Real 2-rank gloo jobs on the CPU, through torch's own launcher (torchrun).

Each job is started by the CLI (``tuiconsole run --nproc-per-node 2 ...``), so the
whole path is real: torchrun's launcher, one ``tuiconsole run`` per rank, the process
group, DDP, rank 0's socket and files. Each rank writes what it ended with to
``TUICONSOLE_RANK_DUMP`` (engine/distributed.py: dump), which the tests compare.
Every process a test starts is killed in teardown, whatever the test did.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tuiconsole.remote.client import RemoteSession
from tuiconsole.remote.registry import ENV_DIR, read_info

HERE = Path(__file__).parent
TINY = HERE / "scripts" / "tiny.py"
OWN_DDP = HERE / "scripts" / "own_ddp.py"
START_TIMEOUT = 90.0


def _rank_pids(marker: str) -> dict[str, int]:
    """pids of the processes whose command line holds ``marker``, by RANK ("" for torchrun)."""
    found: dict[str, int] = {}
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            if marker not in cmdline or int(proc.name) == os.getpid():
                continue
            env = dict(
                line.split("=", 1)
                for line in (proc / "environ").read_bytes().decode().split("\0")
                if "=" in line
            )
        except (OSError, ValueError):
            continue
        if "torch.distributed.run" in cmdline:
            found[""] = int(proc.name)
        elif "RANK" in env:
            found[env["RANK"]] = int(proc.name)
    return found


class Job:
    """A torchrun job of ``tuiconsole run`` (its run dir names it; see module doc)."""

    def __init__(self, base: Path, name: str, env: dict[str, str]) -> None:
        self.run_dir = base / name
        self.dump_dir = base / f"{name}-ranks"
        self.dump_dir.mkdir()
        self.env = {**env, "TUICONSOLE_RANK_DUMP": str(self.dump_dir)}
        self.proc: subprocess.Popen[str] | None = None
        self.session: RemoteSession | None = None

    def args(self, script: Path, *extra: str) -> list[str]:
        return [
            sys.executable,
            "-m",
            "tuiconsole",
            "run",
            "--nproc-per-node",
            "2",
            str(script),
            "--run-dir",
            str(self.run_dir),
            *extra,
        ]

    def detach(self, script: Path = TINY, *extra: str) -> RemoteSession:
        """Start it in the background (``--detach``) and connect to rank 0's socket."""
        done = subprocess.run(
            self.args(script, "--detach", "--linger", "0", *extra),
            env=self.env,
            capture_output=True,
            text=True,
            timeout=START_TIMEOUT,
        )
        assert done.returncode == 0, done.stderr + self.log()
        run_id = done.stdout.strip().splitlines()[-1]
        info = read_info(Path(self.env[ENV_DIR]) / f"{run_id}.json")
        assert info is not None and info.world_size == 2, done.stderr
        self.session = RemoteSession(info)
        return self.session

    def headless(self, script: Path = TINY, *extra: str) -> subprocess.Popen[str]:
        """Start it in the foreground (``--headless``: this process becomes torchrun)."""
        self.proc = subprocess.Popen(
            self.args(script, "--headless", "--no-listen", *extra),
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        return self.proc

    def finish(self, timeout: float = START_TIMEOUT) -> tuple[int, str]:
        assert self.proc is not None
        out, _ = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, out

    def do(self, command: str) -> str:
        assert self.session is not None
        result = self.session.submit(command).result(timeout=30)
        assert result.ok, f"{command}: {result.message}"
        return result.message

    def wait_step(self, step: int, state: str | None = None, timeout: float = 30.0) -> None:
        assert self.session is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self.session.snapshot().status
            if status.step >= step and (state is None or status.state.value == state):
                return
            time.sleep(0.05)
        raise AssertionError(f"not at step {step} {state or ''} after {timeout} s: {status}")

    def wait_ranks(self, timeout: float = 30.0) -> list[dict]:
        """Both ranks' dumps, once both ranks ended."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            paths = sorted(self.dump_dir.glob("rank*.json"))
            if len(paths) == 2:
                time.sleep(0.1)  # written whole by now (json.dumps, then one write)
                return [json.loads(p.read_text()) for p in paths]
            time.sleep(0.05)
        raise AssertionError(f"the ranks did not both end: {self.log()}")

    def journal(self) -> list[dict]:
        path = self.run_dir / "journal.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def log(self) -> str:
        path = self.run_dir / "tuiconsole.log"
        return path.read_text()[-3000:] if path.exists() else ""

    def pids(self) -> dict[str, int]:
        return _rank_pids(str(self.run_dir))

    def kill(self) -> None:
        if self.session is not None:
            self.session.close()
        for pid in self.pids().values():
            for sig in (signal.SIGCONT, signal.SIGKILL):
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    break
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def jobs() -> Iterator[callable]:
    """``jobs(name)``: a Job in a private tmp dir and runtime dir, killed at teardown."""
    base = Path(tempfile.mkdtemp(prefix="tcdist-", dir="/tmp"))
    runtime = base / "rt"
    runtime.mkdir(mode=0o700)
    env = {**os.environ, ENV_DIR: str(runtime), "PYTHONUNBUFFERED": "1"}
    env.pop("WORLD_SIZE", None)
    made: list[Job] = []

    def make(name: str) -> Job:
        job = Job(base, name, env)
        made.append(job)
        return job

    old = os.environ.get(ENV_DIR)
    os.environ[ENV_DIR] = str(runtime)
    try:
        yield make
    finally:
        for job in made:
            job.kill()
        if old is None:
            os.environ.pop(ENV_DIR, None)
        else:
            os.environ[ENV_DIR] = old
        shutil.rmtree(base, ignore_errors=True)
