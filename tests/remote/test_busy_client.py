"""A busy or broken client of the run's own user: it must not hurt training or other clients.

Real trainer threads on the tiny model, real Unix sockets, real subprocesses
(issue 11, "A busy or broken client of the same user"). Each case here is a
protocol attack; ATTACKS counts the kinds, for the README's figure.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import socket
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from remote_helpers import TINY, wait_until
from test_server import RESULT_TIMEOUT, Served, _dropped_with

from tuiconsole.engine import trainer as T
from tuiconsole.remote import protocol as P
from tuiconsole.remote import server as server_mod
from tuiconsole.remote.detach import make_info
from tuiconsole.remote.registry import new_run_id
from tuiconsole.remote.server import RemoteServer
from tuiconsole.session import LocalSession

ATTACKS = (
    "command flood",
    "eval flood",
    "over-long command line",
    "huge token in a journal",
    "log flooded with long garbage",
    "deeply nested JSON",
    "never reads (ping flood)",
    "partial frame after hello",
    "silent connections",
    "burst of connections",
    "input after bye",
    "input after a malformed frame",
)


@pytest.fixture
def served(runtime_env, tmp_path) -> Iterator[Served]:
    s = Served(tmp_path)
    yield s
    s.close()


def _journal(run_dir: Path) -> list[dict]:
    lines = (run_dir / "journal.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


# ---------------------------------------------------------------------- floods of commands


def test_a_flood_of_commands_is_applied_a_bounded_number_per_step(tmp_path) -> None:
    """400 queued commands (and evals) wait their turn; training steps between them."""
    run_dir = tmp_path / "run"
    local = LocalSession.from_script(TINY, run_dir=run_dir)
    futures = []
    for i in range(400):
        text = "eval" if i % 50 == 7 else f"lr head {0.05 if i % 2 else 0.04}"
        futures.append(local.submit(text, source="flood"))
    local.start()
    try:
        for f in futures:
            f.result(60)
    finally:
        local.close()
    commands = [
        r for r in _journal(run_dir) if r.get("type") == "command" and r["source"] == "flood"
    ]
    assert len(commands) == 400
    per_step = Counter(r["step"] for r in commands)
    evals = Counter(r["step"] for r in commands if r["cmd"] == "eval")
    assert max(per_step.values()) <= T.COMMANDS_PER_STEP, per_step.most_common(3)
    assert max(evals.values()) == 1  # an eval takes its step boundary for itself
    for step in evals:
        last_at_step = [r for r in commands if r["step"] == step][-1]
        assert last_at_step["cmd"] == "eval"  # nothing after it at that boundary
    assert len(per_step) >= 400 // T.COMMANDS_PER_STEP  # training went on in between


def test_an_over_long_command_line_is_refused_at_once(served) -> None:
    """shlex is quadratic: a 1 MB line took 20 s and held up `stop` behind it."""
    huge = "split g " + "x" * 1_000_000
    result = served.local.submit(huge, source="stdin").result(5)
    assert not result.ok
    assert "too long" in result.message and "1,000,008 characters" in result.message
    assert len(result.message) < 120 and "\n" not in result.message
    # The same over the socket (under the 64 KiB frame limit), then `stop` is at once.
    client = served.attach()
    result = client.submit("lr head " + "1" * 60_000).result(RESULT_TIMEOUT)
    assert not result.ok and "too long" in result.message
    assert client.submit("stop").result(RESULT_TIMEOUT).ok


def test_replay_of_a_journal_with_a_huge_token_fails_in_one_line(
    runtime_env, tmp_path, monkeypatch, capsys
) -> None:
    first = LocalSession.from_script(TINY, run_dir=tmp_path / "first", max_steps=3).start()
    assert first.wait(30)
    first.close()
    journal = tmp_path / "first" / "journal.jsonl"
    record = {
        "type": "command",
        "step": 3,
        "time": 0.0,
        "source": "ui",
        "cmd": "lr " + "x" * 5_000_000 + " 0.1",
        "ok": True,
        "result": "",
        "groups": [],
    }
    with journal.open("a") as f:
        f.write(json.dumps(record) + "\n")
    from tuiconsole.cli import main

    second = str(tmp_path / "second")
    args = ["run", str(TINY), "--headless", "--max-steps", "5", "--replay", str(journal)]
    monkeypatch.setattr(sys, "argv", ["tuiconsole", *args, "--run-dir", second])
    with pytest.raises(SystemExit) as exited:
        main()  # in-process (a subprocess would spend seconds importing torch)
    assert exited.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and len(err) < 400, err[:500]
    assert "too long" in err and "journal.jsonl" in err


def test_long_garbage_in_the_log_does_not_stop_new_attaches(served) -> None:
    """300 lines of ~60 KB garbage used to make the log bigger than a frame may be."""
    garbage = "\x01" * 60_000  # escaped when echoed: 4x longer, 5x in JSON
    for _ in range(300):
        assert not served.local.submit(garbage, source="stdin").result(5).ok
    client = served.attach(timeout=20)
    # the log comes in the frames after the first snapshot: wait for it, not for a frame
    wait_until(lambda: client.snapshot().log, 10, "the log on the new client")
    snap = client.snapshot()
    assert snap.log and max(len(e.text) for e in snap.log) <= T.LOG_TEXT_CHARS
    assert any("characters, cut" in e.text for e in snap.log)
    assert client.submit("set head momentum=0.8").result(RESULT_TIMEOUT).ok


# ---------------------------------------------------------------------- malformed input


def test_deeply_nested_json_is_malformed_input(served) -> None:
    good = served.attach(rate=30)
    bad = served.raw()
    nested = b'{"v":1,"type":"ping","x":' + b"[" * 30_000 + b"]" * 30_000 + b"}"
    assert len(nested) < P.MAX_CLIENT_FRAME
    bad.sendall(P.frame(nested))
    assert "nested too deeply" in _dropped_with(bad)
    seq = good.snapshot().seq
    wait_until(lambda: good.snapshot().seq > seq + 3, 10, "snapshots for the good client")
    assert good.submit("set head momentum=0.8").result(RESULT_TIMEOUT).ok


def test_what_a_client_sent_after_bye_is_discarded(served) -> None:
    s = served.raw()
    s.sendall(P.message("bye") + P.message("command", id=1, text="pause"))
    _dropped_with(s)
    good = served.attach()
    assert good.submit("set head momentum=0.8").result(RESULT_TIMEOUT).ok  # FIFO: after it
    texts = [e.text for e in served.local.snapshot().log]
    assert not any(t.startswith("pause") for t in texts), texts
    assert not served.local.snapshot().status.state.value.startswith("PAUSED")


def test_what_a_client_sent_after_a_malformed_frame_is_discarded(served) -> None:
    s = served.raw(lite=False)  # a console's hello: a lite probe (ls) may not steer
    s.sendall(
        P.message("command", id=1, text="set head momentum=0.7")
        + P.frame(b"\x00garbage")
        + P.message("command", id=2, text="pause")
    )
    assert "malformed" in _dropped_with(s)
    good = served.attach()
    assert good.submit("set body momentum=0.8").result(RESULT_TIMEOUT).ok
    texts = [e.text for e in served.local.snapshot().log]
    assert any(t.startswith("set head momentum=0.7") for t in texts)  # before: handled
    assert not any(t.startswith("pause") for t in texts)  # after: never


# ---------------------------------------------------------------------- resources


def test_a_client_that_never_reads_costs_bounded_memory(served) -> None:
    """Pings whose pongs are never read: the server stops reading, memory stays flat."""
    good = served.attach()
    s = served.raw()
    s.setblocking(False)
    rss_before = _rss_mb()
    pings = P.message("ping") * 4000  # 100 KB
    sent, limit = 0, 16 * 1024 * 1024
    sel = selectors.DefaultSelector()
    sel.register(s, selectors.EVENT_WRITE)
    deadline = time.monotonic() + 30
    idle = 0
    # Push until the connection is full for good (the server stopped reading us),
    # or 16 MB went through (it never stopped).
    while sent < limit and idle < 10:
        assert time.monotonic() < deadline, f"neither full nor {limit} bytes sent ({sent})"
        if not sel.select(0.2):
            idle += 1
            continue
        idle = 0
        with contextlib.suppress(BlockingIOError):
            sent += s.send(pings)
    rss_after = _rss_mb()
    queued = [c.out_bytes for c in served.server._clients.values() if c.lite]
    print(
        f"pings sent {sent / 1e6:.2f} MB; RSS {rss_before:.0f} -> {rss_after:.0f} MB; "
        f"queued for it {queued}"
    )
    assert sent < 4 * 1024 * 1024, "the server kept reading a client that never reads"
    assert max(queued) < 1024 * 1024
    assert rss_after - rss_before < 64
    assert good.submit("set head momentum=0.8").result(RESULT_TIMEOUT).ok
    served.steps_advance()
    s.close()


def test_a_half_sent_frame_after_hello_does_not_hold_a_slot(served, monkeypatch) -> None:
    monkeypatch.setattr(server_mod, "FRAME_SECONDS", 0.3)
    good = served.attach()
    s = served.raw()
    whole = P.message("command", id=1, text="pause")
    s.sendall(whole[:7])
    assert "part of a frame" in _dropped_with(s)
    assert served.server.clients == 1
    assert good.submit("set head momentum=0.8").result(RESULT_TIMEOUT).ok


def test_silent_connections_do_not_lock_out_attach(served) -> None:
    silent = [served.raw(hello=False) for _ in range(server_mod.MAX_PENDING + 4)]
    try:
        wait_until(
            lambda: (
                sum(not c.hello for c in served.server._clients.values()) == server_mod.MAX_PENDING
            ),
            10,
            "the silent connections accepted",
        )
        client = served.attach(timeout=5)
        assert client.submit("set head momentum=0.8").result(RESULT_TIMEOUT).ok
        assert "no hello yet" in _dropped_with(silent[0])  # the oldest made room
        served.steps_advance()
    finally:
        for s in silent:
            s.close()


def test_a_burst_of_connections_fits_the_listen_backlog(served) -> None:
    """The kernel holds a burst while the server is busy (16 used to give EAGAIN)."""
    info = make_info(
        new_run_id(), TINY, Path(served.local.snapshot().run_dir), detached=False, decay_factor=0.1
    )
    quiet = RemoteServer(served.local, info)
    quiet._listen()  # listening, but its thread never runs: nothing is accepted
    burst: list[socket.socket] = []
    try:
        for _ in range(100):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.setblocking(False)
            burst.append(s)
            assert s.connect_ex(info.socket) == 0, f"connection {len(burst)} refused"
    finally:
        for s in burst:
            s.close()
        quiet._close_listener()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(info.socket)
