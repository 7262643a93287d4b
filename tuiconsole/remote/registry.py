"""Where runs live: the per-user runtime directory, run info files, discovery.

Each served run owns two files in the runtime directory::

    <id>.sock   the Unix socket its server listens on (mode 0600)
    <id>.json   RunInfo: id, pid, script, run_dir, started, ... (mode 0600)

The directory is ``$TUICONSOLE_RUNTIME_DIR`` if set, else ``/tmp/tuiconsole-<uid>``
(mode 0700, owned by the user, checked on every use). Not ``$XDG_RUNTIME_DIR``:
systemd-logind removes that directory when the user's last session ends, which
would orphan exactly the detached runs this is for (tmux makes the same choice).
Only when another user got to ``/tmp/tuiconsole-<uid>`` first (which the user
cannot remove from sticky /tmp) is ``$XDG_RUNTIME_DIR/tuiconsole`` used instead,
if that directory is the user's own and private.

A run whose pid is gone, or whose socket refuses connections, is stale: ``ls``
and ``attach`` remove its files.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
import socket
import stat
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tuiconsole.errors import TuiconsoleError

ENV_DIR = "TUICONSOLE_RUNTIME_DIR"
PROBE_TIMEOUT = 2.0


class RunNotFound(TuiconsoleError):
    """No live run matches what the user asked for."""


class _NotOurs(TuiconsoleError):
    """The runtime dir's path is taken by something this user does not own."""


def runtime_dir(create: bool = True, *, default: Path | None = None) -> Path:
    """The user's private runtime directory, created 0700 and checked.

    Refuses (TuiconsoleError) a directory that is a symlink, not owned by this
    user, or open to group/others: another user could otherwise plant or read
    sockets there. When the default (``/tmp/tuiconsole-<uid>``; ``default`` for
    tests) is taken by another user, falls back to ``$XDG_RUNTIME_DIR/tuiconsole``
    if that is safe, else says what to do.
    """
    override = os.environ.get(ENV_DIR)
    if override:
        try:
            return _private_dir(Path(override), create, parents=True)
        except _NotOurs as exc:
            raise TuiconsoleError(f"{exc}; point {ENV_DIR} at a directory of your own") from None
    path = default or Path("/tmp") / f"tuiconsole-{os.getuid()}"
    try:
        return _private_dir(path, create, parents=False)
    except _NotOurs as exc:
        taken = str(exc)
    xdg = os.environ.get("XDG_RUNTIME_DIR", "")
    why_not = _unsafe_xdg(xdg)
    if why_not is None:
        return _private_dir(Path(xdg) / "tuiconsole", create, parents=False)
    raise TuiconsoleError(
        f"{taken}, and only its owner or an administrator can remove it "
        f"({why_not}); set {ENV_DIR} to a directory only you can enter, "
        f"e.g. `mkdir -m 700 ~/.tuiconsole-run && export {ENV_DIR}=~/.tuiconsole-run`"
    )


def _unsafe_xdg(xdg: str) -> str | None:
    """Why ``$XDG_RUNTIME_DIR`` cannot hold our sockets, or None if it can."""
    if not xdg:
        return "XDG_RUNTIME_DIR is not set"
    if not os.path.isabs(xdg):
        return f"XDG_RUNTIME_DIR={xdg} is not an absolute path"
    try:
        st = os.lstat(xdg)
    except OSError as exc:
        return f"XDG_RUNTIME_DIR={xdg}: {exc.strerror}"
    if not stat.S_ISDIR(st.st_mode):
        return f"XDG_RUNTIME_DIR={xdg} is not a directory"
    if st.st_uid != os.getuid() or st.st_mode & 0o077:
        return f"XDG_RUNTIME_DIR={xdg} is not private to you"
    return None


def _private_dir(path: Path, create: bool, *, parents: bool) -> Path:
    if create:
        with contextlib.suppress(FileExistsError):
            path.mkdir(mode=0o700, parents=parents)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        if create:
            raise
        return path
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        error = TuiconsoleError if st.st_uid == os.getuid() else _NotOurs
        raise error(f"runtime dir {path} is not a directory (refusing to use it)")
    if st.st_uid != os.getuid():
        raise _NotOurs(f"runtime dir {path} is owned by uid {st.st_uid}, not you ({os.getuid()})")
    if st.st_mode & 0o077:
        os.chmod(path, 0o700)
    return path


