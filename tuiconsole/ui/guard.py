"""Guard rails: which lr changes are big enough to ask first (a 1e6x edit went to NaN).

Pure functions over the shown snapshot, so the edit dialog, the ``:`` line and the
decay keys ask the same question about the same numbers.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from tuiconsole.engine.commands import Decay, Lr, parse
from tuiconsole.engine.snapshot import GroupView
from tuiconsole.errors import CommandError
from tuiconsole.ui.fmt import fmt_lr

BIG_FACTOR = 10.0  # an lr change of this factor or more (up or down) asks first


@dataclass(frozen=True)
class LrJump:
    group: str
    old: float
    new: float

    @property
    def factor(self) -> float:
        """How many times larger or smaller the lr becomes (inf from or to 0)."""
        if self.old <= 0 or self.new <= 0:
            return 1.0 if self.old == self.new else math.inf
        return max(self.new / self.old, self.old / self.new)

    def describe(self) -> str:
        way = "up" if self.new > self.old else "down"
        times = "∞" if math.isinf(self.factor) else f"{self.factor:.3g}"
        return f"{self.group}: {fmt_lr(self.old)} → {fmt_lr(self.new)} ({times}x {way})"


def lr_jumps(
    text: str,
    groups: Sequence[GroupView],
    module_groups: Callable[[str], Sequence[str]] = lambda _: (),
) -> list[LrJump]:
    """What ``text`` would do to each group's lr (``lr`` and ``decay`` only; [] else).

    A TARGET that is not "all" or a group is a module path: ``module_groups`` says
    which groups hold its parameters. Text that does not parse changes nothing here
    (the engine answers it with its error).
    """
    try:
        cmd = parse(text)
    except CommandError:
        return []
    if not isinstance(cmd, Lr | Decay):
        return []
    by_name = {g.name: g for g in groups}
    if cmd.target == "all":
        targets = list(groups)
    elif cmd.target in by_name:
        targets = [by_name[cmd.target]]
    else:
        targets = [by_name[n] for n in module_groups(cmd.target) if n in by_name]
    return [LrJump(g.name, g.lr, _new_lr(cmd, g.lr)) for g in targets]


def _new_lr(cmd: Lr | Decay, lr: float) -> float:
    if isinstance(cmd, Decay):
        return lr * cmd.factor
    if cmd.op == "*":
        return lr * cmd.value
    if cmd.op == "/":
        return lr / cmd.value
    return cmd.value


def big_jumps(jumps: Sequence[LrJump], factor: float = BIG_FACTOR) -> list[LrJump]:
    """The jumps of ``factor`` or more (with a hair of float slack: 0.1 is 10x)."""
    return [j for j in jumps if j.factor >= factor * (1 - 1e-9)]
