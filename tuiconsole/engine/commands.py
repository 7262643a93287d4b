"""The command language: one grammar for keys, the ':' line, stdin, the journal
and remote clients.

    lr TARGET VALUE            set lr in place (VALUE may be *F or /F)
    decay FACTOR [TARGET]      multiply lr in place (default TARGET: all)
    set TARGET KEY=VALUE...    any numeric hyper-parameter of the group(s)
    split NAME MODULE... [KEY=VALUE...]
                               move the modules' parameters into a new group,
                               optimizer state kept
    rebuild [CLASS] [KEY=VALUE...]
                               fresh optimizer from the current groups; state dropped
    clip MAX_NORM | clip off   gradient clipping by norm (engine/step.py)
    accumulate N               micro-batches per optimizer step, from the next step
    pause | resume | step [N] | eval | stop | checkpoint [PATH]
    lrfind [TARGET] [from=V] [to=V] [steps=N] | lrfind cancel
                               lr range test while paused; the run is put back
                               exactly as it was (engine/lrfind.py)
    undo                       revert the last optimizer change still revertible
    rollback [CHECKPOINT]      load a checkpoint into the paused run (default: the
                               last one before the NaN, else the last one)
    at STEP COMMAND | at cancel ID
                               apply COMMAND when the run's step reaches STEP

TARGET is a group name, a module path (the group(s) holding its parameters) or
``all``. Parsing is pure text -> frozen Command; applying happens in the trainer
thread only (see :mod:`tuiconsole.engine.groups` for the optimizer surgery).
"""

from __future__ import annotations

import math
import shlex
from dataclasses import dataclass
from typing import Any, ClassVar

from tuiconsole.errors import CommandError

Value = float | bool | tuple[float, ...]

# Longer lines are refused before shlex sees them: its cost grows with the square
# of the length (1 MB: ~20 s), and no real command needs more (a split of a few
# hundred module paths fits).
MAX_LINE_CHARS = 8192

COMMAND_NAMES = (
    "lr",
    "decay",
    "set",
    "split",
    "rebuild",
    "clip",
    "accumulate",
    "pause",
    "resume",
    "step",
    "eval",
    "stop",
    "checkpoint",
    "lrfind",
    "undo",
    "rollback",
    "at",
)


@dataclass(frozen=True)
class CommandResult:
    """What a front-end gets back for every command: never an exception."""

    ok: bool
    message: str
    cmd: str = ""

    def __str__(self) -> str:
        return self.message if self.ok else f"error: {self.message}"


@dataclass(frozen=True)
class Command:
    """Base of all commands. ``text`` is the canonical form that is journaled."""

    name: ClassVar[str] = ""
    # Control commands steer the loop; they do not change the optimizer and are
    # not re-applied on replay (pausing does not change the maths).
    control: ClassVar[bool] = False

    @property
    def text(self) -> str:  # pragma: no cover - every subclass overrides
        raise NotImplementedError


def _fmt(v: Value) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, tuple):
        # a one-element tuple keeps its comma, or it would parse back as a number
        return ",".join(_fmt(x) for x in v) + ("," if len(v) == 1 else "")
    return repr(float(v))  # shortest text that round-trips: replay needs exact values


def _q(name: str) -> str:
    """A name as the journal writes it: quoted only when shlex would split or strip it
    (``split "a'b" x`` is journaled as ``split 'a'"'"'b' x``), so the text parses back."""
    return shlex.quote(name)


def _items_text(items: tuple[tuple[str, Value], ...]) -> str:
    return " ".join(_q(f"{k}={_fmt(v)}") for k, v in items)


def _join(*parts: str) -> str:
    return " ".join(p for p in parts if p)


@dataclass(frozen=True)
class Lr(Command):
    name: ClassVar[str] = "lr"
    target: str
    value: float
    op: str = "="  # "=" absolute, "*" multiply, "/" divide

    @property
    def text(self) -> str:
        prefix = "" if self.op == "=" else self.op
        return f"lr {_q(self.target)} {prefix}{_fmt(self.value)}"


