"""The header: what the run is doing right now, its optimizer, and where it runs.

Two lines, or three where the screen is tall enough (HEADER_TALL rows) and the
optimizer and device parts do not fit whole on one line, each fitted to the width by :func:`fit_pieces`: too narrow, a line
drops its least important parts whole (tokens/s before samples/s before steps/s ...),
so a number is never cut. Then the error, the lost connection and the NaN, if any,
and the lr range test running and the ``at`` commands pending.

- run: script, state, the attach badge, epoch, step, progress bar with ETA, steps/s,
  samples/s and tokens/s (only while it trains: a stopped run has no live rate), elapsed
- optimizer: class, scheduler (class, its step, the next lr), amp, clipping,
  accumulation, compile
- device: device and ranks; on CUDA memory and utilisation; the last eval; the run dir
"""

from __future__ import annotations

from dataclasses import dataclass

from rich.text import Text
from textual.widgets import Static

from tuiconsole.engine.snapshot import (
    RunState,
    RunStatus,
    SchedulerView,
    Snapshot,
    StepView,
    Telemetry,
)
from tuiconsole.ui.fmt import (
    Piece,
    ellipsize,
    fit_pieces,
    fmt_bytes,
    fmt_elapsed,
    fmt_float,
    fmt_lr,
    fmt_si,
)
from tuiconsole.ui.theme import state_style

HEADER_TALL = 30  # screens at least this tall get the three-line header
BAR_WIDE, BAR_NARROW = 20, 10
LIVE_STATES = (RunState.RUNNING, RunState.STEPPING)  # states with a live rate
CLOCK_KEYS = frozenset({"elapsed", "eta"})  # pieces that move with the wall clock only


@dataclass(frozen=True)
class AttachBadge:
    """What an attached console shows about its connection: ``ATTACHED <id> · N clients``.

    ``clients``: consoles attached to the run (None: not known). ``role``: this
    console's part, e.g. "watching" or "controlling" ("": not told)."""

    run_id: str
    clients: int | None = None
    role: str = ""


@dataclass(frozen=True)
class HeaderLines:
    lines: tuple[Text, ...]
    clock_free: tuple[str, ...]  # each line's plain text without the clock pieces


def progress_fraction(status: RunStatus, telemetry: Telemetry) -> float | None:
    """How far the run is: step/--max-steps; by epochs, from the ETA when measured."""
    if status.state == RunState.FINISHED and (status.max_steps or status.epochs):
        return 1.0
    if status.max_steps:
        return min(1.0, status.step / status.max_steps)
    if not status.epochs:
        return None
    eta, rate = telemetry.eta, status.steps_per_sec
    if eta is not None and rate > 0 and status.step > 0:
        return min(1.0, status.step / (status.step + eta * rate))
    return min(1.0, max(0, status.epoch - 1) / status.epochs)


def _bar(fraction: float, width: int) -> Text:
    done = round(fraction * width)
    bar = Text()
    bar.append("━" * done, style="bold #5fafff")
    bar.append("━" * (width - done), style="#4e4e4e")
    return bar


