"""One console steers, the others watch: read-only attach and control handover.

Real sockets, a real trainer thread, the real server (as in test_server.py).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from remote_helpers import wait_until
from test_server import RESULT_TIMEOUT, Served

from tuiconsole.remote.client import RemoteSession


@pytest.fixture
def served(runtime_env, tmp_path) -> Iterator[Served]:
    s = Served(tmp_path, owner_token="sekrit")
    yield s
    s.close()


def head_lr(session: RemoteSession) -> float:
    return session.snapshot().group("head").lr


def test_read_only_client_is_refused_with_a_clear_message(served) -> None:
    watcher = served.attach(read_only=True)
    assert watcher.role == "watch" and watcher.read_only
    result = watcher.submit("lr head 0.5").result(RESULT_TIMEOUT)
    assert not result.ok
    assert "read-only attach: commands are refused" in result.message
    watcher.take_control()  # asking changes nothing either
    wait_until(lambda: "cannot take control" in watcher.role_message, 10, "the refusal")
    assert watcher.role == "watch"
    steerer = served.attach()  # the run's only steering client: it has control
    assert steerer.role == "control"
    assert steerer.submit("lr head 0.25").result(RESULT_TIMEOUT).ok
    wait_until(lambda: head_lr(watcher) == 0.25, 10, "the watcher to see the change")
    assert not any(e.text.startswith("lr head 0.5") for e in watcher.snapshot().log)


def test_one_controller_others_watch_until_they_take_control(served) -> None:
    a = served.attach()
    b = served.attach()
    wait_until(lambda: a.clients == 2 and b.clients == 2, 10, "both to hear of 2 clients")
    assert (a.role, b.role) == ("control", "watch")
    assert b.controller == a.source and b.client_id == b.source

    refused = b.submit("lr head 0.5").result(RESULT_TIMEOUT)
    assert not refused.ok and f"watching: {a.source} has control" in refused.message
    assert ":control" in refused.message

    b.take_control()
    wait_until(lambda: a.role == "watch" and b.role == "control", 10, "the handover")
    assert f"{b.source} took control from {a.source}" in a.role_message
    assert b.submit("lr head 0.5").result(RESULT_TIMEOUT).ok
    assert not a.submit("lr head 0.1").result(RESULT_TIMEOUT).ok
    wait_until(lambda: head_lr(a) == 0.5, 10, "the change")

    b.close()  # the controller leaves: control is free, a's next command takes it
    wait_until(lambda: a.clients == 1, 10, "a to hear b left")
    assert a.submit("lr head 0.2").result(RESULT_TIMEOUT).ok
    wait_until(lambda: a.role == "control", 10, "a to hold control")


def test_the_runs_own_console_takes_control_on_hello(served) -> None:
    other = served.attach()
    assert other.role == "control"
    owner = served.attach(owner_token="sekrit")
    assert owner.role == "control"
    wait_until(lambda: other.role == "watch", 10, "the attached console to watch")
    assert not other.submit("pause").result(RESULT_TIMEOUT).ok


async def test_console_watching_takes_control_with_ctrl_t(served) -> None:
    """The console over a real socket: a watcher's footer offers ^t, which takes control."""
    from tests.ui.real_run import screen_text
    from tests.ui.real_run import wait_until as ui_wait
    from tuiconsole.ui.app import ConsoleApp

    other = served.attach()  # steers first
    session = served.attach()
    app = ConsoleApp(session)
    async with app.run_test(size=(120, 40)) as pilot:
        await ui_wait(pilot, lambda: app.attach_role == "watch", what="the watch role")
        assert app.attach_clients == 2 and app.attach_id == session.source
        assert app.attach_controller == other.source
        await ui_wait(pilot, lambda: "^t Control" in screen_text(app), what="^t in the footer")
        await ui_wait(pilot, lambda: "2 clients · watching" in screen_text(app), what="the badge")
        app.send("lr head 0.5")
        await ui_wait(
            pilot,
            lambda: any("watching:" in str(n.message) for n in app._notifications),
            what="the refusal shown",
        )
        await pilot.press("ctrl+t")
        await ui_wait(pilot, lambda: app.attach_role == "control", what="control")
        await ui_wait(
            pilot, lambda: "took control" in "\n".join(app.run_log.lines_text), what="the note"
        )
        assert "^t Control" not in screen_text(app).splitlines()[-1]
        await ui_wait(pilot, lambda: "· controlling" in screen_text(app), what="the badge")
        wait_until(lambda: other.role == "watch", 10, "the other console to watch")
        assert app.send("lr head 0.5").result(RESULT_TIMEOUT).ok


async def test_read_only_console_offers_no_steering(served) -> None:
    from tests.ui.real_run import screen_text
    from tests.ui.real_run import wait_until as ui_wait
    from tuiconsole.ui.app import ConsoleApp

    session = served.attach(read_only=True)
    app = ConsoleApp(session)
    async with app.run_test(size=(120, 40)) as pilot:
        await ui_wait(pilot, lambda: "^d Detach" in screen_text(app), what="the footer")
        assert "· read-only" in screen_text(app)  # the header's ATTACHED badge
        footer = screen_text(app).splitlines()[-1]
        for gone in ("Pause", "Decay", "Split", "Undo", "Control", "Quit"):
            assert gone not in footer, (gone, footer)
        result = app.send("lr head 0.5").result(RESULT_TIMEOUT)
        assert not result.ok and "read-only" in result.message
        await pilot.press("colon", *"control", "enter")  # a console word, not a command
        await ui_wait(
            pilot,
            lambda: any("attach without --read-only" in str(n.message) for n in app._notifications),
            what="the read-only answer",
        )
        assert session.role == "watch"


def test_an_ls_probe_never_steers_nor_takes_control(served) -> None:
    """A lite probe (what `tuiconsole ls` opens) is refused every command, also when
    nobody has control, so it can never lock consoles out as the controller."""
    lite = served.attach(lite=True)
    refused = lite.submit("lr head 0.4").result(RESULT_TIMEOUT)
    assert not refused.ok and "does not steer" in refused.message
    assert served.server._controller is None
    console = served.attach()
    assert console.role == "control"
    assert console.submit("lr head 0.3").result(RESULT_TIMEOUT).ok
    assert head_lr(console) == 0.3
