"""Training-rate overhead of tuiconsole vs. a bare PyTorch loop (and vs. peers).

    python -m benchmarks.overhead [--model mlp|vgg|both] [--rounds 7] [--steps N]

Every variant trains the same model on the same data in this process, and is
timed right next to a bare loop (A B A B ...). The figure is the ratio of steps/s
(1.000 = as fast as the bare loop). Measure your own model the same way:
``python -m benchmarks.overhead --script path/to/your_script.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import (
    Row,
    endless,
    headless_rate,
    interleaved_ratios,
    print_table,
    save,
    summarize,
)
from tuiconsole.engine.trainer import (
    DEFAULT_LOG_EVERY,
    DEFAULT_LOG_MIN_INTERVAL,
    RunConfig,
    Trainer,
    resolve_device,
)
from tuiconsole.script import TrainingSpec, load_script
from tuiconsole.session import LocalSession

ROOT = Path(__file__).resolve().parent.parent
DEVNULL = open(os.devnull, "w")  # noqa: SIM115 - lives for the process


def model_device(spec: TrainingSpec) -> torch.device:
    """Where every variant trains: the model was moved there once (see measure)."""
    return next(spec.model.parameters()).device


def step_fn(spec: TrainingSpec) -> Callable[[Any], torch.Tensor]:
    model, crit = spec.model, spec.criterion
    device = model_device(spec)
    on_cpu = device.type == "cpu"

    def step(batch: Any) -> torch.Tensor:
        opt = spec.optimizer
        opt.zero_grad(set_to_none=True)
        inputs, targets = batch
        if not on_cpu:  # as the engine does: the batch goes where the model is
            inputs = inputs.to(device, non_blocking=True)
            targets = targets.to(device, non_blocking=True)
        loss = crit(model(inputs), targets)
        loss.backward()
        opt.step()
        return loss

    return step


def timed_loop(
    spec: TrainingSpec, steps: int, after_step: Callable[[int, torch.Tensor], None]
) -> float:
    step, it = step_fn(spec), endless(spec.train_loader)
    t0 = time.perf_counter()
    for i in range(steps):
        after_step(i, step(next(it)))
    synchronize(spec)  # an accelerator's queued work is part of the time
    return steps / (time.perf_counter() - t0)


def synchronize(spec: TrainingSpec) -> None:
    device = model_device(spec)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bare(spec: TrainingSpec, steps: int) -> float:
    return timed_loop(spec, steps, lambda i, loss: None)


def run_config(spec: TrainingSpec, steps: int) -> RunConfig:
    """What `tuiconsole run SCRIPT --max-steps N` uses (no --log-every given), on the
    model's device."""
    return RunConfig(
        max_steps=steps,
        log_every=DEFAULT_LOG_EVERY,
        log_min_interval=DEFAULT_LOG_MIN_INTERVAL,
        device=str(model_device(spec)),
    )


def engine_headless(spec: TrainingSpec, steps: int) -> float:
    """The trainer thread + the headless printer polling snapshots, as `--headless` runs."""
    return headless_rate(Trainer(spec, run_config(spec, steps)))


def console_mounted(spec: TrainingSpec, steps: int) -> float:
    """The full Textual console (headless driver) mounted and refreshing at 10 Hz."""
    from tuiconsole.ui.app import ConsoleApp

    trainer = Trainer(spec, run_config(spec, steps))
    session = LocalSession(trainer)

    def finished_at() -> float:
        trainer.wait_done()
        return time.perf_counter()

    async def main() -> float:
        app = ConsoleApp(session, refresh_hz=10.0, script_name="bench")
        async with app.run_test(size=(120, 40)) as pilot:
            await pilot.pause()
            # The end is taken the moment the run finishes, as engine_headless does
            # (polling it every 50 ms from the loop added ~25 ms, ~2%, to a 1.2 s run).
            done = asyncio.get_running_loop().run_in_executor(None, finished_at)
            t0 = time.perf_counter()
            trainer.start()
            end = await done
            return trainer.step / (end - t0)

    rate = asyncio.run(main())
    trainer.close()
    return rate


