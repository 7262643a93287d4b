"""The wire format between a run's server and its remote clients.

A frame is a 4-byte big-endian unsigned length followed by that many bytes of
UTF-8 JSON, one object per frame. Every object carries ``"v"`` (the protocol
version, :data:`VERSION`) and ``"type"``::

    client -> server   hello {pid, rate, lite, read_only?, owner?}   first frame, always
                       command {id, text, source}
                       control                   take control (the controller then watches)
                       rate {hz}                 change the snapshot rate
                       ping                      answered with pong
                       bye
    server -> client   welcome {run, source, role, clients, id, controller, read_only}
                                                 answer to hello: run metadata, our log tag
                       role {role, clients, id, controller, read_only, message}
                                                 role ("control" | "watch") or count changed
                       snapshot {snapshot, modules, log, clients}
                       result {id, result: {ok, message, cmd}}
                       pong
                       error {message}           sent once before the server drops a client
                       bye {reason}              the server is going away

A ``snapshot`` frame is a delta against what that client already has: the
``snapshot`` object is a full Snapshot *without* ``modules`` and ``log``;
``modules`` is the full module table, or null when ``structure_version`` did
not change since the last frame to this client; ``log`` holds only the entries
newer than those already sent. :class:`SnapshotAssembler` rebuilds the full
:class:`~tuiconsole.engine.snapshot.Snapshot` on the client.

JSON (not msgpack): no extra dependency, readable with ``socat``, and Python's
``json`` round-trips NaN/inf floats (a NAN-PAUSED run has them). Frames from a
client are small (commands), so the server caps them at
:data:`MAX_CLIENT_FRAME`; snapshot frames can carry a big module table, so
clients accept up to :data:`MAX_SERVER_FRAME`.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import socket
import struct
import types
import typing
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

from tuiconsole.engine import snapshot as S
from tuiconsole.engine.commands import CommandResult
from tuiconsole.errors import TuiconsoleError

VERSION = 1
HEADER = struct.Struct(">I")
MAX_CLIENT_FRAME = 64 * 1024  # a command line, a hello: far below this
MAX_SERVER_FRAME = 64 * 1024 * 1024  # a snapshot with a very large module table
LOG_KEEP = 500  # entries a client keeps, like the trainer's live log

_SNAPSHOT_HEAVY = ("modules", "log", "groups")  # sent apart, as deltas


class ProtocolError(TuiconsoleError):
    """The peer sent something that is not a valid frame; the connection is dropped."""


# ---------------------------------------------------------------------- frames


def dumps(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":"), allow_nan=True).encode()


def frame(payload: bytes) -> bytes:
    """Prefix an encoded JSON payload with its length."""
    return HEADER.pack(len(payload)) + payload


def message(type_: str, **fields: Any) -> bytes:
    """One complete frame: ``{"v": VERSION, "type": type_, **fields}``."""
    return frame(dumps({"v": VERSION, "type": type_, **fields}))


def parse_payload(payload: bytes) -> dict[str, Any]:
    """Decode one frame's payload; raise ProtocolError unless it is a versioned message."""
    try:
        obj = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ProtocolError(f"malformed frame: {exc}") from None
    except RecursionError:  # [[[[...]]]] well under the frame limit
        raise ProtocolError("malformed frame: JSON nested too deeply") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("type"), str):
        raise ProtocolError("malformed frame: expected a JSON object with a 'type'")
    if obj.get("v") != VERSION:
        raise ProtocolError(
            f"protocol version {obj.get('v')!r} not supported (this side speaks {VERSION})"
        )
    return obj


class FrameBuffer:
    """Incremental frame splitter for bytes read from a non-blocking socket."""

    def __init__(self, max_frame: int) -> None:
        self.max_frame = max_frame
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        """Append bytes; return the complete messages. Raises ProtocolError."""
        self.add(data)
        return list(self.messages())

    def add(self, data: bytes) -> None:
        self._buf += data

    def messages(self) -> Iterator[dict[str, Any]]:
        """The complete messages buffered so far, one at a time, in order.

        Lazily, so a reader that stops (it dropped the peer) leaves the rest
        unparsed. Raises ProtocolError at the first bad frame.
        """
        while len(self._buf) >= HEADER.size:
            (size,) = HEADER.unpack_from(self._buf)
            if size > self.max_frame:
                raise ProtocolError(f"oversized frame: {size} bytes (limit {self.max_frame})")
            end = HEADER.size + size
            if len(self._buf) < end:
                break
            payload = bytes(self._buf[HEADER.size : end])
            del self._buf[:end]
            yield parse_payload(payload)

    def clear(self) -> None:
        self._buf = bytearray()

    @property
    def pending(self) -> int:
        return len(self._buf)


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < n:
        chunk = sock.recv(min(n - len(chunks), 1 << 20))
        if not chunk:
            raise ConnectionError("connection closed by the peer")
        chunks += chunk
    return bytes(chunks)


