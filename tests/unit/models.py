"""Real small torch models and a trainer driven step by step (paused)."""

from __future__ import annotations

import time

import torch
from torch import nn

from tuiconsole.engine.snapshot import RunState
from tuiconsole.engine.trainer import Trainer
from tuiconsole.script import TrainingSpec, seed_everything


class Net(nn.Module):
    """Seed-style net: ``features`` and ``classifier`` (with Dropout)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16))
        self.classifier = nn.Sequential(
            nn.Linear(16, 16), nn.ReLU(), nn.Dropout(0.1), nn.Linear(16, 3)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def make_data(
    n: int = 256, batch: int = 32, seed: int = 1
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()
    return [(x[i : i + batch], y[i : i + batch]) for i in range(0, n, batch)]


def seed_optimizer(model: Net, optimizer: str = "sgd") -> torch.optim.Optimizer:
    """The seed's method 1: ``features`` at 1e-3, ``classifier`` at 1e-2 (SGD+momentum or Adam)."""
    groups = [
        {"params": model.features.parameters()},
        {"params": model.classifier.parameters(), "lr": 1e-2},
    ]
    if optimizer == "sgd":
        return torch.optim.SGD(groups, lr=1e-3, momentum=0.9)
    return torch.optim.Adam(groups, lr=1e-3)


def make_spec(optimizer: str = "sgd", scheduler: str | None = None, seed: int = 0) -> TrainingSpec:
    seed_everything(seed)
    model = Net()
    opt = seed_optimizer(model, optimizer)
    sched = None
    interval = "step"
    if scheduler == "lambda":
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + 0.01 * s))
    elif scheduler == "cosine":
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=100)
    elif scheduler == "onecycle":
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[0.01, 0.1], total_steps=1000)
    elif scheduler == "step":
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=5, gamma=0.5)
    data = make_data()
    return TrainingSpec(
        model=model,
        optimizer=opt,
        criterion=nn.CrossEntropyLoss(),
        train_loader=data,
        eval_loader=data[:2],
        epochs=1000,
        scheduler=sched,
        scheduler_interval=interval,
    )


def wait_for(cond, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.005)


class Driver:
    """A paused trainer driven synchronously from the test: each command and step runs
    in the test's thread through the loop's own path (apply_now / step_now)."""

    def __init__(self, trainer: Trainer) -> None:
        self.trainer = trainer.prepare()

    def cmd(self, text: str):
        return self.trainer.apply_now(text, source="test")

    def steps(self, n: int) -> None:
        """`step n` as a user sends it, then the n steps it allows."""
        target = self.trainer.step + n
        assert self.cmd(f"step {n}").ok
        assert self.trainer.state == RunState.STEPPING
        self.trainer.step_now(n)
        assert self.trainer.step == target and self.trainer.state == RunState.PAUSED

    @property
    def opt(self) -> torch.optim.Optimizer:
        return self.trainer.optimizer


class ThreadDriver:
    """A paused trainer whose loop runs in its thread, driven with submit(); for the tests
    of that path. Reads happen only while it is paused at a boundary."""

    def __init__(self, trainer: Trainer) -> None:
        self.trainer = trainer

    def cmd(self, text: str):
        return self.trainer.submit(text, source="test").result(timeout=20)

    def steps(self, n: int) -> None:
        t = self.trainer
        target = t.step + n
        assert self.cmd(f"step {n}").ok
        wait_for(lambda: t.step >= target and t.state == RunState.PAUSED)
        # a no-op command round-trip guarantees the loop is idle at a boundary
        self.cmd("pause")

    @property
    def opt(self) -> torch.optim.Optimizer:
        return self.trainer.optimizer


# A minimal valid training script (the contract tests break it in one place each).
GOOD = """
import torch
from torch import nn
model = nn.Linear(4, 3)
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
criterion = nn.CrossEntropyLoss()
X = torch.randn(64, 4)
y = torch.randint(0, 3, (64,))
train_loader = [(X[i:i+16], y[i:i+16]) for i in range(0, 64, 16)]
"""
