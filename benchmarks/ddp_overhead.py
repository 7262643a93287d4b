"""2-rank gloo DDP on the CPU: the engine under torchrun vs a bare DDP loop, whole process.

    python -m benchmarks.ddp_overhead [--model vgg|mlp] [--rounds 3] [--steps N]

Both are torchrun jobs of 2 ranks on this machine, interleaved (bare, engine, bare, ...):

- bare: ``torchrun --nproc-per-node 2 benchmarks/bare_loop.py SCRIPT N``: DDP, a
  DistributedSampler, the plain ``zero_grad; loss.backward(); step`` loop;
- engine: ``tuiconsole run --nproc-per-node 2 SCRIPT --headless --max-steps N``: the
  same DDP model and sampler, rank 0 journaling and serving, the ticks between the
  ranks (engine/distributed.py), the per-step NaN flag (an all_reduce of one int).

The figure is the engine's steps/s over the mean of the bare jobs just before and
after it, over steps 50..N (rank 0's metrics records, or the bare loop's own clock):
start-up is outside it. torchrun sets OMP_NUM_THREADS=1 per rank, for both.
The target: at most 2% slower (>= 0.98 x bare).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.common import Row, interleaved_ratios, print_table, save, summarize
from benchmarks.process import env_for, metrics_rate

ROOT = Path(__file__).resolve().parent.parent
TARGET = 0.98
TIMEOUT = 900.0


def torchrun(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone"] + [
        "--nproc-per-node",
        "2",
        *args,
    ]


def bare(script: Path, steps: int) -> float:
    out = subprocess.run(
        torchrun(str(ROOT / "benchmarks" / "bare_loop.py"), str(script), str(steps)),
        env=env_for("default"),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=True,
    )
    return float(json.loads(out.stdout.strip().splitlines()[-1])["rate"])


def engine(script: Path, steps: int) -> float:
    with tempfile.TemporaryDirectory() as d:
        run_dir = Path(d) / "run"
        subprocess.run(
            [sys.executable, "-m", "tuiconsole", "run", "--nproc-per-node", "2", str(script)]
            + ["--headless", "--max-steps", str(steps), "--run-dir", str(run_dir)],
            env=env_for("default"),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=TIMEOUT,
            check=True,
        )
        return metrics_rate(run_dir, steps)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", choices=["vgg", "resnet_adam"], default="vgg")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=None)
    args = parser.parse_args()
    script = ROOT / "sample_models" / f"{args.model}.py"
    steps = args.steps or 300
    ratios = interleaved_ratios(
        lambda: bare(script, steps), {"engine": lambda: engine(script, steps)}, args.rounds
    )
    value, spread = summarize(ratios["engine"])
    rows = [
        Row(
            f"2-rank gloo DDP {args.model}, whole process",
            value,
            "x bare",
            spread,
            f">= {TARGET}",
            value >= TARGET,
        )
    ]
    print_table("torchrun: the engine vs a bare DDP loop (CPU, gloo, 2 ranks)", rows)
    save(f"ddp_overhead_{args.model}", rows, {"ratios": ratios, "steps": steps})


if __name__ == "__main__":
    main()
