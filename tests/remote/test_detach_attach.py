"""Detach and attach across real processes: `run --detach`, `ls`, `attach`, clients that die.

One background run (tiny_model.py) is shared by the tests of this module that
leave it running; tests that end a run start their own.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import termios
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from remote_helpers import TINY, Detached, cli, kill_matching, kill_pid, wait_until

from tuiconsole.remote import protocol as P
from tuiconsole.remote.client import RemoteSession
from tuiconsole.remote.registry import ENV_DIR, read_info

pytestmark = pytest.mark.subprocess

RESULT_TIMEOUT = 20.0

# A second client in its own process: applies argv[2] (if any), prints what it sees.
CLIENT = """
import json, sys
from tuiconsole.remote.client import RemoteSession
s = RemoteSession(sys.argv[1])
res = s.submit(sys.argv[2]).result(20) if len(sys.argv) > 2 else None
snap = s.snapshot()
print(json.dumps({
    "source": s.source,
    "result": None if res is None else [res.ok, res.message],
    "lrs": {g.name: g.lr for g in snap.groups},
    "log": [[e.source, e.text] for e in snap.log if e.kind == "command"],
}))
s.close()
"""


class Fleet:
    """Every process this module needs, started side by side (each import of torch is slow)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.dirs: list[str] = []
        self.env = self.new_env()
        self.shared = Detached(self.env, root / "shared")
        self.ender = Detached(self.env, root / "ender", "--paused")
        self.termed = Detached(self.env, root / "termed", "--paused")
        self.broken_env = self.new_env()
        script = root / "broken.py"
        script.write_text("import torch\nmodel = torch.nn.Linear(2, 2)\n")
        self.broken = self.popen(
            ["run", str(script), "--detach", "--run-dir", str(root / "broken")], self.broken_env
        )
        self.fg_env = self.new_env()
        self.foreground = self.popen(
            ["run", str(TINY), "--headless", "--run-dir", str(root / "fg")], self.fg_env
        )

    def new_env(self) -> dict[str, str]:
        path = tempfile.mkdtemp(prefix="tcrt-", dir="/tmp")  # short: socket paths are limited
        self.dirs.append(path)
        return {**os.environ, ENV_DIR: path, "PYTHONUNBUFFERED": "1"}

    @staticmethod
    def popen(args: list[str], env: dict[str, str]) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-m", "tuiconsole", *args],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )

    def ready(self) -> Fleet:
        for run in (self.shared, self.ender, self.termed):
            run.ready()
        return self

    def close(self) -> None:
        for proc in (self.broken, self.foreground):
            with contextlib.suppress(OSError):
                proc.kill()
            with contextlib.suppress(Exception):
                proc.communicate(timeout=10)
        for run in (self.shared, self.ender, self.termed):
            run.kill()
        kill_matching(str(self.root))
        for d in self.dirs:
            shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory) -> Iterator[Fleet]:
    f = Fleet(tmp_path_factory.mktemp("fleet"))
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv(ENV_DIR, f.env[ENV_DIR])
            yield f.ready()
    finally:
        f.close()


@pytest.fixture
def shared(fleet: Fleet) -> Detached:
    assert fleet.shared.alive(), "the shared background run died"
    return fleet.shared


def _step(run: Detached) -> int:
    s = RemoteSession(run.info, lite=True)
    try:
        return s.snapshot().status.step
    finally:
        s.close()


def _goes_on(run: Detached) -> None:
    """The run is alive and still training."""
    assert run.alive()
    first = _step(run)
    wait_until(lambda: _step(run) > first, 20, "the run to keep training")


