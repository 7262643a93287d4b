"""The baseline of benchmarks/process.py: a script's model trained by a plain loop.

    python benchmarks/bare_loop.py SCRIPT STEPS
    torchrun --nproc-per-node 2 benchmarks/bare_loop.py SCRIPT STEPS   # ddp_overhead.py

Under torchrun it is the plain DDP loop: a gloo (CPU) process group, the model in
DistributedDataParallel, each rank its shard of the data (a DistributedSampler,
``set_epoch`` per epoch); rank 0 prints.

Runs SCRIPT as a user's own training script would run (after the seed tuiconsole sets),
then trains its model in this, the main, thread: no tuiconsole at all. Prints
``{"rate": steps/s}`` over steps 50..STEPS, the window benchmarks/process.py reads from
the engine's metrics records.
"""

from __future__ import annotations

import json
import os
import runpy
import sys
import time

import torch
import torch.distributed as dist

FIRST = 50


def main() -> None:
    script, steps = sys.argv[1], int(sys.argv[2])
    torch.manual_seed(0)  # what `tuiconsole run --seed 0` does before the script runs
    ns = runpy.run_path(script, run_name="__tuiconsole__")
    model, optimizer, criterion = ns["model"], ns["optimizer"], ns["criterion"]
    loader = ns["train_loader"]
    world = int(os.environ.get("WORLD_SIZE", "1"))
    forward = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel
        from torch.utils.data import DataLoader, DistributedSampler

        dist.init_process_group("gloo")
        forward = DistributedDataParallel(model)
        sampler = DistributedSampler(loader.dataset, shuffle=True, seed=0)
        loader = DataLoader(loader.dataset, batch_size=loader.batch_size, sampler=sampler)
    model.train()
    step, t_first, epoch = 0, 0.0, 0
    while step < steps:
        if world > 1:
            sampler.set_epoch(epoch)
        epoch += 1
        for inputs, targets in loader:
            optimizer.zero_grad(set_to_none=True)
            criterion(forward(inputs), targets).backward()
            optimizer.step()
            step += 1
            if step == FIRST:
                t_first = time.time()
            if step == steps:
                break
    rate = (steps - FIRST) / (time.time() - t_first)
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps({"rate": rate}))


if __name__ == "__main__":
    main()
