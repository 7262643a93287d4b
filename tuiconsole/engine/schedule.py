"""``at STEP COMMAND``: commands queued for a later step.

A scheduled command is checked whole when it is queued (parsed, and dry-checked
against the groups as they are: its target resolves, its values are accepted),
then applied at the first step boundary where the run's step has reached STEP
(after STEP steps, as a command journaled at step STEP), before the commands
queued there, and journaled then with source ``at``. The ``at`` itself is
journaled as a command: a replay queues the same (and skips the ``at``-sourced
records, which its own queue applies again). The queue is in every snapshot
(``Snapshot.pending``) and in every checkpoint: a resume or a rollback queues
what was pending when that checkpoint was written.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tuiconsole.engine import commands as C
from tuiconsole.engine import groups as G
from tuiconsole.engine.ops import Optimization
from tuiconsole.engine.snapshot import PendingCommand
from tuiconsole.errors import CommandError

MAX_PENDING = 1000


@dataclass(frozen=True)
class Scheduled:
    id: int
    step: int
    cmd: C.Command
    source: str = ""


def dry_check(cmd: C.Command, o: Optimization) -> None:
    """Refuse now what would be refused against the groups as they are (CommandError).

    Nothing is changed: lr and set values are planned, not written; a split planned."""
    opt, model, sched = o.optimizer, o.model, o.scheduler
    if getattr(o, "parts", None) is not None:  # several optimizers: the target is checked
        if isinstance(cmd, C.Lr | C.Decay | C.Set):
            G.resolve_target(cmd.target, model, opt)
        return
    if isinstance(cmd, C.Lr | C.Decay):
        indices = G.resolve_target(cmd.target, model, opt)
        value, op = (cmd.value, cmd.op) if isinstance(cmd, C.Lr) else (cmd.factor, "*")
        lrs = {}
        for i in indices:
            old = float(opt.param_groups[i]["lr"])
            lrs[i] = value if op == "=" else old * value if op == "*" else old / value
        G.plan_lrs(opt, sched, lrs)
    elif isinstance(cmd, C.Set):
        G.plan_hparams(opt, sched, G.resolve_target(cmd.target, model, opt), cmd.items)
    elif isinstance(cmd, C.Split):
        G.plan_split(model, opt, cmd.group, cmd.modules, cmd.items, sched)
    elif isinstance(cmd, C.Rebuild):
        G.optimizer_class(cmd.cls, opt)


class Schedule:
    """The pending ``at`` commands, in the order they apply (step, then id)."""

    def __init__(self) -> None:
        self.items: list[Scheduled] = []
        self.next_id = 1

    def add(self, step: int, cmd: C.Command, source: str) -> Scheduled:
        if len(self.items) >= MAX_PENDING:
            raise CommandError(f"at: {MAX_PENDING} commands are pending already")
        item = Scheduled(self.next_id, step, cmd, source)
        self.next_id += 1
        self.items.append(item)
        self.items.sort(key=lambda s: (s.step, s.id))
        return item

    def cancel(self, id: int) -> Scheduled:
        for item in self.items:
            if item.id == id:
                self.items.remove(item)
                return item
        known = ", ".join(f"#{s.id}" for s in self.items) or "none"
        raise CommandError(f"at cancel: no pending command #{id} (pending: {known})")

    def due(self, step: int) -> Scheduled | None:
        """The next command due at ``step`` (taken off the queue), or None."""
        if self.items and self.items[0].step <= step:
            return self.items.pop(0)
        return None

    def views(self) -> tuple[PendingCommand, ...]:
        return tuple(PendingCommand(s.id, s.step, s.cmd.text, s.source) for s in self.items)

    # ------------------------------------------------------------------ checkpoints

    def state(self) -> dict[str, Any]:
        return {
            "next_id": self.next_id,
            "commands": [
                {"id": s.id, "step": s.step, "cmd": s.cmd.text, "source": s.source}
                for s in self.items
            ],
        }

    def load(self, saved: Any) -> None:
        """A checkpoint's :meth:`state` (None: a checkpoint without one: nothing pending)."""
        items: list[Scheduled] = []
        next_id = 1
        if isinstance(saved, dict):
            for rec in saved.get("commands", []):
                items.append(
                    Scheduled(int(rec["id"]), int(rec["step"]), C.parse(rec["cmd"]), rec["source"])
                )
            next_id = int(saved.get("next_id", 1))
        self.items = sorted(items, key=lambda s: (s.step, s.id))
        self.next_id = max([next_id] + [s.id + 1 for s in items])


def check_saved(saved: Any) -> bool:
    """A checkpoint's pending commands are well formed (and parse)."""
    if saved is None:
        return True
    if not isinstance(saved, dict) or not isinstance(saved.get("commands", []), list):
        return False
    try:
        for rec in saved.get("commands", []):
            if not (isinstance(rec["id"], int) and isinstance(rec["step"], int)):
                return False
            C.parse(rec["cmd"])
            str(rec["source"])
        int(saved.get("next_id", 1))
    except (CommandError, KeyError, TypeError, ValueError):
        return False
    return True
