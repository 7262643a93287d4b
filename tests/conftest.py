"""Suite-wide settings, and the check that keeps the fast subset fast.

``pytest -m "not subprocess and not pty"`` is the inner loop (see README, Tests). So
that it stays one, a test that starts a process (a CLI run, ``python -c``, a shell)
without the ``subprocess`` marker fails: the start is refused with a message naming
the marker. Tests that drive a pseudo-terminal also start a process on it and carry
``pty`` as well.
"""

from __future__ import annotations

import os
import sys

import pytest
import torch

# Tiny models on a small, busy machine: one intra-op thread avoids OpenMP threads
# spinning against the trainer/console threads (10x slower steps under load).
# Subprocesses that the tests start keep torch's default.
torch.set_num_threads(1)

# Audit events raised whenever this interpreter starts another program.
_PROCESS_EVENTS = frozenset(
    (
        "subprocess.Popen",
        "os.system",
        "os.posix_spawn",
        "os.spawn",
        "os.exec",
        "os.fork",
        "os.forkpty",
        "pty.spawn",
    )
)
_unmarked: list[str] = []  # the node id of the running test, while it may not start processes


def _refuse_unmarked_processes(event: str, args: tuple) -> None:
    if _unmarked and event in _PROCESS_EVENTS:
        raise RuntimeError(
            f"{_unmarked[0]} starts a process ({event} {args[:2]!r}) but is not marked "
            "@pytest.mark.subprocess: mark it, so that -m 'not subprocess' stays fast"
        )


sys.addaudithook(_refuse_unmarked_processes)

# tuiconsole leaves with os._exit where threads of a script would keep the process
# alive (hosting.leave_script_threads). A CLI run in this process (main() in a test)
# must not end the whole suite that way, silently and with exit code 0: here it
# raises SystemExit as sys.exit does. A forked child still exits for real.
_SUITE_PID = os.getpid()
_real_exit = os._exit


def _exit_in_tests(code: int) -> None:
    if os.getpid() != _SUITE_PID:
        _real_exit(code)
    raise SystemExit(code)


os._exit = _exit_in_tests  # type: ignore[assignment]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None):
    """Setup, call and teardown of a test without the marker may not start a process."""
    if item.get_closest_marker("subprocess") is None:
        _unmarked.append(item.nodeid)
    try:
        return (yield)
    finally:
        _unmarked.clear()
