"""A tiny training script for the remote tests: two named groups, SGD with momentum.

Each step naps a few milliseconds so a run left going in the background costs
little CPU while the other tests run (the tests only need it to keep stepping).
"""

import time

import torch
from torch import nn, optim
from torch.utils.data import DataLoader, TensorDataset

_gen = torch.Generator().manual_seed(0)
_x = torch.randn(256, 8, generator=_gen)
_y = (_x[:, :4].sum(dim=1, keepdim=True) > 0).float()

model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1))
optimizer = optim.SGD(
    [
        {"params": model[0].parameters(), "name": "body"},
        {"params": model[2].parameters(), "name": "head", "lr": 0.05},
    ],
    lr=0.01,
    momentum=0.9,
)
criterion = nn.BCEWithLogitsLoss()
train_loader = DataLoader(TensorDataset(_x, _y), batch_size=32, shuffle=False)
epochs = 1_000_000


def training_step(model, batch, criterion):
    time.sleep(0.004)
    inputs, targets = batch
    return criterion(model(inputs), targets)
