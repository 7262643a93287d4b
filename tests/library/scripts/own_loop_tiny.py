"""A tiny loop of its own, run as `python own_loop_tiny.py RUN_DIR [MODE]` by the tests.

MODE "serve" (default): trains until stopped (a few ms nap per step, so a run left
going costs little CPU); "interrupt": at step 5 it says so on stdout and naps 3 s
inside its forward pass (for a Ctrl+C); "misuse": hands steer.step() a string.
"""

import sys
import time

import torch
from torch import nn

import tuiconsole

run_dir, mode = sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "serve"
torch.manual_seed(0)
gen = torch.Generator().manual_seed(1)
x = torch.randn(256, 8, generator=gen)
y = (x[:, :4].sum(dim=1, keepdim=True) > 0).float()
model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1))
optimizer = torch.optim.SGD(
    [
        {"params": model[0].parameters(), "name": "body"},
        {"params": model[2].parameters(), "name": "head", "lr": 0.05},
    ],
    lr=0.01,
    momentum=0.9,
)
criterion = nn.BCEWithLogitsLoss()
steer = tuiconsole.steer(model, optimizer, run_dir=run_dir)
for step in range(steer.start_step, 1_000_000):
    i = step % 8
    if mode == "interrupt" and step == 5:
        print("waiting in the forward pass", flush=True)
        time.sleep(3)
    loss = criterion(model(x[i * 32 : (i + 1) * 32]), y[i * 32 : (i + 1) * 32])
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    time.sleep(0.004)
    steer.step("a string" if mode == "misuse" else loss)
