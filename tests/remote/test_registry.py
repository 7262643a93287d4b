"""The runtime dir's safety checks, run discovery, and stale-run cleanup."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from remote_helpers import cli, kill_pid, wait_until

from tuiconsole.errors import TuiconsoleError
from tuiconsole.remote import registry as R


def _info(directory: Path, run_id: str, pid: int, run_dir: str = "/r", started: float = 0.0):
    return R.RunInfo(
        id=run_id,
        pid=pid,
        script="/s/tiny.py",
        run_dir=run_dir,
        started=started or time.time(),
        socket=str(directory / f"{run_id}.sock"),
    )


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _leftover_socket(path: Path) -> None:
    """A socket file nobody listens on any more (its process died without cleaning up)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(path))
    s.close()


def _listening(path: Path) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(path))
    s.listen(4)
    return s


def test_runtime_dir_is_private(runtime_env) -> None:
    d = R.runtime_dir()
    os.chmod(d, 0o755)
    d = R.runtime_dir()
    st = os.lstat(d)
    assert stat.S_IMODE(st.st_mode) == 0o700 and st.st_uid == os.getuid()


def test_runtime_dir_default_is_per_uid_under_tmp(monkeypatch) -> None:
    monkeypatch.delenv(R.ENV_DIR, raising=False)
    assert R.runtime_dir(create=False) == Path(f"/tmp/tuiconsole-{os.getuid()}")


def test_runtime_dir_refuses_a_symlink(tmp_path, monkeypatch) -> None:
    (tmp_path / "real").mkdir(mode=0o700)
    (tmp_path / "link").symlink_to(tmp_path / "real")
    monkeypatch.setenv(R.ENV_DIR, str(tmp_path / "link"))
    with pytest.raises(TuiconsoleError, match="not a directory"):
        R.runtime_dir()


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to hand a dir to another uid")
def test_runtime_dir_refuses_another_users_dir(tmp_path, monkeypatch) -> None:
    d = tmp_path / "theirs"
    d.mkdir(mode=0o700)
    os.chown(d, 4242, -1)
    monkeypatch.setenv(R.ENV_DIR, str(d))
    with pytest.raises(TuiconsoleError, match="owned by uid 4242"):
        R.runtime_dir()


def test_info_file_is_private_and_round_trips(runtime_env) -> None:
    info = _info(R.runtime_dir(), "abc123", os.getpid())
    R.write_info(info)
    assert stat.S_IMODE(os.stat(info.info_path).st_mode) == 0o600
    assert R.read_info(info.info_path) == info


@pytest.mark.subprocess
def test_stale_runs_are_cleaned_live_ones_kept(runtime_env) -> None:
    d = R.runtime_dir()
    dead = _info(d, "dead00", _dead_pid())
    R.write_info(dead)
    _leftover_socket(Path(dead.socket))
    refused = _info(d, "refuse", os.getpid())  # our pid is alive, but nobody listens
    R.write_info(refused)
    _leftover_socket(Path(refused.socket))
    _leftover_socket(d / "orphan.sock")  # no info file at all
    live = _info(d, "live00", os.getpid())
    R.write_info(live)
    server = _listening(Path(live.socket))
    try:
        assert [r.id for r in R.live_runs()] == ["live00"]
    finally:
        server.close()
    left = sorted(p.name for p in d.iterdir())
    assert left == ["live00.json", "live00.sock"]