def read_message(sock: socket.socket, max_frame: int = MAX_SERVER_FRAME) -> dict[str, Any]:
    """Read one message from a blocking socket (honours the socket's timeout)."""
    (size,) = HEADER.unpack(_recv_exact(sock, HEADER.size))
    if size > max_frame:
        raise ProtocolError(f"oversized frame: {size} bytes (limit {max_frame})")
    return parse_payload(_recv_exact(sock, size))


# ---------------------------------------------------------------------- dataclass <-> JSON


def to_jsonable(value: Any) -> Any:
    """Frozen dataclasses of plain values -> JSON values (tuples become lists)."""
    if value is None or isinstance(value, bool | int | float | str):
        return value.value if isinstance(value, enum.Enum) else value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_jsonable(getattr(value, f.name)) for f in _fields(type(value))}
    if isinstance(value, tuple | list):
        return [to_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, enum.Enum):
        return value.value
    return str(value)


_FIELDS: dict[type, tuple[dataclasses.Field[Any], ...]] = {}


def _fields(cls: type) -> tuple[dataclasses.Field[Any], ...]:
    got = _FIELDS.get(cls)
    if got is None:
        got = _FIELDS[cls] = dataclasses.fields(cls)
    return got


Converter = Callable[[Any], Any]
T = TypeVar("T")
_CONVERTERS: dict[Any, Converter] = {}


def _tuples(value: Any) -> Any:
    """``Any`` fields (hparams values: floats, bools, betas): lists back to tuples."""
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    return value


def _converter(tp: Any) -> Converter:
    """A function turning the JSON form of type ``tp`` back into ``tp`` (built once)."""
    conv = _CONVERTERS.get(tp)
    if conv is None:
        conv = _CONVERTERS[tp] = _build_converter(tp)
    return conv


def _build_converter(tp: Any) -> Converter:
    origin = typing.get_origin(tp)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return _dataclass_converter(tp)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return tp
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        conv = _converter(inner[0]) if len(inner) == 1 else _tuples
        return lambda v: None if v is None else conv(v)
    if origin is tuple:
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            item = _converter(args[0])
            return lambda v: tuple(item(x) for x in v)
        convs = [_converter(a) for a in args]
        return lambda v: tuple(c(x) for c, x in zip(convs, v, strict=False))
    if tp is float:
        return float
    if tp in (int, str, bool):
        return lambda v: v
    return _tuples


def _dataclass_converter(cls: type) -> Converter:
    hints = typing.get_type_hints(cls)
    convs = {f.name: _converter(hints[f.name]) for f in _fields(cls) if f.init}

    def convert(data: Any) -> Any:
        if not isinstance(data, dict):
            raise ProtocolError(f"expected an object for {cls.__name__}")
        # Unknown keys (a newer server) are ignored; missing ones take their default.
        return cls(**{k: conv(data[k]) for k, conv in convs.items() if k in data})

    return convert


def from_jsonable(cls: type[T], data: Any) -> T:
    """Rebuild a frozen dataclass (and everything it holds) from its JSON form."""
    try:
        # The converter is built from cls's own annotations: what it returns is a cls.
        value: T = _converter(cls)(data)
    except ProtocolError:
        raise
    except (TypeError, ValueError, KeyError) as exc:
        raise ProtocolError(f"bad {cls.__name__}: {exc}") from None
    return value


def snapshot_to_dict(snap: S.Snapshot) -> dict[str, Any]:
    out: dict[str, Any] = to_jsonable(snap)  # a dataclass: always an object
    return out


def snapshot_from_dict(data: dict[str, Any]) -> S.Snapshot:
    """The inverse of :func:`snapshot_to_dict` (missing optional fields take defaults)."""
    return from_jsonable(S.Snapshot, data)


def result_to_dict(result: CommandResult) -> dict[str, Any]:
    return {"ok": bool(result.ok), "message": str(result.message), "cmd": str(result.cmd)}


def result_from_dict(data: Any) -> CommandResult:
    if not isinstance(data, dict):
        raise ProtocolError("malformed result")
    return CommandResult(
        bool(data.get("ok")), str(data.get("message", "")), str(data.get("cmd", ""))
    )


# ---------------------------------------------------------------------- snapshot deltas


