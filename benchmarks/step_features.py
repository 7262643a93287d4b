"""The training step with mixed precision, clipping and accumulation on: the engine vs a
hand-written loop doing the same.

    python -m benchmarks.step_features [--rounds 5] [--steps 6] [--device cpu] [--threads 1]

The vgg sample (sample_models/vgg.py: its model, SGD and DataLoader). Every optimizer step
of both variants: ``zero_grad``; 4 micro-batches, each forward + loss under
``torch.autocast`` (bf16), ``(loss / 4).backward()``; ``clip_grad_norm_(params, 1.0)``;
``optimizer.step()``. The engine runs it as ``tuiconsole run --headless --amp bf16
--grad-clip 1.0 --accumulate 4`` does, in-process: the trainer's thread (engine/step.py's
step: the grad norm and the clipped count kept on the device, the loss recorded and, on
CPU, checked each step) and the headless printer polling its snapshots. The hand-written
loop runs in this thread. Interleaved (A B A B ..., benchmarks/common.py), the figure is
the engine's optimizer steps/s over the loop's. Target: <= 1% slower (>= 0.99).

A second row does the same in float32 (``--amp off``): on a CPU without bf16 units the
bf16 step is several times slower (emulated), so a fixed cost per step is a smaller
share of it there than on a GPU; float32 shows it larger.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from collections.abc import Callable
from pathlib import Path

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

ROOT = Path(__file__).resolve().parent.parent
ACCUMULATE = 4
GRAD_CLIP = 1.0


def hand_loop(spec: TrainingSpec, steps: int, amp: str | None) -> float:
    """What a user writes for the same step; optimizer steps/s."""
    model, crit, opt = spec.model, spec.criterion, spec.optimizer
    device = next(model.parameters()).device
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp or "")
    params = list(model.parameters())
    it = endless(spec.train_loader)
    on_cpu = device.type == "cpu"
    t0 = time.perf_counter()
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        for _ in range(ACCUMULATE):
            inputs, targets = next(it)
            if not on_cpu:
                inputs = inputs.to(device, non_blocking=True)
                targets = targets.to(device, non_blocking=True)
            ctx = torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext()
            with ctx:
                loss = crit(model(inputs), targets)
            (loss / ACCUMULATE).backward()
        torch.nn.utils.clip_grad_norm_(params, GRAD_CLIP)
        opt.step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return steps / (time.perf_counter() - t0)


def engine(spec: TrainingSpec, steps: int, amp: str | None) -> float:
    """The trainer thread + the headless printer, as `run --headless` with the options."""
    device = next(spec.model.parameters()).device
    config = RunConfig(
        max_steps=steps,
        log_every=DEFAULT_LOG_EVERY,
        log_min_interval=DEFAULT_LOG_MIN_INTERVAL,
        device=str(device),
        amp=amp or "off",
        grad_clip=GRAD_CLIP,
        accumulate=ACCUMULATE,
    )
    return headless_rate(Trainer(spec, config))


def measure(spec: TrainingSpec, steps: int, rounds: int, amp: str | None) -> Row:
    variants: dict[str, Callable[[], float]] = {"engine": lambda: engine(spec, steps, amp)}
    ratios = interleaved_ratios(lambda: hand_loop(spec, steps, amp), variants, rounds)
    median, spread = summarize(ratios["engine"])
    what = f"vgg, amp {amp or 'off'} + clip {GRAD_CLIP:g} + accumulate {ACCUMULATE} ({steps} steps)"
    return Row(
        f"{what}: engine", median, "x bare", spread, ">= 0.990 (<= 1% slower)", median >= 0.99
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument(
        "--steps",
        type=int,
        help="optimizer steps per timed run (default: cpu 10 in bf16, 30 in float32; else 200)",
    )
    ap.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:1, ...")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument(
        "--amp", nargs="+", default=["bf16", "off"], help="rows to measure (default bf16 off)"
    )
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    spec = load_script(ROOT / "sample_models" / "vgg.py")
    spec.model.to(resolve_device(args.device))  # in place: the optimizer keeps its parameters
    rows = []
    for amp in [None if a == "off" else a for a in args.amp]:
        steps = args.steps or (200 if args.device != "cpu" else 10 if amp else 30)
        rows.append(measure(spec, steps, args.rounds, amp))
    print_table(
        f'amp + clip + accumulate: the engine vs the hand-written loop ("x bare": its '
        f"steps/s; {args.device}, {torch.get_num_threads()} threads, median of "
        f"{args.rounds} interleaved rounds)",
        rows,
    )
    save("step_features", rows, {"device": args.device, "rounds": args.rounds})
    return 0 if all(r.passed is not False for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
