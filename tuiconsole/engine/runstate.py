"""The run's state machine: every change of :class:`RunState` happens here.

::

    STARTING --begin--> RUNNING | PAUSED (start_paused)
    RUNNING  --pause--> PAUSED       PAUSED/NAN-PAUSED --resume--> RUNNING
    any live --step N-> STEPPING --N steps--> PAUSED
    RUNNING/STEPPING --non-finite loss--> NAN-PAUSED
    any live --eval--> EVALUATING --done--> (where it was)
    any live --finish--> FINISHED    (max steps / epochs reached)
    any      --fail--> ERROR
    not FINISHED/ERROR --stop--> STOPPED

"Live" is every state that is not terminal (FINISHED, STOPPED, ERROR).
FINISHED still answers commands (eval, checkpoint, lr...) until it is stopped.
Only RUNNING and STEPPING take steps (:attr:`RunControl.can_step`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from tuiconsole.engine.snapshot import RunState
from tuiconsole.errors import CommandError


class RunControl:
    """The run state and the steps left of a ``step N``; read from any thread,
    changed only by the loop's thread."""

    def __init__(self, start_paused: bool = False) -> None:
        self.state = RunState.STARTING
        self._start_paused = start_paused
        self.steps_left = 0  # of a `step N`, while STEPPING

    @property
    def can_step(self) -> bool:
        return self.state in (RunState.RUNNING, RunState.STEPPING)

    def _set(self, state: RunState, steps_left: int = 0) -> None:
        self.state, self.steps_left = state, steps_left

    def begin(self) -> None:
        """Set up: the loop starts running, or paused."""
        if self.state == RunState.STARTING:
            self._set(RunState.PAUSED if self._start_paused else RunState.RUNNING)

    def _live(self, refused: str) -> None:
        if self.state.is_terminal:
            raise CommandError(f"the run is {self.state.value}{refused}")

    # commands (each raises CommandError when the state refuses it)

    def pause(self) -> None:
        self._live("")
        if self.state in (RunState.RUNNING, RunState.STEPPING):
            self._set(RunState.PAUSED)

    def resume(self) -> None:
        self._live("; nothing to resume")
        self._set(RunState.RUNNING)

    def step(self, n: int) -> None:
        self._live("; cannot step")
        self._set(RunState.STEPPING, n)

    def stop(self) -> None:
        if self.state not in (RunState.FINISHED, RunState.ERROR):
            self._set(RunState.STOPPED)

    # events of the loop

    def stepped(self) -> bool:
        """A step was taken. True when that ended a `step N` (now PAUSED)."""
        if self.state != RunState.STEPPING:
            return False
        self.steps_left -= 1
        if self.steps_left > 0:
            return False
        self._set(RunState.PAUSED)
        return True

    def nan_paused(self) -> None:
        self._set(RunState.NAN_PAUSED)

    def nan_resumed(self) -> None:
        """A replay takes the run out of NAN-PAUSED where the original run did."""
        if self.state == RunState.NAN_PAUSED:
            self._set(RunState.RUNNING)

    def rolled_back(self, replaying: bool) -> None:
        """A rollback was applied (only while paused): NAN-PAUSED becomes PAUSED. A
        replay goes on running where the original run was paused (pauses are not
        replayed) and leaves NAN-PAUSED as the original run did."""
        if replaying:
            self.nan_resumed()
        elif self.state == RunState.NAN_PAUSED:
            self._set(RunState.PAUSED)

    def finish(self) -> None:
        self._set(RunState.FINISHED)

    def fail(self) -> None:
        self._set(RunState.ERROR)

    def end(self) -> None:
        """The loop ends: a run that is not yet terminal is STOPPED."""
        if not self.state.is_terminal:
            self._set(RunState.STOPPED)

    @contextmanager
    def evaluating(self) -> Iterator[None]:
        """EVALUATING while the block runs, then back where it was."""
        previous, steps_left = self.state, self.steps_left
        self.state = RunState.EVALUATING
        try:
            yield
        finally:
            self._set(previous, steps_left)
