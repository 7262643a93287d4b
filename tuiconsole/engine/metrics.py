"""Loss kept on the device between reads, and bounded history.

The training loop only appends the detached loss tensor (no host sync), or the
float when the loss was already read on the host (CPU, checked every step). A
flush turns the pending tensors into floats with ONE transfer, when a snapshot
or a log line is due. History is a fixed number of buckets whose width doubles
when full, so memory and per-frame cost stay flat over millions of steps.
"""

from __future__ import annotations

import math
import time
from collections import deque

import torch

from tuiconsole.engine.snapshot import Series


class DownsampledSeries:
    """At most ``capacity`` bucket means covering the whole run.

    When full, adjacent buckets merge pairwise and the bucket width doubles:
    O(capacity) memory for any length, O(1) amortised per value.
    """

    def __init__(self, capacity: int = 1024) -> None:
        if capacity < 2 or capacity % 2:
            raise ValueError("capacity must be an even number >= 2")
        self.capacity = capacity
        self.width = 1
        self.values: list[float] = []
        self.steps: list[int] = []  # last step in each bucket
        self._acc = 0.0
        self._n = 0
        self.count = 0

    def add(self, step: int, value: float) -> None:
        self.count += 1
        self._acc += value
        self._n += 1
        if self._n < self.width:
            return
        self.values.append(self._acc / self._n)
        self.steps.append(step)
        self._acc, self._n = 0.0, 0
        if len(self.values) >= self.capacity:
            v = self.values
            self.values = [(v[i] + v[i + 1]) / 2 for i in range(0, len(v), 2)]
            self.steps = self.steps[1::2]
            self.width *= 2

    def series(self) -> Series:
        return Series(tuple(self.steps), tuple(self.values))

    def rewind(self, step: int) -> None:
        """Drop the buckets after ``step`` (and the one being filled)."""
        n = sum(1 for s in self.steps if s <= step)
        del self.steps[n:], self.values[n:]
        self._acc, self._n = 0.0, 0


class LossTracker:
    """Per-step losses: pending on the device, then recent window + history."""

    def __init__(self, recent: int = 240, capacity: int = 1024, max_pending: int = 4096) -> None:
        self._pending: list[torch.Tensor | float] = []
        self._first_pending_step = 0
        self.max_pending = max_pending
        self.recent: deque[tuple[int, float]] = deque(maxlen=recent)
        self.history = DownsampledSeries(capacity)
        self.min: float | None = None
        self.last: float | None = None
        self.last_step = 0

    def record(self, step: int, loss: torch.Tensor | float) -> int:
        """Keep the loss on its device (no host sync), or a float already read on the host.

        Returns how many are pending.
        """
        if not self._pending:
            self._first_pending_step = step
        if isinstance(loss, torch.Tensor):
            loss = loss.detach()
            if loss.dim():
                loss = loss.reshape(())
        self._pending.append(loss)
        return len(self._pending)

    @property
    def pending(self) -> int:
        return len(self._pending)

    def flush(self) -> list[tuple[int, float]]:
        """Read all pending losses: the tensors among them with one device->host transfer."""
        pending = self._pending
        if not pending:
            return []
        tensors = [p for p in pending if isinstance(p, torch.Tensor)]
        if tensors:
            read = iter(torch.stack(tensors).float().tolist())
            values = [next(read) if isinstance(p, torch.Tensor) else p for p in pending]
        else:
            values = pending
        start = self._first_pending_step
        self._pending = []
        out = [(start + i, v) for i, v in enumerate(values)]
        for step, v in out:
            self.recent.append((step, v))
            self.history.add(step, v)
            if math.isfinite(v) and (self.min is None or v < self.min):
                self.min = v
        self.last = out[-1][1]
        self.last_step = out[-1][0]
        return out

    def rewind(self, step: int) -> None:
        """A rollback to ``step`` (losses flushed first): the losses after it are of a
        future that is gone; the plots show the run's present one (the minimum stays)."""
        self._pending = []
        kept = [(s, v) for s, v in self.recent if s <= step]
        self.recent.clear()
        self.recent.extend(kept)
        self.history.rewind(step)
        if kept:
            self.last_step, self.last = kept[-1]
        elif self.history.values:
            self.last_step, self.last = self.history.steps[-1], self.history.values[-1]
        else:
            self.last_step, self.last = 0, None

    def recent_series(self) -> Series:
        steps, values = zip(*self.recent, strict=True) if self.recent else ((), ())
        return Series(tuple(steps), tuple(values))


class LrHistory:
    """A short lr trace per group name: one point each ``period`` seconds.

    Points are taken when a snapshot is built, but at most one per ``period``, so
    the span the sparkline covers (``length`` x ``period``, two minutes) does not
    depend on how often a console polls. The current lr is always shown as the
    last point, so an edit is visible at once.
    """

    def __init__(self, length: int = 120, period: float = 1.0) -> None:
        self.length = length
        self.period = period
        self._by_name: dict[str, deque[float]] = {}
        self._sampled_at = -math.inf

    def sample(
        self, names_lrs: list[tuple[str, float]], now: float | None = None
    ) -> list[tuple[float, ...]]:
        now = time.monotonic() if now is None else now
        due = now - self._sampled_at >= self.period
        if due:
            self._sampled_at = now
        out = []
        for name, lr in names_lrs:
            d = self._by_name.get(name)
            if d is None:  # a new group (a split): its trace starts now
                d = self._by_name[name] = deque(maxlen=self.length)
            if due or not d:
                d.append(lr)
            out.append((*d, lr) if d[-1] != lr else tuple(d))
        return out
