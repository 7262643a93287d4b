"""``undo``: the optimizer changes the run can still take back, newest last.

Every accepted optimizer change (``lr``, ``decay``, ``set``, ``split``, ``rebuild``,
``clip``, ``accumulate``) pushes an :class:`Entry` that knows what it replaced;
``undo`` pops the newest and puts that back. ``rebuild`` is a barrier: the state
it dropped cannot be given back, so ``undo`` refuses there (nothing changed).
An ``undo`` is not itself pushed: there is no redo.

Exact under replay: the stack is a function of the commands applied (a replay
applies the same commands in the same order, so builds the same stack, and its
``undo`` does the same thing). It lives in memory: a resumed run and a rollback
start with an empty one (a checkpoint does not carry it).

What an undo puts back, per kind:

- ``lr`` / ``decay`` (and ``lr=`` of ``set``): each group's lr as it was, if the
  lr is still the value the change left; if the scheduler moved it since, the
  change's factor is taken back (lr x old/new), so the schedule goes on as if it
  had not been made. Applied as ``lr GROUP VALUE`` commands (scheduler lists kept
  in proportion, as any lr edit).
- ``set``: every other key's old value, written back as it was.
- ``split``: the groups merged back in their order, each parameter in its place,
  the hyper-parameters of before (lr-valued ones moved by what the scheduler did
  since), the scheduler's per-group lists of before; optimizer state is keyed by
  parameter, so it stays attached (the same tensors).
- ``clip`` / ``accumulate``: the previous setting.

Each undo checks first that the groups are there: an lr or set edit needs the
groups it touched (by name), a split the very groups it left (same names, same
order); it refuses with the reason otherwise (the training code added a group,
several optimizers are joined...).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from tuiconsole.engine import commands as C
from tuiconsole.engine import groups as G
from tuiconsole.engine.ops import Optimization
from tuiconsole.errors import CommandError

MAX_ENTRIES = 1000
LR_KEYS = ("lr", *G.SCHED_LR_KEYS)


@dataclass
class Entry:
    """One applied change. ``groups``: the group names it touched; ``after``: the names
    of every group right after it (an undo needs the groups as it left them)."""

    step: int
    text: str
    kind: str
    groups: tuple[str, ...] = ()
    after: tuple[str, ...] = ()


@dataclass
class LrEntry(Entry):
    lrs: dict[str, tuple[float, float]] = field(default_factory=dict)  # name: (old, new)
    hparams: dict[str, dict[str, tuple[Any, Any]]] = field(default_factory=dict)  # set's keys


@dataclass
class SplitEntry(Entry):
    before: list[dict[str, Any]] = field(default_factory=list)  # groups (params: same tensors)
    sched_lists: list[tuple[Any, str, list[Any]]] = field(default_factory=list)
    group_origin: list[int] = field(default_factory=list)
    state_reset: list[int | None] = field(default_factory=list)
    # each group's lr-valued keys right after the split, by name
    lr_after: dict[str, dict[str, float]] = field(default_factory=dict)


@dataclass
class StepEntry(Entry):
    previous: C.Command | None = None  # the clip / accumulate that puts it back


@dataclass
class Reverted:
    """What an undo did: its result line, the commands to apply (lr edits), the entry."""

    entry: Entry
    message: str
    commands: list[C.Command] = field(default_factory=list)
    structure_changed: bool = False
    # plain hyper-parameters to write back once ``commands`` were applied: (group, key, value)
    writes: list[tuple[dict[str, Any], str, Any]] = field(default_factory=list)

    def commit(self) -> None:
        for group, key, value in self.writes:
            group[key] = value


def _names(o: Optimization) -> tuple[str, ...]:
    return tuple(str(g.get("name")) for g in o.optimizer.param_groups)


def _lr_values(group: dict[str, Any]) -> dict[str, float]:
    return {
        k: float(group[k]) for k in LR_KEYS if isinstance(group.get(k), int | float | torch.Tensor)
    }


class History:
    """The undo stack of one run (the loop thread's)."""

    def __init__(self) -> None:
        self.entries: list[Entry] = []
        # The stack as it was when ops armed its guard (ops.Undo) for the commands since
        # the last step: a failed first step takes them back, and their entries with them.
        self._armed: list[Entry] | None = None

    def clear(self) -> None:
        self.entries.clear()
        self._armed = None

    def arm(self) -> None:
        self._armed = list(self.entries)

    def disarm(self) -> None:
        self._armed = None

    def taken_back(self) -> None:
        """The optimizer commands since the guard was armed were undone (ops.guarded_step):
        their entries go too (clip/accumulate, which that guard does not cover, stay)."""
        if self._armed is None:
            return
        kept: list[Entry] = [
            e for e in self.entries[len(self._armed) :] if isinstance(e, StepEntry)
        ]
        self.entries = self._armed + kept
        self._armed = None

    def _push(self, entry: Entry) -> None:
        self.entries.append(entry)
        del self.entries[:-MAX_ENTRIES]

    # ------------------------------------------------------------------ before a change

    def before(self, cmd: C.Command, o: Optimization, step: int, stepping: Any) -> Any:
        """What ``cmd`` is about to replace (None when it will be refused anyway)."""
        opt = o.optimizer
        if isinstance(cmd, C.Lr | C.Decay | C.Set):
            try:
                indices = G.resolve_target(cmd.target, o.model, opt)
            except CommandError:
                return None
            # the lr as a number: a tensor lr is changed in place (fill_)
            return [
                (i, {**opt.param_groups[i], "lr": float(opt.param_groups[i]["lr"])})
                for i in indices
            ]
        if isinstance(cmd, C.Split):
            lists: list[tuple[Any, str, list[Any]]] = []
            for sched in G.scheduler_chain(o.scheduler):
                for attr in G.SCHED_GROUP_LISTS:
                    value = getattr(sched, attr, None)
                    if isinstance(value, list):
                        lists.append((sched, attr, list(value)))
            groups = [{**g, "params": list(g["params"])} for g in opt.param_groups]
            return groups, lists, list(o.group_origin), list(o.state_reset)
        if isinstance(cmd, C.Clip):
            return C.Clip(stepping.clip)
        if isinstance(cmd, C.Accumulate):
            return C.Accumulate(stepping.accumulate)
        return None

    def applied(self, cmd: C.Command, o: Optimization, step: int, before: Any) -> Entry | None:
        """``cmd`` was applied: push what undoes it; the entry (for the change list)."""
        after = _names(o)
        groups = o.optimizer.param_groups
        entry: Entry
        if isinstance(cmd, C.Lr | C.Decay | C.Set) and before is not None:
            lrs: dict[str, tuple[float, float]] = {}
            hp: dict[str, dict[str, tuple[Any, Any]]] = {}
            for i, old in before:
                name = str(groups[i].get("name"))
                if float(old["lr"]) != float(groups[i]["lr"]):
                    lrs[name] = (float(old["lr"]), float(groups[i]["lr"]))
                if isinstance(cmd, C.Set):
                    hp[name] = {
                        k: (old.get(k), groups[i].get(k))
                        for k, _ in cmd.items
                        if k != "lr" and k in groups[i]
                    }
            names = tuple(str(groups[i].get("name")) for i, _ in before)
            entry = LrEntry(step, cmd.text, cmd.name, names, after, lrs, hp)
        elif isinstance(cmd, C.Split) and before is not None:
            members = {str(g.get("name")): {id(p) for p in g["params"]} for g in groups}
            made = [n for n in after if n not in {str(g.get("name")) for g in before[0]}]
            sources = [  # the groups the parameters came from
                str(g.get("name"))
                for g in before[0]
                if members.get(str(g.get("name"))) != {id(p) for p in g["params"]}
            ]
            entry = SplitEntry(
                step,
                cmd.text,
                "split",
                tuple(made + [n for n in sources if n not in made]),
                after,
                before[0],
                before[1],
                before[2],
                before[3],
                {str(g.get("name")): _lr_values(g) for g in groups},
            )
        elif isinstance(cmd, C.Rebuild):
            entry = Entry(step, cmd.text, "rebuild", (), after)
        elif isinstance(cmd, C.Clip | C.Accumulate):
            entry = StepEntry(step, cmd.text, cmd.name, (), after, before)
        else:
            return None
        self._push(entry)
        return entry

    # ------------------------------------------------------------------ undo

    def undo(self, o: Optimization) -> Reverted:
        """What takes back the newest entry, or a CommandError having changed nothing.

        lr edits come back as commands for the caller to apply through ops (so they
        are checked, and guarded, as any lr edit), then :meth:`Reverted.commit` and
        :meth:`done`; a split is put back here at once."""
        if not self.entries:
            raise CommandError(
                "nothing to undo (no optimizer change since the run began, "
                "was resumed or rolled back)"
            )
        entry = self.entries[-1]
        if entry.kind == "rebuild":
            raise CommandError(
                f"cannot undo `{entry.text}` (step {entry.step}): it dropped the optimizer's "
                "state (momentum/Adam moments), which cannot be given back; nothing changed"
            )
        now = _names(o)
        # an lr/set edit needs its groups (by name); a split the very groups it left
        gone = isinstance(entry, LrEntry) and not set(entry.groups) <= set(now)
        if gone or (isinstance(entry, SplitEntry) and now != entry.after):
            raise CommandError(
                f"cannot undo `{entry.text}` (step {entry.step}): the groups changed since "
                f"(now {', '.join(_names(o))}; it left {', '.join(entry.after)}); nothing changed"
            )
        if isinstance(entry, StepEntry):
            assert entry.previous is not None
            done = Reverted(entry, f"undid `{entry.text}`", [entry.previous])
        elif isinstance(entry, LrEntry):
            done = self._undo_lr(entry, o)
        elif isinstance(entry, SplitEntry):
            done = self._undo_split(entry, o)
        else:  # pragma: no cover - every kind pushed is handled above
            raise CommandError(f"cannot undo `{entry.text}`")
        return done

    def done(self, reverted: Reverted) -> None:
        """The undo was applied: its entry leaves the stack."""
        if self.entries and self.entries[-1] is reverted.entry:
            self.entries.pop()

    def _undo_lr(self, entry: LrEntry, o: Optimization) -> Reverted:
        groups = {str(g.get("name")): g for g in o.optimizer.param_groups}
        commands: list[C.Command] = []
        for name, (old, new) in entry.lrs.items():
            now = float(groups[name]["lr"])
            value = old if now == new else now * (old / new)
            commands.append(C.Lr(name, value))
        for name, keys in entry.hparams.items():
            for key, (old, _) in keys.items():
                if old is None and key not in G.TRISTATE_KEYS:
                    raise CommandError(
                        f"cannot undo `{entry.text}`: {key!r} had no value in {name!r}"
                    )
        writes = [
            (groups[name], key, old)
            for name, keys in entry.hparams.items()
            for key, (old, _) in keys.items()
        ]
        what = ", ".join(entry.groups) or "no group"
        return Reverted(entry, f"undid `{entry.text}` on {what}", commands, writes=writes)

    def _undo_split(self, entry: SplitEntry, o: Optimization) -> Reverted:
        if getattr(o, "parts", None) is not None:
            raise CommandError(
                "cannot undo a split of several optimizers joined into one; nothing changed"
            )
        opt = o.optimizer
        now = opt.param_groups
        held = {id(p) for g in now for p in g["params"]}
        had = {id(p) for g in entry.before for p in g["params"]}
        if held != had:
            raise CommandError(
                f"cannot undo `{entry.text}`: the optimizer's parameters changed since; "
                "nothing changed"
            )
        where = {id(p): g for g in now for p in g["params"]}
        merged = []
        for old in entry.before:
            group = dict(old)
            current = where[id(old["params"][0])] if old["params"] else None
            if current is not None:
                after = entry.lr_after.get(str(current.get("name")), {})
                for key, value in _lr_values(current).items():
                    if key not in after or not isinstance(group.get(key), int | float):
                        continue  # a tensor lr is the live object the scheduler fills
                    was = float(group[key])
                    if value != after[key]:  # the scheduler moved it since the split
                        moved = value if after[key] == 0 else was * (value / after[key])
                        group[key] = moved if math.isfinite(moved) else was
            merged.append(group)
        opt.param_groups[:] = merged
        for sched, attr, values in entry.sched_lists:
            if attr == "_last_lr":
                values = [float(g["lr"]) for g in merged][: len(values)]
            setattr(sched, attr, list(values))
        o.group_origin = list(entry.group_origin)
        o.state_reset = list(entry.state_reset)
        return Reverted(
            entry,
            f"undid `{entry.text}`: {', '.join(entry.groups)} merged back "
            f"({len(merged)} group(s)); momentum/Adam state kept",
            structure_changed=True,
        )