@dataclass(frozen=True)
class Decay(Command):
    name: ClassVar[str] = "decay"
    factor: float
    target: str = "all"

    @property
    def text(self) -> str:
        return f"decay {_fmt(self.factor)} {_q(self.target)}"


@dataclass(frozen=True)
class Set(Command):
    name: ClassVar[str] = "set"
    target: str
    items: tuple[tuple[str, Value], ...]

    @property
    def text(self) -> str:
        return f"set {_q(self.target)} {_items_text(self.items)}"


@dataclass(frozen=True)
class Split(Command):
    name: ClassVar[str] = "split"
    group: str
    modules: tuple[str, ...]
    items: tuple[tuple[str, Value], ...] = ()

    @property
    def text(self) -> str:
        modules = " ".join(map(_q, self.modules))
        return _join("split", _q(self.group), modules, _items_text(self.items))


@dataclass(frozen=True)
class Rebuild(Command):
    name: ClassVar[str] = "rebuild"
    cls: str | None = None
    items: tuple[tuple[str, Value], ...] = ()

    @property
    def text(self) -> str:
        return _join(
            "rebuild", _q(self.cls) if self.cls is not None else "", _items_text(self.items)
        )


@dataclass(frozen=True)
class Clip(Command):
    """Clip the gradients' total norm to ``max_norm`` before each optimizer step (None: off)."""

    name: ClassVar[str] = "clip"
    max_norm: float | None

    @property
    def text(self) -> str:
        return f"clip {'off' if self.max_norm is None else _fmt(self.max_norm)}"


@dataclass(frozen=True)
class Accumulate(Command):
    """Average the gradients of ``n`` micro-batches per optimizer step."""

    name: ClassVar[str] = "accumulate"
    n: int

    @property
    def text(self) -> str:
        return f"accumulate {self.n}"


@dataclass(frozen=True)
class Pause(Command):
    name: ClassVar[str] = "pause"
    control: ClassVar[bool] = True

    @property
    def text(self) -> str:
        return "pause"


@dataclass(frozen=True)
class Resume(Command):
    name: ClassVar[str] = "resume"
    control: ClassVar[bool] = True

    @property
    def text(self) -> str:
        return "resume"


@dataclass(frozen=True)
class Step(Command):
    name: ClassVar[str] = "step"
    control: ClassVar[bool] = True
    n: int = 1

    @property
    def text(self) -> str:
        return f"step {self.n}"


@dataclass(frozen=True)
class Eval(Command):
    name: ClassVar[str] = "eval"

    @property
    def text(self) -> str:
        return "eval"


@dataclass(frozen=True)
class Stop(Command):
    name: ClassVar[str] = "stop"

    @property
    def text(self) -> str:
        return "stop"


@dataclass(frozen=True)
class Checkpoint(Command):
    name: ClassVar[str] = "checkpoint"
    control: ClassVar[bool] = True
    path: str | None = None

    @property
    def text(self) -> str:
        return _join("checkpoint", _q(self.path) if self.path is not None else "")


@dataclass(frozen=True)
class LrFind(Command):
    """The lr range test (engine/lrfind.py), or ``lrfind cancel`` of the one running.

    A control command: it leaves the run as it found it, so a replay skips it.
    The text is always written whole (defaults included), so the journal says
    what was swept."""

    name: ClassVar[str] = "lrfind"
    control: ClassVar[bool] = True
    target: str = "all"
    lr_from: float = 1e-7
    lr_to: float = 10.0
    steps: int = 100
    cancel: bool = False

    @property
    def text(self) -> str:
        if self.cancel:
            return "lrfind cancel"
        return (
            f"lrfind {_q(self.target)} from={_fmt(self.lr_from)} to={_fmt(self.lr_to)} "
            f"steps={self.steps}"
        )


