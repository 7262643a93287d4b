"""Training-rate overhead of TuiconsoleCallback on a Lightning fit.

    python -m benchmarks.lightning_overhead [--model mlp|vgg|both] [--rounds 5] [--steps N]

The same fit (same LightningModule, data and Trainer options) is run with and
without the callback in this process, interleaved (A B A B ...): the figure is
the ratio of steps/s, with the callback over without (1.000 = no overhead),
median over rounds and its spread, at torch's default thread count and at 1
thread. Steps are timed from the start of step ``--skip`` to the end of the
last one (the Trainer's setup, the run dir and the final checkpoint are
outside the timing; the callback's boundary on each step is inside).
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from benchmarks.common import Row, interleaved_ratios, print_table, save, summarize
from tuiconsole.lightning import TuiconsoleCallback

ROOT = Path(__file__).resolve().parent.parent
TARGET = 0.95  # the callback keeps at least 95% of the bare fit's steps/s


class MLP(pl.LightningModule):
    """A tiny model: the step is short, so any per-step cost shows."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU())
        self.head = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)


def mlp_case() -> tuple[Callable[[], pl.LightningModule], DataLoader]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4096, 32, generator=g)
    y = torch.randint(0, 10, (4096,), generator=g)
    return MLP, DataLoader(TensorDataset(x, y), batch_size=64, shuffle=True)


def vgg_case() -> tuple[Callable[[], pl.LightningModule], DataLoader]:
    import importlib.util

    path = ROOT / "sample_models" / "lightning_vgg.py"
    spec = importlib.util.spec_from_file_location("bench_lightning_vgg", path)
    assert spec is not None and spec.loader is not None
    sample = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sample)
    loader = DataLoader(sample.vgg._train, batch_size=64, shuffle=True, drop_last=True)
    return lambda: sample.LitVGG(steps=10_000), loader


class Timer(pl.Callback):
    """Wall time from the start of step ``skip`` to the end of the last step."""

    def __init__(self, skip: int) -> None:
        self.skip = skip
        self.t0 = self.t1 = 0.0
        self.steps = 0

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, idx: int) -> None:
        if trainer.global_step == self.skip and not self.t0:
            self.t0 = time.perf_counter()

    def on_train_batch_end(self, trainer: Any, pl_module: Any, out: Any, b: Any, i: int) -> None:
        self.t1 = time.perf_counter()
        self.steps = trainer.global_step

    def rate(self) -> float:
        return (self.steps - self.skip) / (self.t1 - self.t0)


def fit_rate(
    make: Callable[[], pl.LightningModule],
    loader: DataLoader,
    steps: int,
    skip: int,
    steered: bool,
    tmp: Path,
) -> float:
    torch.manual_seed(0)
    timer = Timer(skip)
    callbacks: list[pl.Callback] = []
    if steered:
        run_dir = Path(tempfile.mkdtemp(dir=tmp)) / "run"
        callbacks.append(TuiconsoleCallback(run_dir=run_dir, listen=False))
    callbacks.append(timer)  # after the console: its boundary is inside the timing
    trainer = pl.Trainer(
        max_steps=steps,
        accelerator="cpu",
        callbacks=callbacks,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(make(), loader)
    return timer.rate()


def measure(name: str, steps: int, skip: int, rounds: int, threads: int | None) -> Row:
    make, loader = {"mlp": mlp_case, "vgg": vgg_case}[name]()
    default = torch.get_num_threads()
    torch.set_num_threads(threads or default)
    bare_rates: list[float] = []
    try:
        with tempfile.TemporaryDirectory() as tmp:

            def bare() -> float:
                bare_rates.append(fit_rate(make, loader, steps, skip, False, Path(tmp)))
                return bare_rates[-1]

            def steered() -> float:
                return fit_rate(make, loader, steps, skip, True, Path(tmp))

            ratios = interleaved_ratios(bare, {"callback": steered}, rounds)["callback"]
    finally:
        torch.set_num_threads(default)
    ratio, spread = summarize(ratios)
    bare_rate = statistics.median(bare_rates)
    label = f"{name}, {threads or default} thread(s), {bare_rate:.0f} steps/s bare"
    return Row(label, ratio, "x bare", spread, f">= {TARGET}", ratio >= TARGET)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["mlp", "vgg", "both"], default="both")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=0, help="steps per fit (default per model)")
    args = parser.parse_args()
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore")
    names = ["mlp", "vgg"] if args.model == "both" else [args.model]
    rows = []
    for name in names:
        steps = args.steps or {"mlp": 400, "vgg": 120}[name]
        skip = min(20, steps // 4)
        for threads in (None, 1):
            rows.append(measure(name, steps, skip, args.rounds, threads))
            print(rows[-1].cells(), flush=True)
    print_table("TuiconsoleCallback vs the same Lightning fit without it (steps/s)", rows)
    save("lightning_overhead", rows, {"torch": torch.__version__, "lightning": pl.__version__})


if __name__ == "__main__":
    main()
