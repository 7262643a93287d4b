"""What the loop shows: the run log, and the parts of a snapshot that cost to build.

The loop thread builds every snapshot (engine/snapshot.py holds the types).
Group views, the module table and the scheduler's next lrs are cached here
until something they show can change, so a snapshot of a big model costs little
while it trains.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any

from tuiconsole.engine import groups as G
from tuiconsole.engine.metrics import LrHistory
from tuiconsole.engine.ops import Optimization
from tuiconsole.engine.snapshot import GroupView, LogEntry, ModuleNode, SchedulerView

LOG_KEEP = 500
# A log entry's text is cut to this: every new client gets the whole log, and a few
# hundred entries of command-line garbage must not make that frame too big to send.
LOG_TEXT_CHARS = 2000


class RunLog:
    """The last LOG_KEEP entries of the run's log. Appended to from the loop and from
    submit() (parse errors, in the caller's thread): sequence numbers stay unique."""

    def __init__(self) -> None:
        self._entries: deque[LogEntry] = deque(maxlen=LOG_KEEP)
        self._lock = threading.Lock()
        self._seq = 0

    def append(self, step: int, kind: str, text: str, ok: bool = True, source: str = "") -> None:
        if len(text) > LOG_TEXT_CHARS:
            text = f"{text[: LOG_TEXT_CHARS - 40]}… ({len(text):,} characters, cut)"
        with self._lock:
            self._seq += 1
            self._entries.append(LogEntry(self._seq, step, time.time(), kind, text, ok, source))

    def tail(self) -> tuple[LogEntry, ...]:
        with self._lock:
            return tuple(self._entries)


class Views:
    """Cached pieces of a snapshot.

    ``structure_version`` goes up when the groups change shape (split, rebuild,
    undo, resume): the module table is rebuilt. ``state_version`` goes up when
    the optimizer state may have grown: its sizes are recounted.
    """

    def __init__(self) -> None:
        self.structure_version = 0
        self.state_version = 0
        self.seq = 0
        self._lr_history = LrHistory()
        self._modules: tuple[int, tuple[ModuleNode, ...]] | None = None
        self._sizes: tuple[tuple[int, ...], list[tuple[int, int]]] | None = None
        self._sched: tuple[tuple[Any, ...], SchedulerView | None] | None = None
        self._rate: deque[tuple[float, int]] = deque(maxlen=20)

    def next_seq(self) -> int:
        self.seq += 1
        return self.seq

    def rewound(self) -> None:
        """The step went back (a rollback): the rate starts over."""
        self._rate.clear()

    def steps_per_sec(self, now: float, step: int) -> float:
        """Over about the last 3 seconds of snapshots."""
        self._rate.append((now, step))
        while len(self._rate) > 2 and now - self._rate[0][0] > 3.0:
            self._rate.popleft()
        (t0, s0), (t1, s1) = self._rate[0], self._rate[-1]
        return (s1 - s0) / (t1 - t0) if t1 > t0 else 0.0

    def groups(self, o: Optimization) -> tuple[GroupView, ...]:
        opt = o.optimizer
        lr_hist = self._lr_history.sample(
            [(str(g.get("name")), float(g["lr"])) for g in opt.param_groups]
        )
        return G.group_views(opt, lr_hist, o.state_reset, self._state_sizes(o))

    def modules(self, o: Optimization) -> tuple[ModuleNode, ...]:
        if self._modules is None or self._modules[0] != self.structure_version:
            self._modules = (self.structure_version, G.module_table(o.model, o.optimizer))
        return self._modules[1]

    def _state_sizes(self, o: Optimization) -> list[tuple[int, int]]:
        """Per group, the optimizer state it holds; recounted only when the state grew."""
        opt = o.optimizer
        key = (id(opt), self.structure_version, len(opt.state), self.state_version)
        if self._sizes is None or self._sizes[0] != key:
            self._sizes = (key, G.state_sizes(opt))
        return self._sizes[1]

    def scheduler(
        self, o: Optimization, step: int, epoch: int, interval: str
    ) -> SchedulerView | None:
        """The scheduler and the lrs its next step sets; recomputed when those can change."""
        if o.scheduler is None:
            return None
        opt = o.optimizer
        key = (
            step,
            epoch,
            self.structure_version,
            tuple(float(g["lr"]) for g in opt.param_groups),
        )
        if self._sched is None or self._sched[0] != key:
            self._sched = (key, o.scheduler_view(interval))
        return self._sched[1]