class SnapshotEncoder:
    """Server side: encodes each snapshot's shared part once for every client.

    The module table is encoded once per ``structure_version``; log entries are
    sent per client as a delta (entries with a higher ``seq`` than its last), and
    so are the param groups: a client gets the groups that changed since the
    frame before (``groups_changed``: [index, group] pairs), all of them
    (``groups``) when their number changed or it has none yet. A 500-group
    optimizer is not sent 10 times a second when one lr moved.
    """

    def __init__(self) -> None:
        self._base: tuple[int, str] | None = None
        self._modules: tuple[int, str] | None = None
        self._groups: tuple[int, list[str]] | None = None

    def base_json(self, snap: S.Snapshot) -> str:
        if self._base is None or self._base[0] != snap.seq:
            body = {
                f.name: to_jsonable(getattr(snap, f.name))
                for f in _fields(S.Snapshot)
                if f.name not in _SNAPSHOT_HEAVY
            }
            self._base = (snap.seq, json.dumps(body, separators=(",", ":")))
        return self._base[1]

    def modules_json(self, snap: S.Snapshot) -> str:
        if self._modules is None or self._modules[0] != snap.structure_version:
            self._modules = (
                snap.structure_version,
                json.dumps(to_jsonable(snap.modules), separators=(",", ":")),
            )
        return self._modules[1]

    def groups_json(self, snap: S.Snapshot) -> list[str]:
        """Each group's JSON, encoded once per snapshot for every client."""
        if self._groups is None or self._groups[0] != snap.seq:
            self._groups = (
                snap.seq,
                [json.dumps(to_jsonable(g), separators=(",", ":")) for g in snap.groups],
            )
        return self._groups[1]

    def frame(
        self,
        snap: S.Snapshot,
        *,
        with_modules: bool,
        log: Iterable[S.LogEntry],
        sent_groups: list[str] | None = None,
        clients: int | None = None,
    ) -> bytes:
        """The frame for one client. ``sent_groups``: the groups as this client last
        got them (updated in place); None sends every group. ``clients``: the consoles
        attached to the run now (the attach badge), sent as the frame's ``clients``."""
        log_json = json.dumps([to_jsonable(e) for e in log], separators=(",", ":"))
        modules_json = self.modules_json(snap) if with_modules else "null"
        groups = self.groups_json(snap)
        if sent_groups is None or len(sent_groups) != len(groups):
            groups_part = f'"groups":[{",".join(groups)}]'
        else:
            changed = [f"[{i},{g}]" for i, g in enumerate(groups) if sent_groups[i] != g]
            groups_part = f'"groups_changed":[{",".join(changed)}]'
        if sent_groups is not None:
            sent_groups[:] = groups
        text = (
            f'{{"v":{VERSION},"type":"snapshot","snapshot":{self.base_json(snap)},'
            f'"modules":{modules_json},"log":{log_json},{groups_part}'
            + (f',"clients":{int(clients)}' if clients is not None else "")
            + "}"
        )
        return frame(text.encode())


class SnapshotAssembler:
    """Client side: turns snapshot frames (deltas) back into full Snapshots."""

    def __init__(self, log_keep: int = LOG_KEEP) -> None:
        self._modules: tuple[S.ModuleNode, ...] = ()
        self._log: deque[S.LogEntry] = deque(maxlen=log_keep)
        self._groups: list[S.GroupView] = []
        self.clients: int | None = None  # the last frame's client count, if it said one

    def apply(self, msg: dict[str, Any]) -> S.Snapshot:
        body = msg.get("snapshot")
        if not isinstance(body, dict):
            raise ProtocolError("snapshot frame without a snapshot")
        base = snapshot_from_dict({**body, "modules": [], "log": [], "groups": []})
        if msg.get("modules") is not None:
            self._modules = from_jsonable(tuple[S.ModuleNode, ...], msg["modules"])
        if "groups" in body:  # a frame that carries them inline (no delta)
            self._groups = list(from_jsonable(tuple[S.GroupView, ...], body["groups"]))
        if msg.get("groups") is not None:
            self._groups = list(from_jsonable(tuple[S.GroupView, ...], msg["groups"]))
        for item in msg.get("groups_changed") or ():
            if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], int)):
                raise ProtocolError("groups_changed holds [index, group] pairs")
            index, group = item
            if not 0 <= index < len(self._groups):
                raise ProtocolError(f"groups_changed index {index} is out of range")
            self._groups[index] = from_jsonable(S.GroupView, group)
        if isinstance(msg.get("clients"), int):
            self.clients = msg["clients"]
        new_log = from_jsonable(tuple[S.LogEntry, ...], msg.get("log") or [])
        last = self._log[-1].seq if self._log else 0
        self._log.extend(e for e in new_log if e.seq > last)
        return dataclasses.replace(
            base, modules=self._modules, log=tuple(self._log), groups=tuple(self._groups)
        )
