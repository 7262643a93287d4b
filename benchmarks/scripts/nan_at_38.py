"""A tiny run whose 38th batch is NaN (benchmarks/gpu_check.sh: where a NaN is found)."""

import torch
from torch import nn

model = nn.Linear(4, 2)
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
criterion = nn.CrossEntropyLoss()
g = torch.Generator().manual_seed(0)
train_loader = [
    (torch.randn(8, 4, generator=g), torch.randint(0, 2, (8,), generator=g)) for _ in range(60)
]
train_loader[37] = (train_loader[37][0] * float("nan"), train_loader[37][1])
