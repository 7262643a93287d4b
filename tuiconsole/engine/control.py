"""The commands that steer the run, not its optimizer: pause, resume, step, eval,
checkpoint, stop (the optimizer operations are ops.py's).

Each is a small function over :class:`Controls` (the plain value of what they
act on: the run state machine, the record, the keeper, the script) and the
run's facts at this step boundary, returning its result line or raising a
CommandError having changed nothing. ``stop`` raises :class:`Stopped`: the loop
ends at this boundary. Only the loop thread calls them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from tuiconsole.engine import commands as C
from tuiconsole.engine.evaluate import eval_text
from tuiconsole.engine.keeper import Keeper
from tuiconsole.engine.ops import Optimization
from tuiconsole.engine.record import RunFacts, RunRecord
from tuiconsole.engine.rundir import checked_target
from tuiconsole.engine.runstate import RunControl
from tuiconsole.engine.snapshot import EvalPoint, RunState
from tuiconsole.errors import CommandError, TuiconsoleError
from tuiconsole.script import TrainingSpec


class Stopped(Exception):
    """The stop command was applied: the loop ends at this step boundary."""


@dataclass(frozen=True)
class Controls:
    control: RunControl
    record: RunRecord
    keeper: Keeper
    ops: Optimization
    spec: TrainingSpec
    device: torch.device
    # The run's eval at a step (the eval_loader's, or a library user's own callable)
    evaluator: Callable[[int], EvalPoint]


def pause(cmd: C.Pause, c: Controls, facts: RunFacts) -> str:
    c.control.pause()
    return f"paused at step {facts.step}"


def resume(cmd: C.Resume, c: Controls, facts: RunFacts) -> str:
    c.control.resume()
    return f"resumed at step {facts.step}"


def step(cmd: C.Step, c: Controls, facts: RunFacts) -> str:
    c.control.step(cmd.n)
    return f"stepping {cmd.n} step(s) from step {facts.step}"


def evaluate_now(cmd: C.Eval, c: Controls, facts: RunFacts) -> str:
    """The run's eval now; EVALUATING is published first (an eval can take a while)."""
    with c.control.evaluating():
        c.record.publish(dataclasses.replace(facts, state=RunState.EVALUATING), c.ops)
        point = c.evaluator(facts.step)
    c.record.evaluated(point)
    return eval_text(point)  # logged once, as the eval command's result


def checkpoint(cmd: C.Checkpoint, c: Controls, facts: RunFacts) -> str:
    path = None
    if cmd.path:  # a run's files stay together: relative paths are in the run dir
        try:
            path = checked_target(cmd.path, c.record.shape.run_dir)
        except TuiconsoleError as exc:
            raise CommandError(str(exc)) from None
    path = c.keeper.write(path, "command", facts.step, facts.epoch)
    return f"checkpoint of step {facts.step} written to {path}"


def stop(cmd: C.Stop, c: Controls, facts: RunFacts) -> str:
    c.control.stop()
    raise Stopped


CONTROLS: dict[type[C.Command], Callable[[Any, Controls, RunFacts], str]] = {
    C.Pause: pause,
    C.Resume: resume,
    C.Step: step,
    C.Eval: evaluate_now,
    C.Checkpoint: checkpoint,
    C.Stop: stop,
}


def apply(cmd: C.Command, c: Controls, facts: RunFacts) -> str:
    """Apply one control command; its result line, or a CommandError."""
    handler = CONTROLS.get(type(cmd))
    if handler is None:  # pragma: no cover - every command type has a handler
        raise CommandError(f"unsupported command {cmd.text!r}")
    return handler(cmd, c, facts)
