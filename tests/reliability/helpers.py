"""Shared pieces of the reliability tests: real models, synchronous trainers,
deep state comparison and a CLI runner (real subprocesses)."""

from __future__ import annotations

import copy
import json
import os
import random
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from tests.unit.models import Net, seed_optimizer
from tuiconsole.engine.trainer import RunConfig, Trainer
from tuiconsole.script import TrainingSpec, seed_everything

ROOT = Path(__file__).resolve().parents[2]


# --------------------------------------------------------------------------- specs


def loader_spec(
    optimizer: str = "sgd",
    scheduler: str | None = None,
    seed: int = 0,
    interval: str = "step",
    batch: int = 24,
    shuffle: str = "global",
) -> TrainingSpec:
    """The seed-style Net on a *shuffled* DataLoader (RNG-driven order) with Dropout.

    256 samples / 24 = 11 batches per epoch (the last one short), so step 100
    is in the middle of an epoch: resuming must restore the data position.
    ``shuffle`` is what draws each epoch's order: "global" (torch's global RNG),
    "generator" (the DataLoader's own ``generator=``), "python" (``random.shuffle``) or
    "numpy" (``np.random.permutation``).
    """
    seed_everything(seed)
    model = Net()
    opt = seed_optimizer(model, optimizer)
    S = torch.optim.lr_scheduler
    sched: Any = None
    if scheduler == "lambda":
        sched = S.LambdaLR(opt, [lambda s: 1.0 / (1 + 0.01 * s), lambda s: 0.99**s])
    elif scheduler == "step":
        sched = S.StepLR(opt, step_size=7, gamma=0.5)
    elif scheduler == "cosine":
        sched = S.CosineAnnealingLR(opt, T_max=60, eta_min=0.0)
    elif scheduler == "onecycle":
        sched = S.OneCycleLR(opt, max_lr=[0.01, 0.1], total_steps=1000)
    elif scheduler == "plateau":
        sched = S.ReduceLROnPlateau(opt, factor=0.5, patience=0, threshold=0.5)
    g = torch.Generator().manual_seed(7)
    x = torch.randn(256, 8, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()
    data = torch.utils.data.TensorDataset(x, y)
    loader: Any
    if shuffle == "global":
        loader = torch.utils.data.DataLoader(data, batch_size=batch, shuffle=True)
    elif shuffle == "generator":
        own = torch.Generator().manual_seed(3)
        loader = torch.utils.data.DataLoader(data, batch_size=batch, shuffle=True, generator=own)
    else:
        loader = HostShuffled(x, y, batch, shuffle)
    return TrainingSpec(
        model=model,
        optimizer=opt,
        criterion=nn.CrossEntropyLoss(),
        train_loader=loader,
        eval_loader=[(x[:64], y[:64])],
        epochs=10_000,
        scheduler=sched,
        scheduler_interval=interval,
    )


class HostShuffled:
    """A loader that shuffles with Python's ``random`` or numpy's when iterated, as
    some scripts do."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch: int, rng: str) -> None:
        self.x, self.y, self.batch, self.rng = x, y, batch, rng

    def __iter__(self):
        if self.rng == "numpy":
            order = np.random.permutation(len(self.x)).tolist()
        else:
            order = list(range(len(self.x)))
            random.shuffle(order)
        for i in range(0, len(order), self.batch):
            idx = torch.tensor(order[i : i + self.batch])
            yield self.x[idx], self.y[idx]


def sync_trainer(spec: TrainingSpec, run_dir: Path | None = None, **config: Any) -> Trainer:
    """A trainer driven synchronously (apply_now / step_now): no thread, no timing."""
    config.setdefault("log_every", 0)
    return Trainer(spec, RunConfig(run_dir=run_dir, **config)).prepare()


def optimizer_sd(opt: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimizer's state_dict (params by index): comparable across two runs."""
    return copy.deepcopy(opt.state_dict())


# --------------------------------------------------------------------------- state


def optimizer_state(opt: torch.optim.Optimizer) -> tuple[list[dict[str, Any]], dict[Any, Any]]:
    """A deep, comparable copy: groups (params by id) and every state value."""
    groups = [
        {k: (list(map(id, v)) if k == "params" else copy.deepcopy(v)) for k, v in g.items()}
        for g in opt.param_groups
    ]
    state = {
        (id(p), k): (v.clone() if isinstance(v, torch.Tensor) else copy.deepcopy(v))
        for p, s in opt.state.items()
        for k, v in s.items()
    }
    return groups, state


def scheduler_state(sched: Any) -> Any:
    if sched is None:
        return None
    return {k: copy.deepcopy(v) for k, v in sched.state_dict().items() if k != "lr_lambdas"}


def assert_same(a: Any, b: Any, path: str = "") -> None:
    """Deep equality where tensors must be bit-identical."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), path
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), (path, a.keys(), b.keys())
        for k in a:
            assert_same(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list | tuple):
        assert type(a) is type(b) and len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{path}[{i}]")
    else:
        assert a == b or (a != a and b != b), (path, a, b)  # NaN == NaN here


def weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# --------------------------------------------------------------------------- files


def jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_script(folder: Path, body: str, name: str = "train.py") -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(body))
    return path


# --------------------------------------------------------------------------- CLI


def cli_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT)
    env.pop("NO_COLOR", None)
    return env


def cli(*args: str, stdin: str | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run ``tuiconsole`` as a user would (not attachable: no socket left behind)."""
    return subprocess.run(
        [sys.executable, "-m", "tuiconsole", *args, *(["--no-listen"] if args[0] == "run" else [])],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=None if stdin is not None else subprocess.DEVNULL,
        env=cli_env(),
    )


def cli_popen(*args: str, **kw: Any) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "tuiconsole", *args, "--no-listen"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(),
        **kw,
    )