LRFIND_MAX_STEPS = 10_000


@dataclass(frozen=True)
class UndoLast(Command):
    """Revert the last optimizer change that can still be reverted (engine/history.py).
    Not ops.Undo: that one takes back commands whose next optimizer.step() failed."""

    name: ClassVar[str] = "undo"

    @property
    def text(self) -> str:
        return "undo"


@dataclass(frozen=True)
class Rollback(Command):
    """Load a checkpoint into the paused run. ``digest``: the checkpoint's sha256 as the
    journal records it (the run resolves ``path`` and ``digest`` before applying it, so a
    replay loads the very same file, or refuses one that changed)."""

    name: ClassVar[str] = "rollback"
    path: str | None = None
    digest: str | None = None

    @property
    def text(self) -> str:
        return _join(
            "rollback",
            _q(self.path) if self.path is not None else "",
            f"digest={self.digest}" if self.digest else "",
        )


@dataclass(frozen=True)
class At(Command):
    """Apply ``command`` at the boundary where the run's step reaches ``step``."""

    name: ClassVar[str] = "at"
    step: int
    command: Command

    @property
    def text(self) -> str:
        return f"at {self.step} {self.command.text}"


@dataclass(frozen=True)
class AtCancel(Command):
    name: ClassVar[str] = "at"
    id: int

    @property
    def text(self) -> str:
        return f"at cancel {self.id}"


# Commands `at` cannot schedule: what they act on is only known when they are typed.
NOT_SCHEDULABLE = ("at", "undo", "rollback", "lrfind")

USAGE = {
    "lr": "lr TARGET VALUE   (VALUE: 1e-3, *0.5 or /10)",
    "decay": "decay FACTOR [TARGET]",
    "set": "set TARGET KEY=VALUE...",
    "split": "split NAME MODULE... [lr=V] [KEY=V...]",
    "rebuild": "rebuild [CLASS] [KEY=VALUE...]",
    "clip": "clip MAX_NORM | clip off",
    "accumulate": "accumulate N   (micro-batches per optimizer step)",
    "pause": "pause",
    "resume": "resume",
    "step": "step [N]",
    "eval": "eval",
    "stop": "stop",
    "checkpoint": "checkpoint [PATH]",
    "lrfind": "lrfind [TARGET] [from=1e-7] [to=10] [steps=100] | lrfind cancel",
    "undo": "undo   (revert the last optimizer change)",
    "rollback": "rollback [CHECKPOINT]   (while paused)",
    "at": "at STEP COMMAND | at cancel ID",
}


def parse_number(text: str, what: str = "value") -> float:
    """Parse a finite float or raise a CommandError naming ``what``."""
    try:
        v = float(text)
    except ValueError:
        raise CommandError(f"{what} must be a number, got {text!r}") from None
    if not math.isfinite(v):
        raise CommandError(f"{what} must be finite, got {text!r}")
    return v


def parse_positive(text: str, what: str) -> float:
    v = parse_number(text, what)
    if v <= 0:
        raise CommandError(f"{what} must be > 0, got {text!r}")
    return v


def parse_count(text: str, what: str, unit: str = "") -> int:
    """A whole number >= 1 (a step count, micro-batches), or a CommandError naming ``what``."""
    try:
        n = int(text)
    except ValueError:
        raise CommandError(f"{what} must be a whole number, got {text!r}") from None
    if n < 1:
        raise CommandError(f"{what} must be >= 1{f' ({unit})' if unit else ''}, got {n}")
    return n


def parse_value(key: str, text: str) -> Value:
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    if "," in text:
        values = tuple(parse_number(p, key) for p in text.strip("()").split(",") if p)
        if not values:
            raise CommandError(f"{key} needs at least one number, got {text!r}")
        return values
    return parse_number(text, key)


