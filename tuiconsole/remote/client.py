"""RemoteSession: the Session protocol, spoken over a run's Unix socket.

The console works with it unchanged: :meth:`snapshot` returns the newest
snapshot received (never blocks), :meth:`submit` returns a Future that the
server's answer resolves. Two differences a front-end may show:

- :meth:`close` (alias :meth:`detach`) only *detaches*: the run goes on. Stop a
  run with the ``stop`` command.
- the connection can be lost: :attr:`disconnected` turns True and
  :attr:`disconnect_reason` says why; pending and later commands resolve to an
  error result, and :meth:`snapshot` keeps returning the last one received.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from concurrent.futures import Future
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tuiconsole.engine.commands import Command, CommandResult
from tuiconsole.errors import TuiconsoleError
from tuiconsole.remote import protocol as P
from tuiconsole.remote.registry import RunInfo

if TYPE_CHECKING:
    from tuiconsole.engine.snapshot import Snapshot

CONNECT_TIMEOUT = 5.0


class AttachError(TuiconsoleError):
    """Could not connect to a run (gone, refused, or not a tuiconsole socket)."""


class RemoteSession:
    """A session whose run lives in another process (see the module docstring)."""

    owns_run = False  # quitting the console detaches; it never stops the run
    can_detach = True

    def __init__(
        self,
        target: RunInfo | str | Path,
        *,
        rate: float = 10.0,
        timeout: float = CONNECT_TIMEOUT,
        lite: bool = False,
        owner_token: str | None = None,
        read_only: bool = False,
    ) -> None:
        """Connect, say hello and wait for the first (full) snapshot.

        ``target`` is a RunInfo or a socket path. ``rate`` is the snapshot
        rate asked of the server (Hz). ``lite`` asks for snapshots without the
        module table and log (for ``ls``). ``read_only``: the server refuses every
        command of this client (``attach --read-only``). Raises AttachError on failure.
        """
        self.socket_path = str(target.socket if isinstance(target, RunInfo) else target)
        self.run: dict[str, Any] = {}
        self.source = ""  # how the run's log names this client: "remote:<pid>"
        # Control (see server.py): "control" | "watch", and who has it. Updated by the
        # server's role frames; ``role_seq`` counts them and ``role_message`` is the
        # last one's news ("remote:12 took control"). The client count: ``clients``.
        self.read_only = read_only
        self.role = ""
        self.controller = ""
        self.role_seq = 0
        self.role_message = ""
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._pending: dict[int, tuple[Future[CommandResult], str]] = {}
        self._next_id = 0
        self._ended = threading.Event()  # run finished/stopped/errored, or connection lost
        self._closed = False
        self.disconnected = False
        self.disconnect_reason: str | None = None
        self._assembler = P.SnapshotAssembler()
        self._sock = self._connect(timeout)
        try:
            self._handshake(rate, lite, timeout, owner_token, read_only)
        except BaseException:
            self._sock.close()
            raise
        self._sock.settimeout(None)
        self._reader = threading.Thread(
            target=self._read_loop, name="tuiconsole-remote-client", daemon=True
        )
        self._reader.start()

    # ------------------------------------------------------------------ Session protocol

    def snapshot(self) -> Snapshot:
        return self._snapshot

    def submit(self, command: str | Command, source: str = "ui") -> Future[CommandResult]:
        text = command.text if isinstance(command, Command) else str(command)
        future: Future[CommandResult] = Future()
        with self._lock:
            if self.disconnected or self._closed:
                future.set_result(CommandResult(False, self._gone_message(), text.strip()))
                return future
            self._next_id += 1
            msg_id = self._next_id
            self._pending[msg_id] = (future, text.strip())
        try:
            self._send(P.message("command", id=msg_id, text=text, source=source))
        except OSError as exc:
            self._lost(f"send failed: {exc}")
        return future

    def wait(self, timeout: float | None = None) -> bool:
        """True once the run has ended (finished, stopped, error) or the connection is lost."""
        return self._ended.wait(timeout)

    def close(self) -> None:
        """Detach: close the connection. The run goes on."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        with contextlib.suppress(OSError):
            self._send(P.message("bye"))
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        if self._reader.is_alive() and threading.current_thread() is not self._reader:
            self._reader.join(2.0)
        self._sock.close()
        self._fail_pending("detached from the run")

    detach = close

    def set_rate(self, hz: float) -> None:
        """Ask the server for snapshots at ``hz`` (it clamps to 0.2..30)."""
        with contextlib.suppress(OSError):
            self._send(P.message("rate", hz=float(hz)))

    @property
    def run_id(self) -> str:
        return str(self.run.get("id", ""))

    @property
    def clients(self) -> int | None:
        """Consoles attached to the run (this one included), as its server last said."""
        if self._assembler.clients is not None:
            return self._assembler.clients
        count = self.run.get("clients")  # the welcome's count, before the first frame
        return count if isinstance(count, int) else None

    # ------------------------------------------------------------------ connection

    def _connect(self, timeout: float) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(self.socket_path)
        except FileNotFoundError:
            sock.close()
            raise AttachError(f"no run listens on {self.socket_path} (it has ended?)") from None
        except ConnectionRefusedError:
            sock.close()
            raise AttachError(f"{self.socket_path} refused the connection (stale run?)") from None
        except OSError as exc:
            sock.close()
            raise AttachError(f"cannot connect to {self.socket_path}: {exc}") from None
        return sock

    def _handshake(
        self, rate: float, lite: bool, timeout: float, owner: str | None, read_only: bool
    ) -> None:
        # Refused at once? Then the send may fail, but the error frame is still readable.
        hello: dict[str, Any] = {"pid": os.getpid(), "rate": float(rate), "lite": lite}
        if owner:
            hello["owner"] = owner
        if read_only:
            hello["read_only"] = True
        with contextlib.suppress(OSError):
            self._send(P.message("hello", **hello))
        try:
            welcome = P.read_message(self._sock)
            if welcome["type"] == "error":
                raise AttachError(f"the run refused us: {welcome.get('message')}")
            if welcome["type"] != "welcome":
                raise AttachError(f"unexpected first message {welcome['type']!r}")
            self.run = dict(welcome.get("run") or {})
            self.source = str(welcome.get("source", ""))
            self._on_role(welcome)
            first = P.read_message(self._sock)
            while first["type"] == "role":  # another client's change, before our snapshot
                self._on_role(first)
                first = P.read_message(self._sock)
            if first["type"] != "snapshot":
                raise AttachError(f"expected a snapshot, got {first['type']!r}")
            self._on_snapshot(first)
        except (OSError, ConnectionError, P.ProtocolError) as exc:
            raise AttachError(f"handshake with {self.socket_path} failed: {exc}") from None

    def _send(self, data: bytes) -> None:
        with self._send_lock:
            self._sock.sendall(data)

    def _read_loop(self) -> None:
        reason = "the run's server closed the connection"
        try:
            while True:
                msg = P.read_message(self._sock)
                kind = msg["type"]
                if kind == "snapshot":
                    self._on_snapshot(msg)
                elif kind == "result":
                    self._on_result(msg)
                elif kind == "role":
                    self._on_role(msg)
                elif kind == "bye":
                    reason = str(msg.get("reason") or "the run's server said goodbye")
                    break
                elif kind == "error":
                    reason = f"the run's server dropped us: {msg.get('message')}"
                    break
        except (OSError, ConnectionError) as exc:
            if not self._closed:
                reason = f"connection lost: {exc}" if str(exc) else reason
        except P.ProtocolError as exc:
            reason = f"bad data from the server: {exc}"
        if not self._closed:
            self._lost(reason)

    def _on_snapshot(self, msg: dict[str, Any]) -> None:
        snap = self._assembler.apply(msg)
        self._snapshot = snap
        if snap.status.state.is_terminal:
            self._ended.set()

    def _on_role(self, msg: dict[str, Any]) -> None:
        role = msg.get("role")
        if role not in ("control", "watch"):
            return  # a lite probe's welcome, or an older server: no roles
        self.role = str(role)
        self.controller = str(msg.get("controller") or "")
        self.read_only = bool(msg.get("read_only", self.read_only))
        self.role_message = str(msg.get("message") or "")
        self.role_seq += 1

    def take_control(self) -> None:
        """Ask for control: the server makes this client the controller (the previous
        one then watches) and says so in a role frame; refused for a read-only client."""
        with contextlib.suppress(OSError):
            self._send(P.message("control"))

    @property
    def client_id(self) -> str:
        """How the server names this client ("remote:<pid>"): the badge's id."""
        return self.source

    def _on_result(self, msg: dict[str, Any]) -> None:
        with self._lock:
            entry = self._pending.pop(msg.get("id"), None)  # type: ignore[arg-type]
        if entry is not None and not entry[0].done():
            entry[0].set_result(P.result_from_dict(msg.get("result")))

    def _lost(self, reason: str) -> None:
        with self._lock:
            if self.disconnected:
                return
            self.disconnected = True
            self.disconnect_reason = reason
        self._ended.set()
        self._fail_pending(reason)

    def _fail_pending(self, reason: str) -> None:
        with self._lock:
            pending, self._pending = self._pending, {}
        for future, text in pending.values():
            if not future.done():
                future.set_result(CommandResult(False, f"no answer: {reason}", text))

    def _gone_message(self) -> str:
        if self._closed:
            return "detached from the run"
        return f"disconnected from the run: {self.disconnect_reason}"
