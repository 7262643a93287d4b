"""Raises inside training_step at the 5th step (for exit-code tests)."""

import torch
from torch import nn

model = nn.Linear(4, 2)
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
criterion = nn.CrossEntropyLoss()
train_loader = [(torch.randn(8, 4), torch.randint(0, 2, (8,))) for _ in range(10)]
calls = 0


def training_step(model, batch, criterion):
    global calls
    calls += 1
    if calls == 5:
        raise ValueError("bad batch 5")
    x, y = batch
    return criterion(model(x), y)