@dataclass(frozen=True)
class RunInfo:
    """The small JSON file a served run writes next to its socket."""

    id: str
    pid: int
    script: str
    run_dir: str
    started: float
    socket: str
    detached: bool = False
    decay_factor: float = 0.1
    log: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    world_size: int = 1  # the ranks of a torchrun job (this is rank 0's process)
    launcher: int = 0  # torchrun's pid, for a rank it started

    @property
    def info_path(self) -> Path:
        return Path(self.socket).with_suffix(".json")

    def to_dict(self) -> dict[str, Any]:
        return {"v": 1, **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunInfo:
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        return cls(**known)


def new_run_id(directory: Path | None = None) -> str:
    """Six hex digits, unused in the runtime dir (short to type; prefixes work)."""
    directory = directory or runtime_dir()
    while True:
        run_id = secrets.token_hex(3)
        if (
            not (directory / f"{run_id}.json").exists()
            and not (directory / f"{run_id}.sock").exists()
        ):
            return run_id


def socket_path(run_id: str, directory: Path | None = None) -> Path:
    return (directory or runtime_dir()) / f"{run_id}.sock"


def write_info(info: RunInfo) -> None:
    """Atomically (re)write the info file, mode 0600."""
    path = info.info_path
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(info.to_dict(), f)
    os.replace(tmp, path)


def remove_files(info: RunInfo) -> None:
    for p in (info.info_path, Path(info.socket)):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()


def read_info(path: Path) -> RunInfo | None:
    try:
        data = json.loads(path.read_text())
        return RunInfo.from_dict(data)
    except (OSError, ValueError, TypeError):
        return None


def pid_alive(pid: int) -> bool:
    """True if ``pid`` is a running process of ours (a zombie counts as dead)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, but not ours: the pid was reused
        return False
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc (macOS): kill(0) is all we know
    return stat_line.rpartition(")")[2].split()[:1] != ["Z"]


def socket_listening(path: str | Path, timeout: float = PROBE_TIMEOUT) -> bool | None:
    """True: accepts connections; False: nobody listens (stale); None: can't tell (busy)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(str(path))
    except (FileNotFoundError, ConnectionRefusedError):
        return False
    except OSError as exc:
        if exc.errno in (errno.ECONNREFUSED, errno.ENOENT, errno.ENOTSOCK):
            return False
        return None
    finally:
        sock.close()
    return True


@dataclass(frozen=True)
class RunEntry:
    """A live run as ``ls`` shows it: its info plus what its server said just now."""

    info: RunInfo
    state: str = "?"
    step: int | None = None
    loss: float | None = None
    clients: int | None = None
    error: str = ""
    optimizer: dict[str, Any] | None = None  # Snapshot.optimizer_state(): the whole optimizer
    # Snapshot.telemetry as a dict: samples/s, tokens/s, data wait vs compute, ETA, GPU
    telemetry: dict[str, Any] | None = None
    # Snapshot.step_view as a dict (amp, scale, max norm, grad norm, clipped, accumulate,
    # compile), None for a plain step
    step_view: dict[str, Any] | None = None
    # Snapshot.signals without their histories (name, step, grad_norm, param_norm,
    # update_ratio, adam_step per group) and Snapshot.signal_every
    signals: list[dict[str, Any]] | None = None
    signal_every: int = 0


def live_runs(clean: bool = True) -> list[RunInfo]:
    """Runs with a live pid and a listening socket, newest first. Removes stale ones."""
    directory = runtime_dir()
    runs: list[RunInfo] = []
    seen: set[str] = set()
    for path in directory.glob("*.json"):
        info = read_info(path)
        if info is None:
            if clean and time.time() - _mtime(path) > 60:
                _unlink(path)  # unreadable and old: not one being written
            continue
        seen.add(Path(info.socket).name)
        if not _is_live(info):
            if clean:
                remove_files(info)
            continue
        runs.append(info)
    if clean:
        for sock in directory.glob("*.sock"):
            if sock.name not in seen and socket_listening(sock, 0.5) is False:
                _unlink(sock)
    runs.sort(key=lambda r: r.started, reverse=True)
    return runs


def _is_live(info: RunInfo) -> bool:
    if not pid_alive(info.pid):
        return False
    return socket_listening(info.socket) is not False


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return time.time()


def _unlink(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()


def resolve_run(query: str | None) -> RunInfo:
    """RUN as the user typed it: an id, an id prefix, a run dir; None: the newest run."""
    runs = live_runs()
    if not runs:
        raise RunNotFound("no live runs (start one with `tuiconsole run SCRIPT --detach`)")
    if not query:
        return runs[0]
    exact = [r for r in runs if r.id == query]
    if exact:
        return exact[0]
    matches = [r for r in runs if r.id.startswith(query)]
    if not matches:
        target = _resolved(query)
        matches = [r for r in runs if _resolved(r.run_dir) == target]
    if not matches:
        matches = [r for r in runs if Path(r.run_dir).name.startswith(query)]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        ids = ", ".join(f"{r.id} ({Path(r.run_dir).name})" for r in runs)
        raise RunNotFound(f"no live run matches {query!r}; live runs: {ids}")
    ids = ", ".join(f"{r.id} ({Path(r.run_dir).name})" for r in matches)
    raise RunNotFound(f"{query!r} matches several runs: {ids}; give more of the id")


def _resolved(path: str) -> str:
    try:
        return str(Path(path).expanduser().resolve())
    except OSError:
        return path
