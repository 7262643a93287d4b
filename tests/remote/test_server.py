"""The server and RemoteSession in one process (a real trainer thread, real sockets).

Fast checks of the protocol's edges; the same behaviour across real processes
is in test_detach_attach.py.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from remote_helpers import TINY, wait_until

from tuiconsole.engine.snapshot import Telemetry
from tuiconsole.remote import protocol as P
from tuiconsole.remote import server as server_mod
from tuiconsole.remote.attach import attach
from tuiconsole.remote.client import AttachError, RemoteSession
from tuiconsole.remote.detach import make_info
from tuiconsole.remote.registry import new_run_id
from tuiconsole.remote.server import PeerCred, RemoteServer, check_peer
from tuiconsole.session import LocalSession

RESULT_TIMEOUT = 20.0


class Served:
    """The tiny model training in this process, served on a real socket; the clients
    ``attach`` makes are closed with it (test_busy_client.py and test_control.py too)."""

    def __init__(
        self, tmp_path: Path, uid: int | None = None, owner_token: str | None = None
    ) -> None:
        run_dir = tmp_path / "run"
        self.local = LocalSession.from_script(TINY, run_dir=run_dir).start()
        self.info = make_info(new_run_id(), TINY, run_dir, detached=False, decay_factor=0.1)
        self.server = RemoteServer(self.local, self.info, uid=uid, owner_token=owner_token)
        self.server.start()
        self.clients: list[RemoteSession] = []

    def attach(self, **kw) -> RemoteSession:
        client = RemoteSession(self.info, **kw)
        self.clients.append(client)
        return client

    def raw(self, hello: bool = True, lite: bool = True) -> socket.socket:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(10)
        s.connect(self.info.socket)
        if hello:
            s.sendall(P.message("hello", pid=0, rate=10, lite=lite))
            assert P.read_message(s)["type"] == "welcome"
            assert P.read_message(s)["type"] == "snapshot"
        return s

    def steps_advance(self) -> None:
        first = self.local.snapshot().status.step
        wait_until(lambda: self.local.snapshot().status.step > first + 5, 20, "training steps")

    def close(self) -> None:
        for c in self.clients:
            c.close()
        self.server.close()
        self.local.close()


@pytest.fixture
def served(runtime_env, tmp_path) -> Iterator[Served]:
    s = Served(tmp_path)
    yield s
    s.close()


def _dropped_with(s: socket.socket) -> str:
    """Read until the server closes; return its error message (the connection must end)."""
    message = ""
    try:
        while True:
            msg = P.read_message(s)
            if msg["type"] == "error":
                message = msg["message"]
    except (ConnectionError, OSError):
        pass
    return message


def test_check_peer_refuses_other_users() -> None:
    assert check_peer(PeerCred(pid=10, uid=1000, gid=1000), 1000) is None
    reason = check_peer(PeerCred(pid=10, uid=1001, gid=1001), 1000)
    assert reason is not None and "uid 1001" in reason
    assert check_peer(None, 1000) is None  # no SO_PEERCRED: the 0700 dir guards


def test_peer_credentials_reports_the_real_peer(served) -> None:
    a, b = socket.socketpair(socket.AF_UNIX)
    with a, b:
        cred = server_mod.peer_credentials(a)
        assert cred == PeerCred(os.getpid(), os.getuid(), os.getgid())


def test_server_refuses_a_different_uid(runtime_env, tmp_path) -> None:
    s = Served(tmp_path, uid=os.getuid() + 1)  # the server "belongs" to someone else
    try:
        with pytest.raises(AttachError, match="refused"):
            s.attach(timeout=5)
        assert any("not the run's owner" in d for d in s.server.dropped)
        s.steps_advance()
    finally:
        s.close()


def test_snapshot_command_and_source_tag(served) -> None:
    client = served.attach()
    snap = client.snapshot()
    assert [g.name for g in snap.groups] == ["body", "head"]
    assert snap.modules and snap.run_dir
    result = client.submit("lr head 0.123").result(RESULT_TIMEOUT)
    assert result.ok, result
    wait_until(lambda: client.snapshot().group("head").lr == 0.123, 10, "lr in snapshot")
    entries = [e for e in client.snapshot().log if e.kind == "command"]
    assert entries[-1].source == f"remote:{os.getpid()}" == client.source
    bad = client.submit("lr nosuchgroup 1").result(RESULT_TIMEOUT)
    assert not bad.ok and "nosuchgroup" in bad.message
    parse = client.submit("frobnicate").result(RESULT_TIMEOUT)
    assert not parse.ok and "unknown command" in parse.message


def test_two_clients_see_each_others_commands(served) -> None:
    a, b = served.attach(), served.attach(rate=30)
    assert a.submit("set body momentum=0.5", source="palette").result(RESULT_TIMEOUT).ok
    wait_until(
        lambda: any(
            "momentum" in e.text and e.source.endswith(":palette") for e in b.snapshot().log
        ),
        10,
        "a's command in b's log",
    )
    assert b.snapshot().group("body").get("momentum") == 0.5


def test_detach_leaves_the_run_going(served) -> None:
    client = served.attach()
    client.close()
    assert client.submit("pause").result(1).ok is False  # detached: an error result
    served.steps_advance()
    assert not served.local.snapshot().status.state.is_terminal


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (P.frame(b"\x00garbage\xff"), "malformed"),
        (P.frame(b'{"v": 1, "type": "command", "id": 1, "text": "stop"}'), "hello first"),
        (P.frame(b'{"v": 7, "type": "hello"}'), "version 7"),
        (P.HEADER.pack(P.MAX_CLIENT_FRAME + 1), "oversized"),
        (P.HEADER.pack(2**32 - 1) + b"x" * 1000, "oversized"),
    ],
    ids=["garbage", "no-hello", "wrong-version", "just-too-big", "4GiB-header"],
)
def test_bad_input_drops_only_that_client(served, data: bytes, reason: str) -> None:
    good = served.attach()
    bad = served.raw(hello=False)
    bad.sendall(data)
    assert reason in _dropped_with(bad)
    assert any(reason in d for d in served.server.dropped)
    assert good.submit("set head momentum=0.8").result(RESULT_TIMEOUT).ok
    assert not good.disconnected
    served.steps_advance()


def test_garbage_after_hello_and_unknown_types_drop_the_client(served) -> None:
    s = served.raw()
    s.sendall(P.message("launch_missiles"))
    assert "unknown message type" in _dropped_with(s)
    s = served.raw()
    s.sendall(P.message("command", id=None, text=5))
    assert "command needs" in _dropped_with(s)


def test_a_client_gone_mid_frame_is_forgotten(served) -> None:
    good = served.attach()
    s = served.raw()
    whole = P.message("command", id=1, text="stop")
    s.sendall(whole[: len(whole) // 2])
    s.close()
    wait_until(lambda: served.server.clients == 1, 10, "half-sent client forgotten")
    served.steps_advance()
    assert not served.local.snapshot().status.state.is_terminal  # the half "stop" never ran
    assert good.submit("set head momentum=0.7").result(RESULT_TIMEOUT).ok


def test_a_client_that_never_reads_is_dropped_without_slowing_training(served, monkeypatch) -> None:
    good = served.attach()
    slow = served.raw(hello=False)
    slow.sendall(P.message("hello", pid=0, rate=30, lite=False))
    slow.settimeout(1)
    # Fill its socket buffer: every ping is answered, nothing is ever read.
    pings = P.message("ping") * 2000

    def stalled() -> bool:
        return any(c.stalled_since is not None for c in served.server._clients.values())

    deadline = time.monotonic() + 20
    while not stalled():
        assert time.monotonic() < deadline, "the server never saw the client stall"
        with contextlib.suppress(OSError):  # our own send may block: the server reads less
            slow.sendall(pings)
    # While that client is stalled (STALL_SECONDS is 20 s), the run and everyone else
    # go on: training steps, a good client's commands are answered, its frames arrive.
    served.steps_advance()
    assert good.submit("set head momentum=0.7").result(RESULT_TIMEOUT).ok
    seq = good.snapshot().seq
    wait_until(lambda: good.snapshot().seq > seq, 10, "frames for the good client")
    assert stalled() and served.server.clients == 2
    monkeypatch.setattr(server_mod, "STALL_SECONDS", 0.3)
    wait_until(lambda: any("too slow" in d for d in served.server.dropped), 10, "drop")
    assert served.server.clients == 1
    served.steps_advance()
    slow.close()


def test_server_close_turns_clients_disconnected(served) -> None:
    client = served.attach()
    served.local.close()  # the run ends, then its server closes: the last frame shows the end
    served.server.close("going away for the test")
    assert client.wait(10)  # the run ended (a terminal snapshot came first)...
    wait_until(lambda: client.disconnected, 10, "the goodbye")  # ...then the goodbye
    assert "going away for the test" in (client.disconnect_reason or "")
    late = client.submit("pause").result(1)
    assert not late.ok and "disconnected" in late.message
    assert client.snapshot().status.state.value == "STOPPED"  # and stays readable
    assert not Path(served.info.socket).exists() and not served.info.info_path.exists()


def test_lite_probe_and_rate_change(served) -> None:
    probe = served.attach(lite=True)
    assert probe.snapshot().modules == () and probe.snapshot().log == ()
    assert served.server.clients == 0  # a probe is not an attached client
    probe.close()  # its own 10 Hz reads would refresh the run's snapshot for everyone
    client = served.attach(rate=0.5)
    assert served.server.clients == 1

    def frames_within(seconds: float) -> int:
        """How many different frames the client received in ``seconds``."""
        seen, deadline = {client.snapshot().seq}, time.monotonic() + seconds
        while time.monotonic() < deadline:
            seen.add(client.snapshot().seq)
            time.sleep(0.005)
        return len(seen) - 1

    assert frames_within(1.0) <= 2  # 0.5 Hz: at most one frame a second (+1 in flight)
    client.set_rate(30)
    wait_until(lambda: frames_within(0.5) >= 5, 10, "faster snapshots")


def test_ls_json_carries_the_telemetry(served) -> None:
    """`ls --json` has the snapshot's telemetry, read from the run's server (a lite probe)."""
    from typer.testing import CliRunner

    from tuiconsole.cli import app

    served.steps_advance()
    wait_until(lambda: served.local.snapshot().telemetry.compute is not None, 20, "a timed step")
    listing = CliRunner().invoke(app, ["ls", "--json"])  # in-process: the same runtime dir
    assert listing.exit_code == 0, listing.output
    (row,) = [r for r in map(json.loads, listing.stdout.splitlines()) if r["id"] == served.info.id]
    tel = row["telemetry"]
    assert set(tel) == {f.name for f in dataclasses.fields(Telemetry)}
    assert tel["batch_size"] == 32 and tel["samples_per_sec"] > 0  # tiny_model: batches of 32
    assert tel["compute"] >= 0.004  # its training_step naps 4 ms
    assert 0 <= tel["data_fraction"] < 1 and tel["eta"] > 0  # epochs = 1,000,000
    assert tel["tokens_per_sec"] is None  # float inputs
    assert tel["memory_allocated"] is None and tel["gpu_utilization"] is None  # a CPU run


def test_attach_streams_over_a_socket_path_and_sends_stdin(served) -> None:
    """`tuiconsole attach /path/to.sock --headless` (e.g. a socket forwarded with ssh -L)."""
    out = io.StringIO()
    code = attach(served.info.socket, stdin=io.StringIO("stop\n"), out=out)
    assert code == 0
    text = out.getvalue()
    assert text.startswith(f"attached to run {served.info.id}")
    assert f"[remote:{os.getpid()}:stdin] stop: stopped at step" in text
    assert served.local.snapshot().status.state.value == "STOPPED"


def test_frames_carry_the_attached_client_count(served) -> None:
    """The count behind the console's ATTACHED badge follows clients coming and going
    (ls probes are not counted), even with nothing else new to send."""
    a = served.attach()
    wait_until(lambda: a.clients == 1, 10, "one client")
    b = served.attach()
    assert b.clients == 2  # the welcome's count, then its frames'
    wait_until(lambda: a.clients == 2, 10, "a hears of b")
    probe = served.attach(lite=True)
    b.close()
    wait_until(lambda: a.clients == 1, 10, "a hears b left")
    assert probe.clients is not None and probe.clients >= 1


async def test_an_attached_console_shows_its_badge(served) -> None:
    from tests.ui.real_run import screen_text
    from tuiconsole.ui.app import ConsoleApp

    client, other = served.attach(), served.attach()
    app = ConsoleApp(client)
    async with app.run_test(size=(120, 40)) as pilot:
        badge = f"ATTACHED {served.info.id} · 2 clients"
        for _ in range(200):
            if badge in screen_text(app):
                break
            await pilot.pause(0.05)
        assert badge in screen_text(app).splitlines()[0]
        other.close()
        for _ in range(200):
            if f"ATTACHED {served.info.id} · 1 client " in screen_text(app):
                break
            await pilot.pause(0.05)
        assert f"ATTACHED {served.info.id} · 1 client " in screen_text(app)