def run_pieces(status: RunStatus, telemetry: Telemetry, badge: AttachBadge | None) -> list[Piece]:
    script = status.script or "run"
    pieces = [
        Piece(
            (Text(f" {script} ", style="bold"), Text(f" {ellipsize(script, 16)} ", style="bold")),
            (44,),
            name=True,
            min_name=5,
        ),
        Piece.fixed(Text(f" {status.state.value} ", style=state_style(status.state))),
    ]
    if badge is not None:
        pieces.append(badge_piece(badge))
    if status.epoch:  # epoch 0: a loop of its own, which counts its epochs itself
        epoch = f"{status.epoch}/{status.epochs}" if status.epochs else str(status.epoch)
        pieces.append(Piece.optional(f"  epoch {epoch}", 38))
    step = f"{status.step}/{status.max_steps}" if status.max_steps else str(status.step)
    pieces.append(Piece.fixed(f"  step {step}"))
    fraction = progress_fraction(status, telemetry)
    if fraction is not None:
        pct = Text(f" {int(fraction * 100)}%")
        wide, narrow = Text("  "), Text("  ")
        wide.append_text(_bar(fraction, BAR_WIDE))
        wide.append_text(pct)
        narrow.append_text(_bar(fraction, BAR_NARROW))
        narrow.append_text(pct)
        pieces.append(Piece((wide, narrow, Text(" ") + pct, Text()), (25, 35, 60)))
    live = status.state in LIVE_STATES
    if live and telemetry.eta is not None:
        pieces.append(Piece.optional(f"  ETA {fmt_elapsed(telemetry.eta)}", 42, key="eta"))
    if live:
        pieces.append(
            Piece.optional(Text(f"  {status.steps_per_sec:.1f} steps/s", style="bold"), 50)
        )
        if telemetry.samples_per_sec is not None:
            pieces.append(Piece.optional(f"  {fmt_si(telemetry.samples_per_sec)} samples/s", 20))
        if telemetry.tokens_per_sec is not None:
            pieces.append(Piece.optional(f"  {fmt_si(telemetry.tokens_per_sec)} tok/s", 10))
    pieces.append(Piece.optional(f"  {fmt_elapsed(status.elapsed)}", 46, key="elapsed"))
    return pieces


def badge_piece(badge: AttachBadge) -> Piece:
    style = "bold #000000 on #5fd7d7"
    base = f"ATTACHED {badge.run_id}" if badge.run_id else "ATTACHED"
    full = base
    if badge.clients is not None:
        full += f" · {badge.clients} client{'s' if badge.clients != 1 else ''}"
    if badge.role:
        full += f" · {badge.role}"
    with_role = f"{base} · {badge.role}" if badge.role else base
    options = [Text("  ") + Text(f" {t} ", style=style) for t in (full, with_role, "ATTACHED")]
    return Piece(tuple(options), (47, 65))


def scheduler_text(sched: SchedulerView, full: bool) -> str:
    name = sched.cls
    if full and sched.chain:
        name += f"[{'→'.join(sched.chain)}]"
    text = f"{name} step {sched.step}"
    if full:
        text += f" per {sched.interval}"
        nexts = [v for v in sched.next_lrs if v is not None]
        if nexts:
            distinct = list(dict.fromkeys(fmt_lr(v) for v in nexts))
            if len(distinct) <= 3:
                text += f" · next lr {','.join(distinct)}"
            else:
                text += " · next lr per group (enter on a group)"
    return text


def _detailed(short: str, more: str, ranks: tuple[int, int]) -> Piece:
    """``short`` with ``more`` after it where there is room, then ``short``, then nothing."""
    return Piece((Text(short + more), Text(short), Text()), ranks)


def optimizer_pieces(
    optimizer: str, sched: SchedulerView | None, sv: StepView | None
) -> list[Piece]:
    pieces = [Piece.fixed(Text(f" {optimizer or 'optimizer ?'}", style="bold"))]
    if sched is not None:
        pieces.append(
            Piece(
                (
                    Text(f"  {scheduler_text(sched, full=True)}"),
                    Text(f"  {scheduler_text(sched, full=False)}"),
                    Text(f"  {sched.cls}"),
                    Text(),
                ),
                (22, 42, 52),
            )
        )
    if sv is None:
        return pieces
    if sv.amp:
        more = f" scale {sv.scale:g}" if sv.scale is not None else ""
        if sv.scaler_skipped:
            more += f" ({sv.scaler_skipped} skipped)"
        pieces.append(_detailed(f"  amp {sv.amp}", more, (12, 36)))
    if sv.grad_clip is not None:
        more = f" norm {fmt_float(sv.grad_norm, 3)}" if sv.grad_norm is not None else ""
        if sv.clip_steps:
            more += f" ({sv.clipped}/{sv.clip_steps} clipped)"
        pieces.append(_detailed(f"  clip {fmt_lr(sv.grad_clip)}", more, (12, 34)))
    if sv.accumulate > 1:
        pieces.append(Piece.optional(f"  accumulate {sv.accumulate}", 32))
    if sv.compile:
        short = "compile failed" if sv.compile.startswith("failed") else sv.compile
        full = f"compile {sv.compile}" if sv.compile.startswith("failed") else sv.compile
        pieces.append(Piece((Text(f"  {full}"), Text(f"  {short}"), Text()), (8, 30)))
    return pieces


