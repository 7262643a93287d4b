"""2-rank gloo DDP on the CPU, in-process: the engine's step vs a bare DDP step.

    python -m torch.distributed.run --standalone --nproc-per-node 2 benchmarks/ddp_inprocess.py \
        [MODEL] [--rounds 5] [--steps 40]

Each rank holds one engine (a Trainer joined to the others: DDP, the ticks, the per-step
NaN flag on the CPU) and times, interleaved in the same processes, blocks of ``--steps``
bare DDP steps (``zero_grad; loss.backward(); step`` on the same DDP model and batches)
and blocks of the engine's own steps (``_apply_pending`` + ``_train_step``: its ticks,
NaN agreement, loss record, metrics and snapshot bookkeeping). Rank 0 prints the ratio of
steps/s (engine over bare; median over rounds and its spread) and the tick interval K it
chose. Process start-up and scheduling noise of whole jobs are out of it; the whole-process
figure is benchmarks/ddp_overhead.py.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import ddp_steps  # noqa: E402
from tuiconsole.engine.trainer import RunConfig, Trainer  # noqa: E402
from tuiconsole.script import load_script  # noqa: E402

parser = argparse.ArgumentParser()
parser.add_argument("model", nargs="?", default="vgg")
parser.add_argument("--rounds", type=int, default=5)
parser.add_argument("--steps", type=int, default=40)
args = parser.parse_args()

spec = load_script(f"sample_models/{args.model}.py")
t = Trainer(spec, RunConfig(max_steps=10**7, snapshot_interval=0.1))
t.prepare()
assert t._dist is not None, "run it under torchrun with 2 ranks"
bare_step, engine_step = ddp_steps(
    t, [b for _, b in zip(range(16), t.spec.train_loader, strict=False)]
)


def rate(step: object) -> float:
    started = time.perf_counter()
    for _ in range(args.steps):
        step()  # type: ignore[operator]
    return args.steps / (time.perf_counter() - started)


rate(bare_step)
rate(engine_step)
ratios = []
for _ in range(args.rounds):
    before = rate(bare_step)
    engine = rate(engine_step)
    after = rate(bare_step)
    ratios.append(engine / ((before + after) / 2))
if int(os.environ["RANK"]) == 0:
    print(
        f"{args.model} 2-rank gloo DDP, in-process, {torch.get_num_threads()} thread(s)/rank: "
        f"engine {statistics.median(ratios):.3f} x bare ({min(ratios):.3f}..{max(ratios):.3f}), "
        f"ticks every {t._dist.every} steps"
    )
t.close()
