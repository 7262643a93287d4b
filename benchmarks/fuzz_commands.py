"""Fuzz: unrestricted command lines against a real run; how many end it.

    python -m benchmarks.fuzz_commands [--lines 10000] [--seed 0]

Random lines over the whole grammar (every torch.optim class name, every
hyper-parameter key the classes take, and value edges: 0, negatives, subnormals,
float32's limits, 1e308, nan, inf, booleans, tuples), each applied through the
trainer's own command path with a real training step after it, on vgg-style and
Adam runs with a LambdaLR schedule. A run is *lost* if a step ends in ERROR. The
README's reliability figures come from here; the test suite runs a bounded
version (tests/reliability/test_accepted_commands.py).
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path

from tests.reliability.helpers import loader_spec, sync_trainer
from tests.reliability.test_accepted_commands import random_line
from tuiconsole.engine.snapshot import RunState


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lines", type=int, default=10_000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    tried = accepted = lost = runs = 0
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as d:
        per_run = 500
        while tried < args.lines:
            runs += 1
            optimizer = "sgd" if runs % 2 else "adam"
            t = sync_trainer(loader_spec(optimizer, "lambda"), Path(d) / f"r{runs}", nan="ignore")
            for _ in range(min(per_run, args.lines - tried)):
                line = random_line(rng)
                tried += 1
                accepted += t.apply_now(line).ok
                t.step_now(1)
                if t.state == RunState.ERROR:
                    lost += 1
                    print(f"LOST after {line!r}: {t.error}")
                    break
            t.close()
    dt = time.perf_counter() - t0
    print(f"{tried} lines tried, {accepted} accepted, {lost} run(s) lost ({runs} runs, {dt:.0f} s)")


if __name__ == "__main__":
    main()