def device_pieces(snap: Snapshot, status: RunStatus, lead: str = "  ") -> list[Piece]:
    t = snap.telemetry
    ranks = f" ×{status.world_size} ranks" if status.world_size > 1 else ""
    pieces = [Piece.fixed(f"{lead}{status.device}{ranks}")]
    if t.gpu_memory_used is not None and t.gpu_memory_total:
        mem = f"  mem {fmt_bytes(t.gpu_memory_used)}/{fmt_bytes(t.gpu_memory_total)}"
        pieces.append(Piece.optional(mem, 39))
    elif t.memory_allocated is not None:
        mem = f"  mem {fmt_bytes(t.memory_allocated)}"
        if t.memory_peak is not None:
            mem += f" (peak {fmt_bytes(t.memory_peak)})"
        pieces.append(Piece.optional(mem, 39))
    if t.gpu_utilization is not None:
        pieces.append(Piece.optional(f"  util {t.gpu_utilization:.0f}%", 37))
    if t.gpu_power is not None or t.gpu_temperature is not None:
        extra = "  " + " ".join(
            s
            for s in (
                f"{t.gpu_power:.0f} W" if t.gpu_power is not None else "",
                f"{t.gpu_temperature:.0f}°C" if t.gpu_temperature is not None else "",
            )
            if s
        )
        pieces.append(Piece.optional(extra, 7))
    if t.gpu_note:
        pieces.append(Piece.optional(Text(f"  ({t.gpu_note})", style="dim"), 3))
    ev = status.last_eval
    if ev is None:
        pieces.append(Piece.optional(Text("  eval: none yet (v)", style="dim"), 6))
    else:
        more = f"  acc {ev.accuracy * 100:.1f}%" if ev.accuracy is not None else ""
        pieces.append(_detailed(f"  eval @{ev.step}: loss {fmt_float(ev.loss)}", more, (24, 31)))
    if snap.run_dir:
        pieces.append(Piece.optional(Text(f"  {snap.run_dir}", style="dim"), 4))
    return pieces


def _line(pieces: list[Piece], width: int) -> tuple[Text, str]:
    parts = fit_pieces(pieces, width)
    line = Text(no_wrap=True, overflow="crop")
    clock_free = []
    for piece, part in zip(pieces, parts, strict=True):
        line.append_text(part)
        clock_free.append("" if piece.key in CLOCK_KEYS else part.plain)
    return line, "".join(clock_free)


def render_header(
    snap: Snapshot,
    width: int,
    *,
    status: RunStatus | None = None,
    lost: str | None = None,
    badge: AttachBadge | None = None,
    tall: bool = True,
) -> HeaderLines:
    """The header's lines for ``width`` cells (``status``: the snapshot's, if not given)."""
    status = status or snap.status
    width = max(1, width)
    rows = [run_pieces(status, snap.telemetry, badge)]
    opt = optimizer_pieces(snap.optimizer, snap.scheduler, snap.step_view)
    dev = device_pieces(snap, status)
    # One line for both when they fit whole (or the screen is short), else two.
    whole = sum(p.options[0].cell_len for p in opt + dev) <= width
    rows += [opt + dev] if whole or not tall else [opt, device_pieces(snap, status, lead=" ")]
    lines, clock_free = [], []
    for pieces in rows:
        line, plain = _line(pieces, width)
        lines.append(line)
        clock_free.append(plain)
    for text in _alert_lines(status, lost) + tuning_lines(snap, width):
        lines.append(text)
        clock_free.append(text.plain)
    return HeaderLines(tuple(lines), tuple(clock_free))


