"""The training process beside the console (``tuiconsole run SCRIPT``, ``--detach``).

The console never trains and imports no torch. ``tuiconsole run SCRIPT`` starts
``python -m tuiconsole run SCRIPT --detached-child ...`` in a session of its own
(no controlling terminal: a hangup or a Ctrl+C of the terminal never reaches it),
with its stdout and stderr in ``<run_dir>/tuiconsole.log``. That process loads
the script and trains in its main thread, and serves the run on its socket; the
console is a client of that socket like ``attach``, through a :class:`LaunchSession`.

The owner pipe ties the two together. The training process holds its read end;
the console writes ``detach`` to it when the user detaches, and its end closes
when the console exits for any reason, a ``kill -9`` included. An end that closes
without ``detach`` stops the run cleanly, with its final checkpoint (see
``OwnerLink`` in detach.py). A run started with ``--detach`` has no owner.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future
from pathlib import Path

from tuiconsole.engine.commands import Command, CommandResult
from tuiconsole.engine.snapshot import LogEntry, RunState, RunStatus, Snapshot
from tuiconsole.errors import TuiconsoleError
from tuiconsole.remote.client import AttachError, RemoteSession
from tuiconsole.remote.registry import RunInfo, read_info, socket_path

LOG_NAME = "tuiconsole.log"
OWNER_TOKEN_ENV = "TUICONSOLE_OWNER_TOKEN"
DETACH_WORD = b"detach\n"
LOADING_LOG_LINES = 12  # lines of the script's own output shown while it loads
POLL_S = 0.05
STOP_ACK_S = 5.0  # a stop is applied at the next step boundary; a step stuck longer is
# given up on by the training process itself, once the owner pipe closes


def torchrun_command(nproc: int, run_args: Sequence[str], script_args: Sequence[str]) -> list[str]:
    """torchrun (torch's own launcher, ``python -m torch.distributed.run``) of ``nproc``
    ranks on this node, each ``python -m tuiconsole run RUN_ARGS [-- SCRIPT_ARGS]``."""
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nnodes",
        "1",
        "--nproc-per-node",
        str(nproc),
        "-m",
        "tuiconsole",
        "run",
        *run_args,
    ]
    return cmd + ["--", *script_args] if script_args else cmd


class TrainingProcess:
    """A training process this process started; see the module docstring."""

    def __init__(
        self,
        proc: subprocess.Popen[bytes],
        run_id: str,
        run_dir: Path,
        owner_fd: int | None,
        token: str | None,
    ) -> None:
        self.proc = proc
        self.run_id = run_id
        self.run_dir = run_dir
        self.log_path = run_dir / LOG_NAME
        self.info_path = socket_path(run_id).with_suffix(".json")
        self.token = token
        self._owner_fd = owner_fd
        self._owner_lock = threading.Lock()
        self.created_run_dir = False

    def forget_failed_start(self) -> None:
        """After a start that failed (its error was said): remove the run dir this
        created if the log is all it holds, as a failed start in-process wrote nothing."""
        if not self.created_run_dir:
            return
        with contextlib.suppress(OSError):
            if [p.name for p in self.run_dir.iterdir()] == [LOG_NAME]:
                self.log_path.unlink()
                self.run_dir.rmdir()

    @classmethod
    def start(
        cls,
        script: Path,
        run_dir: Path,
        run_id: str,
        options: Sequence[str],
        script_args: Sequence[str] = (),
        *,
        owner: bool,
        nproc: int | None = None,
    ) -> TrainingProcess:
        """Start the training process; ``owner``: tie it to this process (see module doc).
        ``script_args``: the arguments of a script that is a program of its own. ``nproc``:
        the training process is torchrun's launcher of that many ranks; rank 0 serves, and
        the owner pipe is a FIFO it opens (torchrun passes its children no descriptors)."""
        from tuiconsole.engine.rundir import open_private, prepare_run_dir

        created = not run_dir.exists()
        prepare_run_dir(run_dir)  # 0700, the user's own: the log holds what the script prints
        args = [
            str(script),
            "--detached-child",
            "--run-id",
            run_id,
            "--run-dir",
            str(run_dir),
            *options,
        ]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        read_fd = write_fd = None
        token = None
        if owner:
            token = secrets.token_hex(16)
            env[OWNER_TOKEN_ENV] = token
            if nproc is None:
                read_fd, write_fd = os.pipe()
                os.set_inheritable(read_fd, True)
                args += ["--owner-fd", str(read_fd)]
            else:
                fifo = socket_path(run_id).with_suffix(".owner")
                os.mkfifo(fifo, 0o600)
                write_fd = os.open(fifo, os.O_RDWR)  # never blocks; EOF for rank 0 at our exit
                args += ["--owner-fifo", str(fifo)]
        if nproc is None:
            cmd = [sys.executable, "-m", "tuiconsole", "run", *args]
            if script_args:
                cmd += ["--", *script_args]
        else:
            cmd = torchrun_command(nproc, args, script_args)
        log_fd = open_private(run_dir / LOG_NAME, "the run log", os.O_WRONLY | os.O_APPEND)
        try:
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log_fd,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # no controlling terminal: a hangup can't reach it
                close_fds=True,
                pass_fds=() if read_fd is None else (read_fd,),
                env=env,
            )
        except BaseException:
            for fd in (read_fd, write_fd):
                if fd is not None:
                    os.close(fd)
            raise
        finally:
            os.close(log_fd)
            if read_fd is not None:
                os.close(read_fd)  # the child has it; ours would hide the EOF
        training = cls(proc, run_id, run_dir, write_fd, token)
        training.created_run_dir = created
        return training

    @property
    def pid(self) -> int:
        return self.proc.pid

    def serving(self) -> RunInfo | None:
        """The run's info once it serves (its info file names this process), else None."""
        info = read_info(self.info_path) if self.info_path.exists() else None
        if info is None:
            return None
        return info if self.proc.pid in (info.pid, info.launcher) else None

    def poll(self) -> int | None:
        return self.proc.poll()

    def wait(self, timeout: float | None = None) -> int | None:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def wait_serving(self, timeout: float) -> RunInfo | None:
        """Wait until it serves (None: still loading after ``timeout`` s); its own
        one-line error (TuiconsoleError) if it exits first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            info = self.serving()
            if info is not None:
                return info
            code = self.proc.poll()
            if code is not None:
                failure = self.failure(code)
                self.forget_failed_start()
                raise TuiconsoleError(failure)
            time.sleep(POLL_S)
        return None

    def failure(self, code: int) -> str:
        """Why it ended before serving: its own one-line error, else how and the log's tail."""
        lines = self.log_lines()
        for line in reversed(lines[-50:]):
            if line.startswith("tuiconsole: "):
                return line.removeprefix("tuiconsole: ")
        tail = " | ".join(lines[-3:]) or "no output"
        return f"the training process {describe_exit(code)}: {tail} (log: {self.log_path})"

    def log_lines(self, limit: int = 200) -> list[str]:
        """The last ``limit`` non-empty lines of its log (what the script printed)."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - 64 * 1024))
                text = f.read().decode(errors="replace")
        except OSError:
            return []
        return [ln for ln in text.splitlines() if ln.strip()][-limit:]

    def detach(self) -> None:
        """Tell it to go on without this process (then let go of the pipe)."""
        with self._owner_lock:
            if self._owner_fd is None:
                return
            with contextlib.suppress(OSError):
                os.write(self._owner_fd, DETACH_WORD)
        self.release()

    def release(self) -> None:
        """Close our end of the owner pipe: unless it was told to detach, the run stops."""
        with self._owner_lock:
            fd, self._owner_fd = self._owner_fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)


def describe_exit(code: int) -> str:
    """``was killed by SIGKILL`` / ``exited with code 2``, for a Popen returncode."""
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"was killed by {name}"
    return f"exited with code {code}"


def exit_code(code: int) -> int:
    """A shell's exit code for a Popen returncode (128 + N for a signal)."""
    return 128 - code if code < 0 else code


def on_disk(run_dir: Path) -> str:
    """What a run left in ``run_dir``: its journal and newest checkpoint."""
    parts = []
    journal = run_dir / "journal.jsonl"
    with contextlib.suppress(OSError), open(journal, "rb") as f:
        parts.append(f"{journal} ({sum(1 for _ in f)} lines)")
    try:
        ckpts = sorted(run_dir.glob("*.pt"), key=lambda p: p.stat().st_mtime)
    except OSError:
        ckpts = []
    parts.append(f"last checkpoint {ckpts[-1]}" if ckpts else "no checkpoint")
    return "; ".join(parts) if journal.exists() else "nothing (the run had not started)"


class LaunchSession:
    """The console's Session on the run it started: a RemoteSession once the run serves.

    Until then (the script loads: imports, datasets...) :meth:`snapshot` is a
    LOADING view with what the script printed so far. If the training process
    ends before it serves, :attr:`start_failed` is its one-line error. If it dies
    later (a signal, the OOM killer, a segfault), :attr:`disconnect_reason` says
    so: how, at which step, and what is on disk.
    """

    owns_run = True  # closing this console stops the run (unless it detached)
    can_detach = True

    def __init__(self, training: TrainingProcess, *, script: str, rate: float = 10.0) -> None:
        self.training = training
        self.script = script
        self.rate = rate
        self.start_failed: str | None = None
        self.start_code: int | None = None
        self._remote: RemoteSession | None = None
        # what became of the training process once the connection is gone: how it
        # died, or that it ended the run and left (see _watch)
        self._died: str | None = None
        self._closed = False
        self._lock = threading.Lock()
        self._changed = threading.Event()  # connected, failed to start, or died
        self._t0 = time.monotonic()
        self._loading: Snapshot | None = None
        self._loading_key: tuple[int, int] | None = None
        threading.Thread(target=self._watch, name="tuiconsole-launch", daemon=True).start()

    # ------------------------------------------------------------------ Session protocol

    def snapshot(self) -> Snapshot:
        remote = self._remote
        if remote is not None:
            return remote.snapshot()
        return self._loading_view()

    def submit(self, command: str | Command, source: str = "ui") -> Future[CommandResult]:
        remote = self._remote
        if remote is not None:
            return remote.submit(command, source)
        text = (command.text if isinstance(command, Command) else str(command)).strip()
        future: Future[CommandResult] = Future()
        if self.start_failed is not None:
            future.set_result(CommandResult(False, f"the run did not start: {self.start_failed}"))
        elif text == "stop":  # its end of the pipe closes: it stops while loading
            self.training.release()
            future.set_result(CommandResult(True, "stopping while the script loads", text))
        else:
            future.set_result(
                CommandResult(False, "the script is still loading; try again in a moment", text)
            )
        return future

    def wait(self, timeout: float | None = None) -> bool:
        """True once the run ended, its process died, or it failed to start."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            remote = self._remote
            if remote is not None:
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                return remote.wait(left)
            if self.start_failed is not None or self._closed:
                return True
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return False
            self._changed.wait(POLL_S if left is None else min(left, POLL_S))

    def close(self) -> None:
        """Leave as the owner: the run stops (final checkpoint) and its process exits."""
        self.finish()

    def finish(self, grace: float = 60.0) -> int | None:
        """:meth:`close`, returning the training process's exit code (None: still going).

        Waits up to ``grace`` s for the run's end, then lets go of the pipe and
        waits for the process.
        """
        remote = self._remote
        self._closed = True
        if remote is not None and not remote.disconnected:
            if not remote.snapshot().status.state.is_terminal:
                with contextlib.suppress(Exception):  # applied at the next step boundary
                    remote.submit("stop", source="ui").result(STOP_ACK_S)
            remote.wait(STOP_ACK_S)
        # Then let go: the process ends its run's files (after the stop grace if a
        # step is stuck: OwnerLink) and says bye with the final snapshot (the final
        # checkpoint, or what did not finish), which is what the terminal shows.
        self.training.release()
        if remote is not None:
            deadline = time.monotonic() + grace
            while not remote.disconnected and time.monotonic() < deadline:
                time.sleep(POLL_S)
            remote.close()
        code = self.training.wait(grace)
        if remote is None and code is not None and self.start_failed is None:
            # it never served (the console left while the script loaded): its own
            # line says how it ended ("interrupted while loading the script")
            self.start_code, self.start_failed = code, self.training.failure(code)
        return code

    def detach(self) -> None:
        """Leave the run training in the background."""
        self.training.detach()
        self._closed = True
        if self._remote is not None:
            self._remote.close()

    @property
    def disconnected(self) -> bool:
        if self.start_failed is not None:
            return True
        remote = self._remote
        return remote is not None and remote.disconnected

    @property
    def disconnect_reason(self) -> str | None:
        if self.start_failed is not None:
            return self.start_failed
        remote = self._remote
        if remote is None or not remote.disconnected:
            return None
        return self._died or f"{remote.disconnect_reason}; waiting for the training process"

    @property
    def run_id(self) -> str:
        return self.training.run_id

    # Control, as the run's server sees this console (RemoteSession's; "" until it serves).
    @property
    def role(self) -> str:
        return self._remote.role if self._remote is not None else ""

    @property
    def clients(self) -> int | None:
        return self._remote.clients if self._remote is not None else None

    @property
    def controller(self) -> str:
        return self._remote.controller if self._remote is not None else ""

    @property
    def client_id(self) -> str:
        return self._remote.client_id if self._remote is not None else ""

    @property
    def role_seq(self) -> int:
        return self._remote.role_seq if self._remote is not None else 0

    @property
    def role_message(self) -> str:
        return self._remote.role_message if self._remote is not None else ""

    read_only = False  # the console that started a run always may steer it

    def take_control(self) -> None:
        if self._remote is not None:
            self._remote.take_control()

    # ------------------------------------------------------------------ the watcher

    def _watch(self) -> None:
        while not self._closed:
            info = self.training.serving()
            if info is not None:
                try:
                    self._remote = RemoteSession(
                        info, rate=self.rate, owner_token=self.training.token
                    )
                    break
                except AttachError:
                    pass  # it is still coming up, or going down: look again
            code = self.training.poll()
            if code is not None:
                self.start_code = code
                self.start_failed = self.training.failure(code)
                self._changed.set()
                return
            time.sleep(POLL_S)
        self._changed.set()
        remote = self._remote
        if remote is None:
            return
        # remote.wait() returns at once for a run that ended but still serves: poll
        while not remote.disconnected and not self._closed:
            time.sleep(0.2)
        if self._closed:
            return
        code = self.training.wait(5.0)
        step = remote.snapshot().status.step
        how = "is gone" if code is None else describe_exit(code)
        if code is not None and code >= 0 and remote.snapshot().status.state.is_terminal:
            # it ended and left on its own (a stop from elsewhere, a signal): nothing died
            self._died = f"the run has ended and its process {describe_exit(code)}"
            return
        self._died = (
            f"the training process (pid {self.training.pid}) {how} at step {step}; "
            f"on disk: {on_disk(self.training.run_dir)}"
        )

    def _loading_view(self) -> Snapshot:
        """A LOADING snapshot: what the script printed so far, redrawn when that grows."""
        printed = self.training.log_lines()
        elapsed = time.monotonic() - self._t0
        key = (len(printed), int(elapsed))
        if self._loading is not None and key == self._loading_key:
            return self._loading
        with self._lock:
            now = time.time()
            shown = printed[-LOADING_LOG_LINES:]
            first = len(printed) - len(shown) + 2  # seq 1 is the "loading" line
            what = f"loading {self.script} in the training process (pid {self.training.pid})"
            log = [LogEntry(seq=1, step=0, time=now, kind="info", text=what)]
            log += [
                LogEntry(seq=first + i, step=0, time=now, kind="info", text=line)
                for i, line in enumerate(shown)
            ]
            status = RunStatus(
                script=Path(self.script).name,
                state=RunState.LOADING,
                epoch=0,
                step=0,
                steps_per_sec=0.0,
                elapsed=elapsed,
                device="",
            )
            self._loading = Snapshot(
                seq=(self._loading.seq + 1) if self._loading is not None else 1,
                status=status,
                groups=(),
                modules=(),
                structure_version=-1,
                log=tuple(log),
                run_dir=str(self.training.run_dir),
            )
            self._loading_key = key
            return self._loading