def _second_client(run: Detached, *command: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", CLIENT, run.info.socket, *command],
        env=run.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def _state(run: Detached) -> str:
    s = RemoteSession(run.info, lite=True)
    try:
        return s.snapshot().status.state.value
    finally:
        s.close()


def test_detach_prints_an_id_and_ls_lists_the_run(shared) -> None:
    wait_until(lambda: _state(shared) == "RUNNING", 30, "the run to start")  # not STARTING
    out = cli("ls", env=shared.env)
    assert out.returncode == 0, out.stderr
    header, *rows = out.stdout.splitlines()
    assert header.split()[:5] == ["ID", "SCRIPT", "STATE", "STEP", "LOSS"]
    (row,) = [r for r in rows if r.startswith(shared.id)]
    assert row.split()[:3] == [shared.id, "tiny_model.py", "RUNNING"]
    assert str(shared.run_dir.resolve()) in row
    from typer.testing import CliRunner

    from tuiconsole.cli import app

    listing = CliRunner().invoke(app, ["ls", "--json"])  # in-process: same runtime dir
    (mine,) = [r for r in map(json.loads, listing.stdout.splitlines()) if r["id"] == shared.id]
    assert mine["state"] == "RUNNING" and mine["step"] >= 0 and mine["pid"] == shared.pid


def test_steer_detach_reattach_from_another_process(shared) -> None:
    first = RemoteSession(shared.info)
    result = first.submit("lr head 0.123").result(RESULT_TIMEOUT)
    assert result.ok, result
    wait_until(lambda: first.snapshot().group("head").lr == 0.123, 10, "lr in the snapshot")
    mine = first.source
    first.close()  # detach
    _goes_on(shared)
    seen = _second_client(shared, "decay 0.5 body")  # another process, another source tag
    assert seen["lrs"]["head"] == 0.123
    assert [mine, "lr head 0.123: lr head=0.123"] in seen["log"] or any(
        src == mine and text.startswith("lr head 0.123") for src, text in seen["log"]
    )
    assert seen["result"][0] is True and seen["source"] != mine
    again = RemoteSession(shared.info)  # re-attach: both commands, both sources, in the log
    try:

        def decay_seen() -> bool:
            log = [(e.source, e.text) for e in again.snapshot().log if e.kind == "command"]
            return any(src == seen["source"] and "decay" in text for src, text in log)

        wait_until(decay_seen, 10, "the other client's command in the log")
    finally:
        again.close()
    journal = [e for e in shared.journal() if e.get("type") == "command"]
    assert (mine, "lr head 0.123") in [(e["source"], e["cmd"]) for e in journal]
    assert any(e["source"] == seen["source"] and e["cmd"].startswith("decay 0.5") for e in journal)


def test_a_client_killed_mid_message_does_not_hurt_the_run(shared) -> None:
    code = (
        "import os, signal, socket, sys\n"
        "from tuiconsole.remote import protocol as P\n"
        "s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])\n"
        "s.sendall(P.message('hello', pid=os.getpid(), rate=30))\n"
        "m = P.message('command', id=1, text='stop')\n"
        "s.sendall(m[: len(m) // 2])\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, shared.info.socket], env=shared.env)
    assert proc.returncode == -signal.SIGKILL
    _goes_on(shared)
    assert _second_client(shared)["lrs"]  # others still attach and read


def test_garbage_and_an_oversized_frame_drop_only_that_client(shared) -> None:
    watcher = RemoteSession(shared.info)
    try:
        for data in (b"\x00\x00\x00\x10this is not json", P.HEADER.pack(50 * 1024 * 1024)):
            s = socket.socket(socket.AF_UNIX)
            s.settimeout(10)
            s.connect(shared.info.socket)
            s.sendall(data)
            with contextlib.suppress(OSError):
                while s.recv(65536):
                    pass  # the server answers with an error frame, then closes
            s.close()
        log = Path(shared.info.log).read_text()
        assert "malformed frame" in log and "oversized frame: 52428800 bytes" in log
        assert watcher.submit("set head momentum=0.85").result(RESULT_TIMEOUT).ok
        assert not watcher.disconnected
    finally:
        watcher.close()
    _goes_on(shared)


def test_the_run_survives_sighup_of_its_client_and_itself(shared) -> None:
    client = subprocess.Popen(
        [sys.executable, "-m", "tuiconsole", "attach", shared.id, "--headless"],
        env=shared.env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert client.stdout is not None
        assert client.stdout.readline().startswith(f"attached to run {shared.id}")
        client.send_signal(signal.SIGHUP)  # the SSH connection of that terminal dropped
        assert client.wait(10) == -signal.SIGHUP
    finally:
        kill_pid(client.pid)
    os.kill(shared.pid, signal.SIGHUP)  # even a hangup sent to the run itself
    _goes_on(shared)


def test_headless_attach_streams_and_sends_stdin_commands(shared) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tuiconsole", "attach", shared.id[:3], "--headless"],
        env=shared.env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write("set body weight_decay=0.001\n")
        proc.stdin.flush()
        wait_until(lambda: "weight_decay" in proc.stdout.readline(), 20, "the command echoed")
        proc.send_signal(signal.SIGINT)  # ctrl+c detaches
        _, err = proc.communicate(timeout=10)
        assert proc.returncode == 0 and f"detached from run {shared.id}; it goes on" in err
    finally:
        kill_pid(proc.pid)
    _goes_on(shared)


def test_the_console_app_drives_the_run_through_the_socket(shared) -> None:
    pytest.importorskip("tuiconsole.ui.app")
    import asyncio

    from tuiconsole.ui.app import ConsoleApp

    async def drive() -> None:
        session = RemoteSession(shared.info)
        observer = RemoteSession(shared.info)
        app = ConsoleApp(session, refresh_hz=10, script_name="tiny_model.py")
        try:
            async with app.run_test(size=(120, 40)) as pilot:
                await pilot.pause(0.3)
                assert app.snap is not None and app.snap.run_dir == str(shared.run_dir.resolve())
                await pilot.press("space")  # pause
                for _ in range(100):
                    if observer.snapshot().status.state.value == "PAUSED":
                        break
                    await asyncio.sleep(0.1)
                assert observer.snapshot().status.state.value == "PAUSED"
                await pilot.press("space")  # resume
                for _ in range(100):
                    if observer.snapshot().status.state.value == "RUNNING":
                        break
                    await asyncio.sleep(0.1)
                assert observer.snapshot().status.state.value == "RUNNING"
        finally:
            session.close()
            observer.close()

    asyncio.run(drive())
    sources = {(e["source"], e["cmd"]) for e in shared.journal() if e.get("type") == "command"}
    assert any(src.startswith("remote:") and cmd == "pause" for src, cmd in sources)
    _goes_on(shared)


# ---------------------------------------------------------------------- runs that end


def test_stop_ends_a_detached_run_which_exits_when_the_last_client_leaves(fleet) -> None:
    run = fleet.ender
    a, b = RemoteSession(run.info), RemoteSession(run.info)
    try:
        assert a.snapshot().status.state.value == "PAUSED"
        assert a.submit("stop").result(RESULT_TIMEOUT).ok
        assert a.wait(20) and b.wait(20)
        wait_until(lambda: b.snapshot().status.state.value == "STOPPED", 10, "STOPPED")
        a.close()
        assert run.alive()  # a console still shows the final state: the process waits
        assert b.submit("eval").result(RESULT_TIMEOUT).ok is False  # the run has ended
    finally:
        a.close()
        b.close()  # the last one leaves; with --linger 0 the process exits
    wait_until(lambda: not run.alive(), 30, "the background process to exit")
    assert not Path(run.info.socket).exists() and not run.info.info_path.exists()
    assert "stopped at step 0" in Path(run.info.log).read_text()


def test_sigterm_stops_a_detached_run_cleanly(fleet) -> None:
    run = fleet.termed
    watcher = RemoteSession(run.info)
    os.kill(run.pid, signal.SIGTERM)
    assert watcher.wait(30)
    wait_until(lambda: watcher.disconnected, 30, "the server to say goodbye")
    assert "ended" in (watcher.disconnect_reason or "")
    wait_until(lambda: not run.alive(), 30, "the background process to exit")
    assert not Path(run.info.socket).exists()
    journal = run.journal()
    assert journal[0]["type"] == "header"
    assert ("signal:SIGTERM", "stop") in [(e.get("source"), e.get("cmd")) for e in journal]
    assert "stopped at step 0" in Path(run.info.log).read_text()


def test_a_broken_script_fails_detach_with_its_message(fleet) -> None:
    _, err = fleet.broken.communicate(timeout=60)
    assert fleet.broken.returncode == 2, err
    assert "optimizer" in err and "Traceback" not in err
    assert list(Path(fleet.broken_env[ENV_DIR]).iterdir()) == []


def test_a_foreground_run_is_attachable_too(fleet) -> None:
    proc, rt = fleet.foreground, Path(fleet.fg_env[ENV_DIR])
    assert proc.stderr is not None
    line = ""
    while "tuiconsole attach" not in line:
        line = proc.stderr.readline()
        assert line, "the foreground run ended without saying how to attach"
    run_id = line.split()[-1]
    client = RemoteSession(rt / f"{run_id}.sock")
    assert client.snapshot().status.script == "tiny_model.py"
    assert client.submit("stop").result(RESULT_TIMEOUT).ok
    assert proc.wait(30) == 0  # a foreground run ends with its own front-end
    assert client.wait(10)
    client.close()
    assert list(rt.iterdir()) == []


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash for job control")
@pytest.mark.pty
def test_ctrl_d_detaches_the_console_and_the_run_outlives_its_terminal(tmp_path) -> None:
    """`tuiconsole run` in an interactive shell (a real pty, bash with job control):
    ctrl+d ends the console, the prompt comes back at once (no job is left behind),
    and training goes on in its own process, through the terminal's hangup."""
    import pty

    rt = tempfile.mkdtemp(prefix="tcrt-", dir="/tmp")
    env = {**os.environ, ENV_DIR: rt, "PYTHONUNBUFFERED": "1", "PS1": "PROMPT$ "}
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    shell = subprocess.Popen(
        ["bash", "--norc", "--noprofile", "-i"],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        start_new_session=True,  # bash takes the pty as its controlling terminal
        env=env,
    )
    os.close(slave)
    output = bytearray()
    run_dir = tmp_path / "run"

    def read_until(text: bytes, since: int = 0, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while text not in output[since:]:
            assert time.monotonic() < deadline, f"{text!r} never shown: {bytes(output[-2000:])!r}"
            ready, _, _ = select.select([master], [], [], 0.1)
            if ready:
                output.extend(os.read(master, 65536))

    closed = False
    try:
        read_until(b"PROMPT$ ")
        cmd = f"{sys.executable} -m tuiconsole run {TINY} --run-dir {run_dir}\n"
        os.write(master, cmd.encode())
        read_until(b"RUNNING")
        os.write(master, b"\x04")  # ctrl+d
        read_until(b"detached: run ")
        mark = output.index(b"detached: run ")
        read_until(b"PROMPT$ ", since=mark)  # the shell is back: the console process exited
        run_id = bytes(output[mark:]).split()[2].decode()
        info = read_info(Path(rt) / f"{run_id}.json")
        assert info is not None and info.detached  # `ls` lists it as a background run now
        del output[:]
        os.write(master, b"jobs; echo JOBS-DONE\n")
        read_until(b"JOBS-DONE\r\n")
        assert b"Running" not in output and b"Stopped" not in output, bytes(output)
        os.close(master)  # the terminal goes away (SSH closed)
        closed = True
        shell.wait(10)
        client = RemoteSession(Path(rt) / f"{run_id}.sock")
        step = client.snapshot().status.step
        wait_until(lambda: client.snapshot().status.step > step + 5, 20, "training to go on")
        assert client.submit("stop").result(RESULT_TIMEOUT).ok
        client.close()
        wait_until(lambda: not list(Path(rt).iterdir()), 30, "the run to end and clean up")
        log = (run_dir / "tuiconsole.log").read_text()  # its output never was the tty's
        assert "stop: stopped at step" in log
        journal = [
            json.loads(line) for line in (run_dir / "journal.jsonl").read_text().splitlines()
        ]
        assert journal[-1]["type"] == "end" and journal[-1]["checkpoint"]
    finally:
        for path in Path(rt).glob("*.json"):  # a run left by a failure: it has no terminal
            info = read_info(path)
            if info is not None:
                kill_pid(info.pid, hard=True)
        if not closed:
            with contextlib.suppress(OSError):
                os.write(master, b"exit\n")
        with contextlib.suppress(subprocess.TimeoutExpired):
            shell.wait(10)
        if shell.poll() is None:
            shell.kill()
        if not closed:
            os.close(master)
        shutil.rmtree(rt, ignore_errors=True)