def _name(text: str, what: str) -> str:
    """A name (target, group, module, class, key, path) as the grammar can journal it.

    Any printable text round-trips through the journal (it is quoted there); an
    empty name would vanish from the text and control characters would reach
    terminals and logs, so both are refused.
    """
    if not text:
        raise CommandError(f"{what} must not be empty")
    if not text.isprintable():
        raise CommandError(f"{what} must be printable text, got {text!r}")
    return text


def _split_items(tokens: list[str]) -> tuple[list[str], tuple[tuple[str, Value], ...]]:
    """Split trailing KEY=VALUE tokens from positional ones (KEY=V must come last)."""
    positional: list[str] = []
    items: list[tuple[str, Value]] = []
    for tok in tokens:
        if "=" in tok:
            key, _, val = tok.partition("=")
            if not key or not val:
                raise CommandError(f"expected KEY=VALUE, got {tok!r}")
            _name(key, "hyper-parameter name")
            if any(k == key for k, _ in items):
                raise CommandError(f"{key!r} given twice")
            items.append((key, parse_value(key, val)))
        elif items:
            raise CommandError(f"KEY=VALUE items must come last, got {tok!r} after them")
        else:
            positional.append(tok)
    return positional, tuple(items)


def _lr_value(text: str) -> tuple[float, str]:
    if text[:1] in ("*", "/"):
        return parse_positive(text[1:], "factor"), text[0]
    return parse_positive(text, "lr"), "="


def parse(text: str) -> Command:
    """Parse one command line. Raises CommandError with a one-line message."""
    if len(text) > MAX_LINE_CHARS:
        raise CommandError(
            f"command line too long ({len(text):,} characters; the limit is {MAX_LINE_CHARS:,})"
        )
    line = text.strip()
    if line.startswith(":"):
        line = line[1:].strip()
    try:
        tokens = shlex.split(line)
    except ValueError as exc:
        raise CommandError(f"cannot parse {text!r}: {exc}") from None
    if not tokens:
        raise CommandError("empty command")
    name, args = tokens[0].lower(), tokens[1:]
    if name not in USAGE:
        raise CommandError(f"unknown command {tokens[0]!r} (commands: {', '.join(COMMAND_NAMES)})")
    try:
        cmd = _parse_args(name, args)
    except _Usage:
        raise CommandError(f"usage: {USAGE[name]}") from None
    if len(cmd.text) > MAX_LINE_CHARS:  # quoting lengthens it: the journal must replay it
        raise CommandError(
            f"command too long once written to the journal ({len(cmd.text):,} characters; "
            f"the limit is {MAX_LINE_CHARS:,})"
        )
    return cmd


class _Usage(Exception):
    pass


def _need(cond: bool) -> None:
    if not cond:
        raise _Usage


def _parse_args(name: str, args: list[str]) -> Command:
    if name == "lr":
        _need(len(args) == 2)
        value, op = _lr_value(args[1])
        return Lr(_name(args[0], "target"), value, op)
    if name == "decay":
        _need(1 <= len(args) <= 2)
        target = _name(args[1], "target") if len(args) > 1 else "all"
        return Decay(parse_positive(args[0], "decay factor"), target)
    if name == "set":
        pos, items = _split_items(args)
        _need(len(pos) == 1 and bool(items))
        return Set(_name(pos[0], "target"), items)
    if name == "split":
        pos, items = _split_items(args)
        _need(len(pos) >= 2)
        modules = tuple(_name(m, "module") for m in pos[1:])
        return Split(_name(pos[0], "group name"), modules, items)
    if name == "rebuild":
        pos, items = _split_items(args)
        _need(len(pos) <= 1)
        return Rebuild(_name(pos[0], "optimizer class") if pos else None, items)
    if name == "clip":
        _need(len(args) == 1)
        if args[0].lower() == "off":
            return Clip(None)
        return Clip(parse_positive(args[0], "max norm"))
    if name == "accumulate":
        _need(len(args) == 1)
        return Accumulate(parse_count(args[0], "accumulate", "micro-batches per step"))
    if name == "step":
        _need(len(args) <= 1)
        n = 1
        if args:
            n = parse_count(args[0], "step count")
        return Step(n)
    if name == "rollback":
        return _parse_rollback(args)
    if name == "at":
        return _parse_at(args)
    if name == "undo":
        _need(not args)
        return UndoLast()
    if name == "checkpoint":
        _need(len(args) <= 1)
        return Checkpoint(_name(args[0], "checkpoint path") if args else None)
    if name == "lrfind":
        return _lrfind(args)
    _need(not args)
    simple: dict[str, type[Command]] = {
        "pause": Pause,
        "resume": Resume,
        "eval": Eval,
        "stop": Stop,
    }
    return simple[name]()


