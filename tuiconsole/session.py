"""The one seam between a run and its front-ends.

A front-end (the Textual console, the headless printer, a remote client) only
ever calls :meth:`Session.snapshot` and :meth:`Session.submit`. It never holds
the model or the optimizer: the trainer thread owns them.
"""

from __future__ import annotations

from concurrent.futures import Future
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from tuiconsole.engine.commands import Command, CommandResult

if TYPE_CHECKING:
    from tuiconsole.engine.snapshot import Snapshot
    from tuiconsole.engine.trainer import RunConfig, Trainer


class Session(Protocol):
    def snapshot(self) -> Snapshot:
        """The newest snapshot. Never blocks on the trainer; may be ~1 frame old."""
        ...

    def submit(self, command: str | Command, source: str = "ui") -> Future[CommandResult]:
        """Queue a command for the trainer. Parse errors resolve the future at once.

        The future resolves once the trainer applied the command at a step
        boundary (and journaled it). It never raises: errors are results.
        """
        ...

    def wait(self, timeout: float | None = None) -> bool:
        """Block up to ``timeout`` s until training ended (finished, stopped, error)."""
        ...

    def close(self) -> None:
        """Stop the run cleanly (journal flushed) and release resources."""
        ...


class LocalSession:
    """A session around a trainer thread in this process."""

    def __init__(self, trainer: Trainer) -> None:
        self.trainer = trainer

    @classmethod
    def from_script(
        cls, path: str | Path, config: RunConfig | None = None, **options: Any
    ) -> LocalSession:
        """Load a training script and wrap a (not yet started) trainer around it.

        ``options`` are RunConfig fields, for callers that don't build a RunConfig.
        """
        from tuiconsole.engine.trainer import RunConfig, Trainer
        from tuiconsole.script import load_script

        config = config or RunConfig(**options)
        spec = load_script(path, seed=config.seed)
        return cls(Trainer(spec, config))

    def start(self) -> LocalSession:
        self.trainer.start()
        return self

    def snapshot(self) -> Snapshot:
        return self.trainer.latest_snapshot()

    def submit(self, command: str | Command, source: str = "ui") -> Future[CommandResult]:
        return self.trainer.submit(command, source)

    def close(self) -> None:
        self.trainer.close()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until training ends (finished, stopped or error)."""
        return self.trainer.wait_done(timeout)