@pytest.mark.subprocess
def test_a_killed_run_is_cleaned_by_ls_and_attach(runtime_env) -> None:
    """A real process that served a socket, then died by SIGKILL (no chance to clean up)."""
    d = R.runtime_dir()
    code = (
        "import os, socket, sys, time\n"
        "from tuiconsole.remote import registry as R\n"
        "d = R.runtime_dir()\n"
        "s = socket.socket(socket.AF_UNIX); s.bind(str(d / 'k1ll3d.sock')); s.listen(1)\n"
        "R.write_info(R.RunInfo('k1ll3d', os.getpid(), 't.py', '/r', time.time(), "
        "str(d / 'k1ll3d.sock')))\n"
        "print('ready', flush=True); time.sleep(60)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], env=runtime_env, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        assert [r.id for r in R.live_runs()] == ["k1ll3d"]
        proc.kill()
        proc.wait(10)
        out = cli("ls", env=runtime_env, timeout=30)
        assert out.returncode == 0 and "no live runs" in out.stdout
        assert list(d.iterdir()) == []
        out = cli("attach", "k1ll3d", env=runtime_env, timeout=30)
        assert out.returncode == 2 and "no live runs" in out.stderr
    finally:
        kill_pid(proc.pid)


def test_resolve_run_by_id_prefix_run_dir_and_newest(runtime_env, tmp_path) -> None:
    d = R.runtime_dir()
    servers = []
    for i, (run_id, run_dir) in enumerate([("aa1111", "runs/vgg-1"), ("aa2222", "runs/mlp-2")]):
        info = _info(d, run_id, os.getpid(), str((tmp_path / run_dir).resolve()), 1000.0 + i)
        R.write_info(info)
        servers.append(_listening(Path(info.socket)))
    try:
        assert R.resolve_run(None).id == "aa2222"  # newest
        assert R.resolve_run("aa1111").id == "aa1111"
        assert R.resolve_run("aa2").id == "aa2222"
        assert R.resolve_run(str(tmp_path / "runs/vgg-1")).id == "aa1111"
        assert R.resolve_run("mlp").id == "aa2222"  # run dir name prefix
        with pytest.raises(R.RunNotFound, match="several runs"):
            R.resolve_run("aa")
        with pytest.raises(R.RunNotFound, match="no live run matches 'zz'"):
            R.resolve_run("zz")
    finally:
        for s in servers:
            s.close()
    wait_until(lambda: not R.live_runs(), 5, "stale cleanup")


def _taken_default(tmp_path: Path) -> Path:
    """What another user's pre-created /tmp/tuiconsole-<uid> looks like (needs root)."""
    taken = tmp_path / "tuiconsole-taken"
    taken.mkdir(mode=0o700)
    os.chown(taken, 4242, -1)
    return taken


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to hand a dir to another uid")
def test_runtime_dir_falls_back_to_a_safe_xdg_runtime_dir(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv(R.ENV_DIR, raising=False)
    xdg = tmp_path / "xdg"
    xdg.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(xdg))
    d = R.runtime_dir(default=_taken_default(tmp_path))
    assert d == xdg / "tuiconsole"
    st = os.lstat(d)
    assert stat.S_IMODE(st.st_mode) == 0o700 and st.st_uid == os.getuid()


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to hand a dir to another uid")
@pytest.mark.parametrize("xdg", ["unset", "theirs", "open", "relative"])
def test_runtime_dir_taken_without_a_safe_fallback_says_what_to_do(
    tmp_path, monkeypatch, xdg: str
) -> None:
    monkeypatch.delenv(R.ENV_DIR, raising=False)
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    if xdg != "unset":
        x = tmp_path / "xdg"
        x.mkdir(mode=0o755 if xdg == "open" else 0o700)
        if xdg == "theirs":
            os.chown(x, 4242, -1)
        monkeypatch.setenv("XDG_RUNTIME_DIR", "xdg" if xdg == "relative" else str(x))
    with pytest.raises(TuiconsoleError) as err:
        R.runtime_dir(default=_taken_default(tmp_path))
    message = str(err.value)
    assert "owned by uid 4242" in message and "only its owner or an administrator" in message
    assert f"set {R.ENV_DIR}" in message and "remove it or" not in message
    assert "XDG_RUNTIME_DIR" in message and "\n" not in message
    assert not (tmp_path / "xdg" / "tuiconsole").exists()
