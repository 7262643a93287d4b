"""The baseline of benchmarks/process.py: a script's model trained by a plain loop.

    python benchmarks/bare_loop.py SCRIPT STEPS

Runs SCRIPT as a user's own training script would run (after the seed tuiconsole sets),
then trains its model in this, the main, thread: no tuiconsole at all. Prints
``{"rate": steps/s}`` over steps 50..STEPS, the window benchmarks/process.py reads from
the engine's metrics records.
"""

from __future__ import annotations

import json
import runpy
import sys
import time

import torch

FIRST = 50


def main() -> None:
    script, steps = sys.argv[1], int(sys.argv[2])
    torch.manual_seed(0)  # what `tuiconsole run --seed 0` does before the script runs
    ns = runpy.run_path(script, run_name="__tuiconsole__")
    model, optimizer, criterion = ns["model"], ns["optimizer"], ns["criterion"]
    loader = ns["train_loader"]
    model.train()
    step, t_first = 0, 0.0
    while step < steps:
        for inputs, targets in loader:
            optimizer.zero_grad(set_to_none=True)
            criterion(model(inputs), targets).backward()
            optimizer.step()
            step += 1
            if step == FIRST:
                t_first = time.time()
            if step == steps:
                break
    print(json.dumps({"rate": (steps - FIRST) / (time.time() - t_first)}))


if __name__ == "__main__":
    main()