def tqdm_loop(spec: TrainingSpec, steps: int) -> float:
    from tqdm import tqdm

    bar = tqdm(total=steps, file=DEVNULL, mininterval=0.1)
    rate = timed_loop(spec, steps, lambda i, loss: bar.update(1))
    bar.close()
    return rate


def rich_loop(spec: TrainingSpec, steps: int) -> float:
    from rich.console import Console
    from rich.progress import Progress

    with Progress(console=Console(file=DEVNULL, force_terminal=True, width=100)) as progress:
        task = progress.add_task("train", total=steps)
        return timed_loop(spec, steps, lambda i, loss: progress.update(task, advance=1))


def tensorboard_loop(spec: TrainingSpec, steps: int) -> float:
    from torch.utils.tensorboard import SummaryWriter

    with tempfile.TemporaryDirectory() as d:
        writer = SummaryWriter(d)
        rate = timed_loop(spec, steps, lambda i, loss: writer.add_scalar("loss", loss.item(), i))
        writer.close()
    return rate


def available(module: str) -> bool:
    try:
        __import__(module)
    except Exception:
        return False
    return True


def measure(script: Path, steps: int, rounds: int, peers: bool, device: str) -> list[Row]:
    spec = load_script(script)
    # Every variant trains on this device: move the model once (in place: the optimizer
    # keeps its parameters), as the engine would.
    spec.model.to(resolve_device(device if device != "auto" else spec.device))
    variants: dict[str, Callable[[], float]] = {
        "engine, headless": lambda: engine_headless(spec, steps)
    }
    if available("tuiconsole.ui.app"):
        variants["console mounted"] = lambda: console_mounted(spec, steps)
    if peers:
        for name, fn, mod in (
            ("tqdm per step", tqdm_loop, "tqdm"),
            ("rich.progress per step", rich_loop, "rich.progress"),
            ("TensorBoard add_scalar(loss.item())", tensorboard_loop, "torch.utils.tensorboard"),
        ):
            if available(mod):
                variants[name] = lambda fn=fn: fn(spec, steps)
            else:
                print(f"skipping {name}: {mod} not installed", file=sys.stderr)
    ratios = interleaved_ratios(lambda: bare(spec, steps), variants, rounds)
    engine_ratio = summarize(ratios["engine, headless"])[0]
    rows = []
    for name, rs in ratios.items():
        median, spread = summarize(rs)
        if name == "engine, headless":
            target, ok = ">= 0.990 (<= 1% slower)", median >= 0.99
        elif name == "console mounted":
            target, ok = ">= 0.970 (<= 3% slower)", median >= 0.97
        else:
            target, ok = f"< engine ({engine_ratio:.3f})", median < engine_ratio
        rows.append(Row(f"{script.stem}: {name}", median, "x bare", spread, target, ok))
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", choices=["mlp", "vgg", "both"], default="both")
    ap.add_argument("--script", type=Path, help="measure your own training script instead")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--steps", type=int, help="steps per timed run (default: ~1.5 s of work)")
    ap.add_argument("--no-peers", action="store_true")
    ap.add_argument(
        "--device",
        default="cpu",
        help="cpu (default), cuda, cuda:1, ... or auto (the script's `device`, else cuda if "
        "there is one); every variant uses it",
    )
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads for every variant (default 1: on a 2-core machine a "
        "second OpenMP thread fights the console/printer thread and adds noise, not speed)",
    )
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    scripts = (
        [args.script]
        if args.script
        else [
            ROOT / "sample_models" / f"{m}.py"
            for m in (["mlp", "vgg"] if args.model == "both" else [args.model])
        ]
    )
    rows: list[Row] = []
    for script in scripts:
        accel = args.device not in ("cpu",)
        steps = args.steps or (3000 if script.stem == "mlp" else (600 if accel else 60))
        rows += measure(
            script,
            steps,
            args.rounds,
            peers=not args.no_peers and script.stem == "mlp",
            device=args.device,
        )
    print_table(
        f"Overhead vs. a bare loop ({torch.get_num_threads()} threads, median of "
        f"{args.rounds} interleaved rounds)",
        rows,
    )
    save(
        "overhead",
        rows,
        {"threads": torch.get_num_threads(), "rounds": args.rounds, "device": args.device},
    )
    return 0 if all(r.passed is not False for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
