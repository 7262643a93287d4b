"""RemoteServer: one thread in the training process that serves a Session on a Unix socket.

Rules it keeps (ARCHITECTURE rule 4: a slow or dead front-end cannot slow or
stop training):

- One I/O thread, non-blocking sockets, a selector. The trainer thread never
  touches a socket: command results come back through a Future callback that
  only puts on a queue and pokes a wake-up pipe.
- Each client has a bounded send queue. A new snapshot is queued only when the
  previous one went out (a slow client skips frames); a client whose queue
  exceeds :data:`MAX_QUEUE_BYTES` or does not drain for :data:`STALL_SECONDS`
  is dropped. While its queue holds more than :data:`READ_PAUSE_BYTES`, its
  input is not read (a client that sends pings and never reads the pongs costs
  a bounded amount of memory).
- Anything malformed from a client (bad JSON, nested too deeply, wrong version,
  oversized frame, no hello, a frame left half-sent) drops that client only, and
  is logged; what it had sent after that is discarded, never handled.
- Connections that have not said hello have their own slots: when those are
  full, the oldest is dropped, so silent connections cannot lock out `attach`.
- Every peer's uid is checked with SO_PEERCRED; other users are refused.
- One client at a time has control (its commands are applied); the others watch,
  and their commands are refused with a message saying who has control, until one
  sends ``control`` (``:control`` in the console), which takes it (the previous
  controller then watches). A ``read_only`` client can never steer. While nobody
  has control (the controller left), a steering client's first command takes it.
  Every attached client hears its role and the client count in a ``role`` frame
  whenever either changes.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import os
import queue
import selectors
import socket
import struct
import sys
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuiconsole.engine.commands import CommandResult
from tuiconsole.errors import TuiconsoleError
from tuiconsole.remote import protocol as P
from tuiconsole.remote.registry import RunInfo, remove_files, write_info
from tuiconsole.session import Session

log = logging.getLogger("tuiconsole.remote")

MAX_CLIENTS = 32  # clients past hello (attached consoles and `ls` probes)
MAX_PENDING = 32  # connections not past hello yet; when full, the oldest is dropped
LISTEN_BACKLOG = 256  # connections the kernel holds for us: a burst of attaches
MAX_QUEUE_BYTES = P.MAX_SERVER_FRAME + 4 * 1024 * 1024  # one big snapshot plus results
STALL_SECONDS = 20.0  # a client that reads nothing for this long is dropped
HELLO_SECONDS = 10.0  # a connection must say hello within this time
FRAME_SECONDS = 10.0  # a frame that was started must be complete within this time
READ_PAUSE_BYTES = 256 * 1024  # a client's input is not read while more is queued for it
MAX_IN_FLIGHT = 64  # commands per client not yet applied by the trainer
MIN_RATE, MAX_RATE, DEFAULT_RATE = 0.2, 30.0, 10.0
TICK = 0.02
HOUSEKEEPING_SECONDS = 30.0  # touch (and if gone, re-create) socket and info file
SOURCE_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")
OWNER_SOURCE_CHARS = SOURCE_CHARS | {":"}  # `signal:SIGTERM`


# ---------------------------------------------------------------------- credentials


@dataclass(frozen=True)
class PeerCred:
    pid: int
    uid: int
    gid: int


def peer_credentials(sock: socket.socket) -> PeerCred | None:
    """The connecting process's pid/uid/gid (Linux SO_PEERCRED); None where unsupported."""
    opt = getattr(socket, "SO_PEERCRED", None)
    if opt is None:
        return None
    raw = sock.getsockopt(socket.SOL_SOCKET, opt, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", raw)
    return PeerCred(pid, uid, gid)


def check_peer(cred: PeerCred | None, uid: int) -> str | None:
    """Why a peer must be refused, or None if it may connect.

    Only the user who owns the run may attach. Where the OS cannot tell us the
    peer (no SO_PEERCRED), the 0700 runtime dir and the 0600 socket still keep
    other users out, so the connection is allowed.
    """
    if cred is None:
        return None
    if cred.uid != uid:
        return f"uid {cred.uid} is not the run's owner (uid {uid})"
    return None


# ---------------------------------------------------------------------- per client


@dataclass
class _Client:
    key: int
    sock: socket.socket
    cred: PeerCred | None
    name: str
    connected: float = field(default_factory=time.monotonic)
    inbox: P.FrameBuffer = field(default_factory=lambda: P.FrameBuffer(P.MAX_CLIENT_FRAME))
    outbox: deque[tuple[bytes, bool]] = field(default_factory=deque)  # (frame, is_snapshot)
    out_offset: int = 0
    out_bytes: int = 0
    stalled_since: float | None = None
    partial_since: float | None = None  # when an incomplete frame began to wait
    hello: bool = False
    lite: bool = False
    interval: float = 1.0 / DEFAULT_RATE
    next_due: float = 0.0
    last_seq: int = -1
    last_structure: int | None = None
    last_log_seq: int = 0
    last_clients: int = -1  # the client count its last frame said
    in_flight: int = 0
    owner: bool = False  # the console that started this run (it holds the owner token)
    read_only: bool = False  # `attach --read-only`: its commands are always refused
    role: str = ""  # "control" | "watch" once past hello (lite probes have none)
    sent_groups: list[str] = field(default_factory=list)  # the groups as it last got them
    events: int = selectors.EVENT_READ  # what the selector watches for it

    @property
    def has_snapshot_queued(self) -> bool:
        return any(is_snap for _, is_snap in self.outbox)


class RemoteServer:
    """Serves ``session`` on ``info.socket`` until :meth:`close`.

    Start with :meth:`start` (binds, writes the info file, starts the thread).
    ``clients`` is the number of attached clients, for lingering decisions.
    """

    def __init__(
        self,
        session: Session,
        info: RunInfo,
        *,
        uid: int | None = None,
        owner_token: str | None = None,
    ) -> None:
        """``owner_token``: the secret the console that started this run says in its
        hello; its commands keep their own source (``ui``, ``signal:SIGTERM``), as
        they did when the console ran in the training process."""
        self.session = session
        self.owner_token = owner_token
        self.info = info
        self.uid = os.getuid() if uid is None else uid
        self.path = Path(info.socket)
        self._sel = selectors.DefaultSelector()
        self._clients: dict[int, _Client] = {}
        self._results: queue.SimpleQueue[tuple[int, Any, CommandResult]] = queue.SimpleQueue()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._listener: socket.socket | None = None
        self._inode: int | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="tuiconsole-remote", daemon=True)
        self._encoder = P.SnapshotEncoder()
        self._next_key = 0
        self._next_tick = 0.0  # when snapshots are next looked at (shared by all clients)
        self._attached = 0
        self._controller: int | None = None  # the key of the client in control
        self.last_client_left = time.monotonic()  # monotonic time the last client left
        self._next_housekeeping = time.monotonic() + HOUSEKEEPING_SECONDS
        self.dropped: list[str] = []  # reasons, newest last (bounded), for tests and logs

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> RemoteServer:
        self._listen()
        self._sel.register(self._wake_r, selectors.EVENT_READ, None)
        write_info(self.info)
        self._thread.start()
        log.info("serving run %s on %s", self.info.id, self.path)
        return self

    def close(self, reason: str = "the run's server is shutting down") -> None:
        """Say bye to every client (best effort), stop the thread, remove socket and info."""
        if self._stop.is_set():
            return
        self._stop.set()
        self._poke()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(5.0)
        final = self._final_snapshot()
        for client in list(self._clients.values()):
            with contextlib.suppress(OSError):
                client.sock.settimeout(0.2)
                for i, (data, _) in enumerate(client.outbox):  # what was queued, first
                    client.sock.sendall(memoryview(data)[client.out_offset if i == 0 else 0 :])
                if final is not None and client.hello:  # so a frozen view shows the end
                    client.sock.sendall(self._snapshot_frame(client, final))
                client.sock.sendall(P.message("bye", reason=reason))
            self._close_client(client)
        self._close_listener()
        remove_files_if_ours(self.info, self._inode)
        self._wake_r.close()
        self._wake_w.close()
        self._sel.close()

    @property
    def clients(self) -> int:
        """Attached clients (not counting `ls` probes); safe to read from any thread."""
        return self._attached

    def _listen(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()  # a stale socket of this id (ids are unique while live)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(str(self.path))
        except OSError as exc:
            sock.close()
            raise TuiconsoleError(f"cannot listen on {self.path}: {exc}") from None
        os.chmod(self.path, 0o600)  # the 0700 dir already hides it in between
        sock.listen(LISTEN_BACKLOG)
        sock.setblocking(False)
        self._listener = sock
        self._inode = os.stat(self.path).st_ino
        self._sel.register(sock, selectors.EVENT_READ, "listen")

    def _close_listener(self) -> None:
        if self._listener is not None:
            with contextlib.suppress(KeyError, ValueError):
                self._sel.unregister(self._listener)
            self._listener.close()
            self._listener = None

    # ------------------------------------------------------------------ the loop

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._iteration()
            except Exception:  # never let the server thread die silently
                log.exception("remote server iteration failed")
                time.sleep(0.1)

    def _iteration(self) -> None:
        for key, mask in self._sel.select(self._timeout()):
            if key.data is None:
                with contextlib.suppress(OSError):
                    while self._wake_r.recv(4096):
                        pass
            elif key.data == "listen":
                self._accept()
            else:
                client = self._clients.get(key.data)
                if client is None:
                    continue
                if mask & selectors.EVENT_READ:
                    self._read(client)
                if mask & selectors.EVENT_WRITE and client.key in self._clients:
                    self._flush(client)
        self._deliver_results()
        self._send_snapshots()
        self._check_clients()
        if time.monotonic() >= self._next_housekeeping:
            self._housekeeping()

    def _timeout(self) -> float:
        if not self._attached_any():
            return 0.5
        return max(0.0, min(0.5, self._next_tick - time.monotonic()))

    def _attached_any(self) -> bool:
        return any(c.hello for c in self._clients.values())

    def _poke(self) -> None:
        with contextlib.suppress(OSError):
            self._wake_w.send(b"\0")

    # ------------------------------------------------------------------ connections

    def _accept(self) -> None:
        assert self._listener is not None
        while True:
            try:
                sock, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.warning("accept failed: %s", exc)
                return
            try:
                cred = peer_credentials(sock)
            except OSError as exc:
                self._refuse(sock, f"cannot read peer credentials: {exc}")
                continue
            reason = check_peer(cred, self.uid)
            if reason is not None:
                self._refuse(sock, f"refused connection: {reason}")
                continue
            pending = [c for c in self._clients.values() if not c.hello]
            if len(pending) >= MAX_PENDING:
                oldest = min(pending, key=lambda c: c.connected)
                self._drop(oldest, f"no hello yet, and {MAX_PENDING} connections wait for one")
            sock.setblocking(False)
            name = f"remote:{cred.pid}" if cred is not None else f"remote:fd{sock.fileno()}"
            self._next_key += 1
            client = _Client(key=self._next_key, sock=sock, cred=cred, name=name)
            self._clients[client.key] = client
            self._sel.register(sock, selectors.EVENT_READ, client.key)

    def _refuse(self, sock: socket.socket, reason: str) -> None:
        log.warning("%s", reason)
        self._note_drop(reason)
        with contextlib.suppress(OSError):
            sock.setblocking(False)
            sock.send(P.message("error", message=reason))
        sock.close()

    def _drop(self, client: _Client, reason: str, *, warn: bool = True) -> None:
        # In this order, so whoever watches sees a consistent server: the client is
        # gone from `clients`, then the reason is in `dropped`, then the client hears it.
        self._forget_client(client)
        client.inbox.clear()  # the rest of what it sent is never handled
        if warn:
            log.warning("dropping %s: %s", client.name, reason)
            self._note_drop(f"{client.name}: {reason}")
            with contextlib.suppress(OSError):
                client.sock.send(P.message("error", message=reason))
        elif client.hello and not client.lite:
            log.info("%s detached (%s)", client.name, reason)
        client.sock.close()

    def _note_drop(self, reason: str) -> None:
        self.dropped.append(reason)
        del self.dropped[:-50]

    def _close_client(self, client: _Client) -> None:
        self._forget_client(client)
        client.sock.close()

    def _forget_client(self, client: _Client) -> None:
        if self._clients.pop(client.key, None) is not None:
            with contextlib.suppress(KeyError, ValueError, OSError):
                self._sel.unregister(client.sock)
            had_control = self._controller == client.key
            if had_control:
                self._controller = None
            if client.hello and not client.lite:
                self._attached -= 1
                if not self._attached:
                    self.last_client_left = time.monotonic()
            if had_control or (client.hello and not client.lite):
                self._announce_roles()

    # ------------------------------------------------------------------ reading

    def _read(self, client: _Client) -> None:
        try:
            data = client.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._drop(client, f"read failed: {exc}", warn=False)
            return
        if not data:
            self._drop(client, "closed the connection", warn=False)
            return
        client.inbox.add(data)
        try:
            for msg in client.inbox.messages():
                self._handle(client, msg)
                if client.key not in self._clients:
                    return  # dropped (or said bye): the rest of its input is discarded
        except P.ProtocolError as exc:
            self._drop(client, str(exc))
            return
        except Exception as exc:  # a bug here must cost this client, not every client
            log.exception("handling input from %s failed", client.name)
            self._drop(client, f"internal error handling its input: {type(exc).__name__}")
            return
        if client.inbox.pending:
            if client.partial_since is None:
                client.partial_since = time.monotonic()
        else:
            client.partial_since = None
        self._update_events(client)

    def _handle(self, client: _Client, msg: dict[str, Any]) -> None:
        kind = msg["type"]
        if not client.hello:
            if kind != "hello":
                raise P.ProtocolError(f"expected hello first, got {kind!r}")
            self._hello(client, msg)
            return
        if kind == "command":
            self._command(client, msg)
        elif kind == "rate":
            client.interval = 1.0 / _rate(msg.get("hz"))
            client.next_due = min(client.next_due, time.monotonic() + client.interval)
            self._next_tick = min(self._next_tick, client.next_due)
        elif kind == "bye":
            self._drop(client, "detached", warn=False)
        elif kind == "ping":
            self._queue(client, P.message("pong"))
        elif kind == "control":
            self._take_control(client)
        else:
            raise P.ProtocolError(f"unknown message type {kind!r}")

    def _hello(self, client: _Client, msg: dict[str, Any]) -> None:
        attached = sum(1 for c in self._clients.values() if c.hello)
        if attached >= MAX_CLIENTS:
            self._drop(client, f"refused connection: already {MAX_CLIENTS} clients")
            return
        client.hello = True
        client.lite = bool(msg.get("lite"))
        token = msg.get("owner")
        if self.owner_token and isinstance(token, str):
            client.owner = hmac.compare_digest(token.encode(), self.owner_token.encode())
        client.read_only = bool(msg.get("read_only"))
        if not client.lite:
            self._attached += 1
            free = self._controller is None
            if not client.read_only and (free or client.owner):
                self._controller = client.key  # the run's own console steers from the start
            client.role = "control" if self._controller == client.key else "watch"
        client.interval = 1.0 / _rate(msg.get("rate"))
        run = self.info.to_dict()
        run["clients"] = self.clients
        self._queue(
            client,
            P.message("welcome", run=run, source=client.name, **self._role_fields(client)),
        )
        client.next_due = 0.0  # the full snapshot goes out on this iteration
        self._next_tick = 0.0
        if not client.lite:
            log.info("%s attached (%s)", client.name, client.role)
            self._announce_roles(skip=client)

    # ------------------------------------------------------------------ control

    def _controller_name(self) -> str:
        holder = self._clients.get(self._controller) if self._controller is not None else None
        return holder.name if holder is not None else ""

    def _role_fields(self, client: _Client) -> dict[str, Any]:
        """What a ``role`` frame (and the welcome) tells ``client`` about control."""
        return {
            "role": client.role,
            "clients": self.clients,
            "id": client.name,
            "controller": self._controller_name(),
            "read_only": client.read_only,
        }

    def _announce_roles(self, skip: _Client | None = None, message: str = "") -> None:
        """Tell every attached client its role and the client count (after a change)."""
        if self._stop.is_set():
            return  # shutting down: each client hears bye instead
        for other in list(self._clients.values()):
            if other is skip or not other.hello or other.lite:
                continue
            other.role = "control" if self._controller == other.key else "watch"
            self._queue(other, P.message("role", message=message, **self._role_fields(other)))

    def _take_control(self, client: _Client) -> None:
        if client.lite:
            raise P.ProtocolError("a lite probe cannot take control")
        if client.read_only:
            refused = "read-only attach: this console cannot take control"
            self._queue(client, P.message("role", message=refused, **self._role_fields(client)))
            return
        before = self._controller_name()
        self._controller = client.key
        taken = f"{client.name} took control" + (f" from {before}" if before else "")
        if before != client.name:
            log.info("%s", taken)
        self._announce_roles(message=taken)

    def _refusal(self, client: _Client, text: str, source: str) -> str | None:
        """Why ``client`` may not run ``text`` now, or None (it may; it may take control)."""
        if client.read_only:
            return "read-only attach: commands are refused (attach without --read-only to steer)"
        if client.lite:  # an `ls` probe: it must never become the controller
            return "a lite probe (tuiconsole ls) does not steer: attach to send commands"
        if self._controller == client.key:
            return None
        if client.owner and (text.strip() == "stop" or source.startswith("signal:")):
            return None  # leaving the console that started a run stops it, as it always did
        if self._controller is None:
            self._controller = client.key  # nobody steers: this command takes control
            self._announce_roles(message=f"{client.name} took control")
            return None
        return (
            f"watching: {self._controller_name()} has control; "
            ":control (ctrl+t) takes it, then this console steers"
        )

    def _command(self, client: _Client, msg: dict[str, Any]) -> None:
        msg_id, text = msg.get("id"), msg.get("text")
        if not isinstance(text, str) or not isinstance(msg_id, int | str):
            raise P.ProtocolError("command needs an integer 'id' and a string 'text'")
        if client.in_flight >= MAX_IN_FLIGHT:
            result = CommandResult(False, f"too many commands in flight (>{MAX_IN_FLIGHT})", text)
            self._queue(client, P.message("result", id=msg_id, result=P.result_to_dict(result)))
            return
        source = client.name
        extra = msg.get("source")
        if client.owner:
            owned = isinstance(extra, str) and bool(extra) and set(extra) <= OWNER_SOURCE_CHARS
            source = str(extra)[:40] if owned else "ui"
        elif isinstance(extra, str) and extra not in ("", "ui") and set(extra) <= SOURCE_CHARS:
            source = f"{client.name}:{extra[:32]}"
        refused = self._refusal(client, text, source)
        if refused is not None:
            result = CommandResult(False, refused, text.strip())
            self._queue(client, P.message("result", id=msg_id, result=P.result_to_dict(result)))
            return
        client.in_flight += 1
        key = client.key
        try:
            future = self.session.submit(text, source=source)
        except Exception as exc:  # the session promises results, but never trust a seam
            future = Future()
            future.set_result(CommandResult(False, f"{type(exc).__name__}: {exc}", text))
        future.add_done_callback(lambda f: self._on_result(key, msg_id, f))

    def _on_result(self, key: int, msg_id: Any, future: Future[CommandResult]) -> None:
        """Runs in the trainer thread (or this one): queue and poke, nothing else."""
        try:
            result = future.result()
        except Exception as exc:
            result = CommandResult(False, f"{type(exc).__name__}: {exc}")
        self._results.put((key, msg_id, result))
        self._poke()

    def _deliver_results(self) -> None:
        while True:
            try:
                key, msg_id, result = self._results.get_nowait()
            except queue.Empty:
                return
            client = self._clients.get(key)
            if client is None:
                continue  # the client left before its answer came
            client.in_flight = max(0, client.in_flight - 1)
            self._push_snapshot(client)
            self._queue(client, P.message("result", id=msg_id, result=P.result_to_dict(result)))

    def _push_snapshot(self, client: _Client) -> None:
        """The frame showing a command's effect, ahead of its result, not at the next tick.

        The trainer publishes before it resolves the command's future, so the
        client's view already shows the change when its future resolves: a key
        press is visible without waiting for the client's next frame.
        """
        if not client.hello or client.lite:
            return
        try:
            snap = self.session.snapshot()
        except Exception:  # a broken session: the result still goes out
            return
        self._offer(client, snap)

    def _offer(self, client: _Client, snap: Any) -> None:
        """Queue ``snap`` for ``client`` unless it has it, or its last is still on its way
        (a slow client skips frames)."""
        fresh = snap.seq != client.last_seq or client.last_clients != self._attached
        if fresh and not client.has_snapshot_queued:
            self._queue(client, self._snapshot_frame(client, snap), is_snapshot=True)

    # ------------------------------------------------------------------ writing

    def _send_snapshots(self) -> None:
        """One tick for all clients, at the fastest rate any of them asked for.

        Clients share the tick (not a timer each) so the server wakes at most
        MAX_RATE times a second however many are attached: every wake-up takes
        the GIL from the training loop for a moment.
        """
        now = time.monotonic()
        if now < self._next_tick:
            return
        attached = [c for c in self._clients.values() if c.hello]
        if not attached:
            return
        tick = min(c.interval for c in attached)
        self._next_tick = now + tick
        due = [c for c in attached if now >= c.next_due - tick / 2]
        if not due:
            return
        snap = self.session.snapshot()
        for client in due:
            client.next_due = max(client.next_due + client.interval, now + client.interval / 2)
            self._offer(client, snap)

    def _snapshot_frame(self, client: _Client, snap: Any) -> bytes:
        """The frame that brings ``client`` up to ``snap`` (a delta; see protocol.py)."""
        with_modules = not client.lite and snap.structure_version != client.last_structure
        log_delta = () if client.lite else [e for e in snap.log if e.seq > client.last_log_seq]
        data = self._encoder.frame(
            snap,
            with_modules=with_modules,
            log=log_delta,
            sent_groups=client.sent_groups,
            clients=self._attached,
        )
        client.last_seq = snap.seq
        client.last_clients = self._attached
        if with_modules:
            client.last_structure = snap.structure_version
        if log_delta:
            client.last_log_seq = log_delta[-1].seq
        return data

    def _final_snapshot(self) -> Any:
        try:
            return self.session.snapshot()
        except Exception:  # closing must not fail on a broken session
            return None

    def _queue(self, client: _Client, data: bytes, is_snapshot: bool = False) -> None:
        if client.out_bytes + len(data) > MAX_QUEUE_BYTES:
            self._drop(client, f"send queue over {MAX_QUEUE_BYTES} bytes (client too slow)")
            return
        client.outbox.append((data, is_snapshot))
        client.out_bytes += len(data)
        self._flush(client)

    def _flush(self, client: _Client) -> None:
        while client.outbox:
            data, _ = client.outbox[0]
            try:
                sent = client.sock.send(memoryview(data)[client.out_offset :])
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                self._drop(client, f"write failed: {exc}", warn=False)
                return
            client.out_offset += sent
            client.out_bytes -= sent
            client.stalled_since = None
            if client.out_offset < len(data):
                break
            client.outbox.popleft()
            client.out_offset = 0
        if client.outbox and client.stalled_since is None:
            client.stalled_since = time.monotonic()
        self._update_events(client)

    def _update_events(self, client: _Client) -> None:
        """Write while anything is queued; read only while little is (backpressure)."""
        reading = client.out_bytes <= READ_PAUSE_BYTES
        if reading and not client.events & selectors.EVENT_READ:
            client.partial_since = None  # its half frame waited on us, not on it
        events = (selectors.EVENT_READ if reading else 0) | (
            selectors.EVENT_WRITE if client.outbox else 0
        )
        if events != client.events and client.key in self._clients:
            client.events = events
            with contextlib.suppress(KeyError, ValueError, OSError):
                self._sel.modify(client.sock, events, client.key)  # never 0: queued -> write

    def _check_clients(self) -> None:
        now = time.monotonic()
        for client in list(self._clients.values()):
            if not client.hello and now - client.connected > HELLO_SECONDS:
                self._drop(client, f"no hello within {HELLO_SECONDS:.0f} s")
            elif client.stalled_since is not None and now - client.stalled_since > STALL_SECONDS:
                self._drop(client, f"read nothing for {STALL_SECONDS:.0f} s (client too slow)")
            elif client.partial_since is not None and now - client.partial_since > FRAME_SECONDS:
                self._drop(
                    client, f"sent part of a frame and not the rest for {FRAME_SECONDS:.0f} s"
                )

    # ------------------------------------------------------------------ housekeeping

    def _housekeeping(self) -> None:
        """Keep /tmp cleaners away from our files; re-create them if they were removed."""
        self._next_housekeeping = time.monotonic() + HOUSEKEEPING_SECONDS
        try:
            st = os.stat(self.path)
            if st.st_ino != self._inode:
                raise FileNotFoundError
            os.utime(self.path)
        except FileNotFoundError:
            log.warning("socket %s disappeared; listening again", self.path)
            self._close_listener()
            try:
                self._listen()
            except OSError as exc:
                log.error("cannot listen on %s again: %s", self.path, exc)
        except OSError:
            pass
        try:
            write_info(self.info)
        except OSError as exc:
            log.warning("cannot write %s: %s", self.info.info_path, exc)


def remove_files_if_ours(info: RunInfo, inode: int | None) -> None:
    """Remove socket and info unless another server has taken the path since."""
    try:
        if inode is not None and os.stat(info.socket).st_ino != inode:
            return
    except FileNotFoundError:
        pass
    remove_files(info)


def _rate(value: Any) -> float:
    try:
        hz = float(value)
    except (TypeError, ValueError):
        return DEFAULT_RATE
    if hz != hz:  # NaN
        return DEFAULT_RATE
    return min(MAX_RATE, max(MIN_RATE, hz))


def setup_log_file(path: Path | None) -> None:
    """Send this package's log lines to ``path`` (the run dir), not the terminal.

    The console owns the terminal; a warning written to stderr would tear its
    screen. Detached runs already have stderr in their log file.
    """
    log.setLevel(logging.INFO)
    log.propagate = False
    for h in list(log.handlers):
        log.removeHandler(h)
        h.close()
    if path is None:
        handler: logging.Handler = logging.StreamHandler(sys.stderr)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
