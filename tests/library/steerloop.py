"""A loop of the user's own for the library tests: a real small model, data indexed by step.

``Parts`` is what a user's script builds (model, optimizer, scheduler); ``Parts.take``
is one step as a user writes it (forward, zero_grad, backward, ``optimizer.step()``,
``sched.step()``); :func:`train` runs the loop from ``steer.start_step`` and calls
``steer.step(loss)`` at each boundary. The batch of step N is always the same, so a
run resumed at step N continues exactly as one that was never stopped.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tuiconsole.engine.snapshot import RunState
from tuiconsole.library import Steer

BATCH = 32
_gen = torch.Generator().manual_seed(1)
X = torch.randn(BATCH * 8, 6, generator=_gen)
Y = (X[:, 0] > 0).long() + (X[:, 1] > 0.5).long()


class Net(nn.Module):
    """``body`` and ``head`` (with Dropout: the RNG is part of the run)."""

    def __init__(self, dropout: float = 0.1) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU())
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(16, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    i = step % (len(X) // BATCH)
    return X[i * BATCH : (i + 1) * BATCH], Y[i * BATCH : (i + 1) * BATCH]


SCHEDULERS: dict[str, Callable[[torch.optim.Optimizer], Any]] = {
    "steplr": lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=4, gamma=0.7),
    "lambdalr": lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + 0.1 * s)),
    "onecycle": lambda opt: torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=[0.05, 0.2], total_steps=200
    ),
}


@dataclass
class Parts:
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any = None
    criterion: nn.Module = field(default_factory=nn.CrossEntropyLoss)

    def take(self, step: int) -> torch.Tensor:
        """One step of the user's loop; returns the loss (on the graph, as users pass it)."""
        inputs, targets = batch(step)
        loss = self.criterion(self.model(inputs), targets)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()
        return loss

    def evaluate(self) -> dict[str, Any]:
        inputs, targets = X, Y
        logits = self.model(inputs)
        return {
            "loss": self.criterion(logits, targets),
            "accuracy": (logits.argmax(1) == targets).float().mean(),
        }


def make(scheduler: str | None = None, seed: int = 0, dropout: float = 0.1) -> Parts:
    """What a user's script builds: two named groups, SGD with momentum."""
    torch.manual_seed(seed)
    model = Net(dropout)
    optimizer = torch.optim.SGD(
        [
            {"params": model.body.parameters(), "name": "body"},
            {"params": model.head.parameters(), "name": "head", "lr": 0.05},
        ],
        lr=0.02,
        momentum=0.9,
    )
    sched = SCHEDULERS[scheduler](optimizer) if scheduler is not None else None
    return Parts(model, optimizer, sched)


def train(
    steer: Steer,
    parts: Parts,
    steps: int,
    before_boundary: Callable[[int], None] | None = None,
    loss_of: Callable[[int, torch.Tensor], Any] | None = None,
) -> list[int]:
    """The user's loop from ``steer.start_step`` to ``steps``; returns the steps taken.

    ``before_boundary(step)`` runs after step ``step`` was taken, before its boundary
    (commands submitted there are applied at that boundary: journal step ``step + 1``);
    ``loss_of(step, loss)`` is what the loop passes to ``steer.step``.
    """
    taken: list[int] = []
    for step in range(steer.start_step, steps):
        loss = parts.take(step)
        taken.append(step)
        if before_boundary is not None:
            before_boundary(step)
        steer.step(loss if loss_of is None else loss_of(step, loss))
    return taken


# --------------------------------------------------------------------------- files


def journal(run_dir: Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / "journal.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def commands(run_dir: Path) -> list[tuple[int, str, bool]]:
    return [(r["step"], r["cmd"], r["ok"]) for r in journal(run_dir) if r["type"] == "command"]


def end_record(run_dir: Path) -> dict[str, Any]:
    last = journal(run_dir)[-1]
    assert last["type"] == "end", last
    return last


# --------------------------------------------------------------------------- threads


def wait_state(steer: Steer, *states: RunState, timeout: float = 20.0) -> None:
    """Until the run's snapshot shows one of ``states`` (from a thread other than the loop's)."""
    deadline = time.monotonic() + timeout
    while steer.session.snapshot().status.state not in states:
        if time.monotonic() > deadline:
            state = steer.session.snapshot().status.state
            raise AssertionError(f"timed out waiting for {states}; the run is {state}")
        time.sleep(0.01)


class Beside:
    """Runs ``fn`` in a thread beside the loop; :meth:`result` re-raises what it raised."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        self._result: list[Any] = []
        self._error: list[BaseException] = []

        def run() -> None:
            try:
                self._result.append(fn())
            except BaseException as exc:  # handed to the test's thread
                self._error.append(exc)

        self.thread = threading.Thread(target=run, name="test-front-end", daemon=True)
        self.thread.start()

    def result(self, timeout: float = 30.0) -> Any:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the front-end thread did not finish"
        if self._error:
            raise self._error[0]
        return self._result[0]
