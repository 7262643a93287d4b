"""The run directory and the files tuiconsole writes, safe against a full or
read-only disk and against other users.

Why: journals and checkpoints hold the model, and a run dir may sit in a shared
directory. So a run dir must be the user's own and not writable by other users
(else someone could plant symlinks in it); new run dirs are 0700 and files 0600;
files are opened without following symlinks; temp files get unpredictable names.
A failed write names the file, the directory and why ("disk full", "read-only")
in one line, for the user, instead of an OSError traceback.
"""

from __future__ import annotations

import errno
import os
import re
import stat
from datetime import datetime
from pathlib import Path

from tuiconsole.errors import TuiconsoleError

#: Files of the run itself (and of its remote server): a checkpoint may never replace them.
RUN_FILES = ("journal.jsonl", "metrics.jsonl", "remote.log", "tuiconsole.log")
#: Prefix of the temp file a checkpoint is written to before its rename.
TEMP_PREFIX = ".tuiconsole-tmp-"
# Temp names to remove at start: ours, and the fixed name older versions used.
_STALE_TEMP = re.compile(rf"^({re.escape(TEMP_PREFIX)}.+|checkpoint-.+\.pt\.tmp)$")


class StorageError(TuiconsoleError):
    """Writing one of the run's own files failed (disk full, read-only, I/O error).

    Mid-run this ends the run in ERROR (exit 1); at start-up it is a one-line
    error (exit 2) before any training.
    """


def why(exc: OSError) -> str:
    """A few words for a failed write: "disk full", "read-only", ..."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return "disk full"
    if exc.errno == errno.EROFS:
        return "read-only"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    if exc.errno == errno.ELOOP:
        return "it is a symbolic link (not followed)"
    return (exc.strerror or str(exc)).lower()


def is_disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


def storage_error(what: str, where: Path, exc: OSError) -> StorageError:
    return StorageError(f"cannot write {what} in {where}: {why(exc)}")


def _owner_problem(st: os.stat_result) -> str | None:
    """Why another user could change this directory's entries, or None."""
    uid = os.geteuid()
    if st.st_uid != uid:
        return f"it is owned by uid {st.st_uid}, not by you (uid {uid})"
    mode = stat.S_IMODE(st.st_mode)
    if mode & stat.S_IWOTH or (mode & stat.S_IWGRP and st.st_gid != os.getegid()):
        return f"other users can write in it (mode {mode:04o})"
    return None


def check_run_dir(path: Path) -> None:
    """Refuse a run dir another user controls (TuiconsoleError naming why)."""
    try:
        link = os.lstat(path)
        st = os.stat(path)
    except OSError as exc:
        raise TuiconsoleError(f"cannot use run dir {path}: {why(exc)}") from None
    if stat.S_ISLNK(link.st_mode) and link.st_uid != os.geteuid():
        raise TuiconsoleError(
            f"refusing run dir {path}: it is a symbolic link of uid {link.st_uid}, not yours"
        )
    if not stat.S_ISDIR(st.st_mode):
        raise TuiconsoleError(f"cannot use run dir {path}: it is not a directory")
    problem = _owner_problem(st)
    if problem is not None:
        raise TuiconsoleError(f"refusing run dir {path}: {problem}; pick a --run-dir of your own")


def prepare_run_dir(path: Path) -> None:
    """Create the run dir (0700) if needed, check it is the user's, drop stale temp files."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.mkdir(mode=0o700)
    except FileExistsError:
        pass
    except OSError as exc:
        raise StorageError(f"cannot create the run dir {path}: {why(exc)}") from None
    check_run_dir(path)
    remove_stale_temps(path)


def remove_stale_temps(folder: Path) -> list[str]:
    """Remove checkpoint temp files a killed run left (kill -9 mid-save, second Ctrl+C)."""
    removed: list[str] = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    uid = os.geteuid()
    for name in names:
        if not _STALE_TEMP.match(name):
            continue
        try:
            st = os.lstat(folder / name)
            if stat.S_ISREG(st.st_mode) and st.st_uid == uid:
                os.unlink(folder / name)
                removed.append(name)
        except OSError:
            continue
    return removed


def open_private(path: Path, what: str, flags: int) -> int:
    """Open (creating it 0600) without following a symlink; the user's regular file only.

    Raises StorageError for a failed create/write (disk full, read-only) and
    TuiconsoleError for a file another user planted.
    """
    flags |= os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags, 0o600)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENXIO):  # a planted symlink or FIFO
            raise TuiconsoleError(
                f"refusing to write {what} {path}: it is not a regular file "
                "(a symbolic link or a pipe)"
            ) from None
        raise storage_error(what, path.parent, exc) from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
        os.close(fd)
        raise TuiconsoleError(f"refusing to write {what} {path}: it is not a regular file of yours")
    return fd


def checked_target(text: str, run_dir: Path | None) -> Path:
    """Where a ``checkpoint PATH`` may go, or a TuiconsoleError saying why not.

    Relative paths are in the run dir. Refused: the run's own files
    (journal, metrics, logs), a directory, anything ending in "/", a relative
    path that leaves the run dir, and an absolute path outside the run dir in a
    directory the user does not own.
    """
    path = Path(text).expanduser()
    if text.endswith(os.sep) or text in (".", "..") or path.name in ("", ".", ".."):
        raise TuiconsoleError(f"checkpoint path {text!r} names a directory; give a file name")
    base = run_dir if run_dir is not None else Path(".")
    given_absolute = path.is_absolute()
    target = path if given_absolute else base / path
    resolved_base = base.resolve()
    resolved = target.parent.resolve() / target.name
    inside = resolved.is_relative_to(resolved_base)
    if not inside and not given_absolute:
        raise TuiconsoleError(
            f"checkpoint path {text!r} leaves the run dir {base}; give an absolute path "
            "to write elsewhere"
        )
    if inside and resolved.parent == resolved_base and resolved.name in RUN_FILES:
        raise TuiconsoleError(
            f"checkpoint path {text!r} is the run's own {resolved.name}; pick another name"
        )
    if resolved.is_dir():
        raise TuiconsoleError(f"checkpoint path {text!r} is a directory; give a file name")
    if not inside:
        ancestor = resolved.parent
        while not ancestor.exists() and ancestor != ancestor.parent:
            ancestor = ancestor.parent
        try:
            problem = _owner_problem(os.stat(ancestor))
        except OSError as exc:
            problem = why(exc)
        if problem is not None:
            raise TuiconsoleError(
                f"cannot write checkpoint {text}: {ancestor} is not a directory of yours "
                f"({problem}); write it in the run dir or a directory you own"
            )
    return target


def default_run_dir(stem: str) -> Path:
    """``runs/<stem>-<YYYYmmdd-HHMMSS>`` (``-2``, ``-3``... if taken): a run's default dir."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path("runs") / f"{stem}-{stamp}"
    path, n = base, 2
    while path.exists():
        path, n = base.with_name(f"{base.name}-{n}"), n + 1
    return path