def wait_until(predicate, what: str, timeout: float = 60) -> None:
    """Poll ``predicate()`` until it holds; after ``timeout`` s fail naming ``what``.

    For a condition in another process (a file, its output): the generous timeout
    costs nothing when the condition comes, as a fixed sleep would every time."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


def wait_for_file_line(path: Path, needle: str, timeout: float = 60) -> None:
    wait_until(
        lambda: path.exists() and needle in path.read_text(errors="replace"),
        f"{needle!r} in {path}",
        timeout,
    )


SLOW_SCRIPT = """
import time
import torch
from torch import nn

model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
criterion = nn.CrossEntropyLoss()
g = torch.Generator().manual_seed(0)
X = torch.randn(160, 4, generator=g)
y = (X[:, 0] > 0).long()
train_loader = [(X[i : i + 16], y[i : i + 16]) for i in range(0, 160, 16)]
epochs = 100_000


def training_step(model, batch, criterion):
    time.sleep(0.01)  # a "big model": ~100 steps/s, so a stop lands mid-run
    x, t = batch
    return criterion(model(x), t)
"""


def finish(proc: subprocess.Popen, timeout: float = 60) -> tuple[int, str, str]:
    """Wait for a CLI run: (exit code, stdout, stderr); a hang kills it and fails."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"the run hung (killed after {timeout} s):\n{out}\n{err}") from None
    return proc.returncode, out, err


def hf_grouping_spec() -> TrainingSpec:
    """``loader_spec("adam")`` under the Hugging Face grouping: AdamW with every
    weight in one group (weight_decay=0.01) and every bias in another (0.0)."""
    spec = loader_spec("adam")
    named = list(spec.model.named_parameters())
    spec.optimizer = torch.optim.AdamW(
        [
            {"params": [p for n, p in named if n.endswith("weight")], "weight_decay": 0.01},
            {"params": [p for n, p in named if n.endswith("bias")], "weight_decay": 0.0},
        ],
        lr=1e-3,
    )
    return spec


# A tiny model, and one whose loader hangs after 5 batches (writing `stuck` beside the
# script first), for the tests of a stop while a step is stuck.
MODEL = """
import pathlib, threading, time, torch
from torch import nn
HERE = pathlib.Path(__file__).parent
g = torch.Generator().manual_seed(0)
X = torch.randn(16, 4, generator=g)
y = (X[:, 0] > 0).long()
model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
criterion = nn.CrossEntropyLoss()
epochs = 1000
"""
STUCK_SCRIPT = (
    MODEL
    + """
class Loader:
    def __iter__(self):
        for _ in range(5):
            yield X, y
        (HERE / "stuck").write_text("")
        threading.Event().wait()  # the next batch never comes
train_loader = Loader()
"""
)
