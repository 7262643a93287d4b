"""A tiny contract script for 2-rank gloo jobs: an MLP on 256 random samples.

TINY_NAN=I makes sample I's inputs NaN (unshuffled, rank r takes samples r, r+2, ...).
"""

import os

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

g = torch.Generator().manual_seed(1)
x = torch.randn(256, 8, generator=g)
y = (x.sum(dim=1) > 0).long()
if "TINY_NAN" in os.environ:
    x[int(os.environ["TINY_NAN"])] = float("nan")
model = nn.Sequential(
    nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Dropout(0.1), nn.Linear(16, 2)
)
optimizer = torch.optim.SGD(
    [
        {"params": [*model[0].parameters(), *model[2].parameters()], "name": "features"},
        {"params": model[5].parameters(), "name": "classifier"},
    ],
    lr=0.05,
    momentum=0.9,
)
criterion = nn.CrossEntropyLoss()
train_loader = DataLoader(TensorDataset(x, y), batch_size=16, shuffle="TINY_NAN" not in os.environ)
eval_loader = DataLoader(TensorDataset(x[:64], y[:64]), batch_size=32)
epochs = 50