def _lrfind(args: list[str]) -> LrFind:
    """``lrfind [TARGET] [from=V] [to=V] [steps=N]`` or ``lrfind cancel``: every value
    checked here (0 < from < to, both finite; 2 <= steps <= 10000)."""
    if [a.lower() for a in args] == ["cancel"]:
        return LrFind(cancel=True)
    target = "all"
    values: dict[str, str] = {}
    for i, tok in enumerate(args):
        if "=" not in tok:
            _need(i == 0)  # TARGET first, then KEY=VALUE items
            target = _name(tok, "target")
            continue
        key, _, val = tok.partition("=")
        key = key.lower()
        if key not in ("from", "to", "steps"):
            raise CommandError(f"lrfind takes from=, to= and steps=, got {tok!r}")
        if key in values:
            raise CommandError(f"{key!r} given twice")
        values[key] = val
    lr_from = parse_positive(values.get("from", "1e-7"), "from")
    lr_to = parse_positive(values.get("to", "10"), "to")
    if lr_from >= lr_to:
        raise CommandError(f"lrfind: from ({lr_from:g}) must be below to ({lr_to:g})")
    steps = parse_count(values.get("steps", "100"), "steps")
    if not 2 <= steps <= LRFIND_MAX_STEPS:
        raise CommandError(f"lrfind: steps must be 2..{LRFIND_MAX_STEPS:,}, got {steps}")
    return LrFind(target, lr_from, lr_to, steps)


def _parse_rollback(args: list[str]) -> Rollback:
    digest = None
    if args and args[-1].startswith("digest="):
        digest = args.pop()[len("digest=") :].lower()
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise CommandError("digest must be 64 hex digits (a sha256)")
    _need(len(args) <= 1)
    return Rollback(_name(args[0], "checkpoint path") if args else None, digest)


def _parse_at(args: list[str]) -> Command:
    _need(len(args) >= 2)
    if args[0].lower() == "cancel":
        _need(len(args) == 2)
        return AtCancel(parse_count(args[1], "at cancel ID"))
    try:
        step = int(args[0])
    except ValueError:
        raise CommandError(f"at: STEP must be a whole number, got {args[0]!r}") from None
    if step < 1:
        raise CommandError(f"at: STEP must be >= 1, got {step}")
    try:
        inner = parse(shlex.join(args[1:]))
    except CommandError as exc:
        raise CommandError(f"at {step}: {exc}") from None
    if inner.name in NOT_SCHEDULABLE:  # the parsed name: `:undo` is undo too
        raise CommandError(f"at: {inner.name!r} cannot be scheduled")
    return At(step, inner)


def coerce(command: str | Command) -> Command:
    return command if isinstance(command, Command) else parse(command)


def jsonable(v: Any) -> Any:
    """Group hyper-parameters as JSON values (tuples -> lists, tensors -> floats)."""
    if isinstance(v, bool | int | str) or v is None:
        return v
    if isinstance(v, float):
        return v if math.isfinite(v) else str(v)
    if isinstance(v, tuple | list):
        return [jsonable(x) for x in v]
    try:
        return float(v)
    except (TypeError, ValueError):
        return str(v)