def tuning_lines(snap: Snapshot, width: int) -> list[Text]:
    """A running lr range test's progress, and the ``at`` commands pending (each whole,
    soonest first, as many as fit; then how many more)."""
    out = []
    find = snap.lrfind
    if find is not None and find.state == "running":
        out.append(
            Text(
                f" lr range test on {ellipsize(find.target, 24)}: {find.taken}/{find.steps} "
                f"steps, lr {fmt_lr(find.lrs[-1]) if find.lrs else fmt_lr(find.lr_from)} "
                "(:lrfind cancel puts the run back now)",
                style="bold yellow",
            )
        )
    if snap.pending:
        line = Text(" pending:", style="bold")
        items = [f" #{p.id} at {p.step}: {p.text}" for p in snap.pending]
        tail = "  (:at cancel ID)"
        for i, item in enumerate(items):
            more = len(items) - i - 1
            rest = f" +{more} more" if more else ""
            if line.cell_len + len(item) + len(rest or tail) > width:
                if not i:  # not even the first whole: how many, and when the first is due
                    line.append(
                        f" {len(items)} command(s), the first at step {snap.pending[0].step}"
                    )
                else:
                    line.append(f" +{len(items) - i} more", style="dim")
                break
            line.append(item)
        else:
            if line.cell_len + len(tail) <= width:
                line.append(tail, style="dim")
        out.append(line)
    return out


def _alert_lines(status: RunStatus, lost: str | None) -> list[Text]:
    out = []
    if status.error is not None:
        err = status.error
        out.append(Text(f" {err.type} at step {err.step}: {err.message}", style="bold red"))
    if lost:
        out.append(Text(f" DISCONNECTED: {lost} (the view is frozen; q leaves)", style="bold red"))
    nan = status.nan
    if nan is not None and status.state == RunState.NAN_PAUSED:
        out.append(
            Text(
                f" {nan} — lower the lr (e/d), then space resumes; or :rollback to the "
                "checkpoint before it",
                style="bold red",
            )
        )
    return out


class StatusBar(Static):
    """Re-renders only when what it shows changed (the clock, or anything else)."""

    DEFAULT_CSS = """
    StatusBar {
        height: auto;
        background: $panel;
    }
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__("", id=id)
        self._args: tuple[Snapshot, RunStatus, str | None, AttachBadge | None] | None = None
        self._shown: HeaderLines | None = None
        self.text = Text()

    def _width(self) -> int:
        return self.size.width or (self.app.size.width if self.is_attached else 0) or 120

    def _tall(self) -> bool:
        return not self.is_attached or self.app.size.height >= HEADER_TALL

    def show(
        self,
        snap: Snapshot,
        *,
        status: RunStatus | None = None,
        lost: str | None = None,
        badge: AttachBadge | None = None,
    ) -> bool:
        """Update from a snapshot. Returns True if something other than the clock (elapsed,
        ETA) changed on screen (the app's idle detector)."""
        status = status or snap.status
        self._args = (snap, status, lost, badge)
        return self._redraw()

    def on_resize(self) -> None:
        self._redraw()

    def _redraw(self) -> bool:
        if self._args is None:
            return False
        snap, status, lost, badge = self._args
        header = render_header(
            snap, self._width(), status=status, lost=lost, badge=badge, tall=self._tall()
        )
        old = self._shown
        if old is not None and [t.plain for t in old.lines] == [t.plain for t in header.lines]:
            return False
        self._shown = header
        self.text = Text("\n").join(header.lines)
        self.update(self.text, layout=old is None or len(old.lines) != len(header.lines))
        return old is None or old.clock_free != header.clock_free
