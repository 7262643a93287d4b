"""A tiny two-group classifier that trains in well under a second."""

import torch
from torch import nn

g = torch.Generator().manual_seed(1)
X = torch.randn(512, 8, generator=g)
y = (X[:, 0] > 0).long()
model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
optimizer = torch.optim.SGD(
    [{"params": model[0].parameters()}, {"params": model[2].parameters(), "lr": 0.05}],
    lr=0.01,
    momentum=0.9,
)
criterion = nn.CrossEntropyLoss()
train_loader = [(X[i : i + 32], y[i : i + 32]) for i in range(0, 512, 32)]
eval_loader = train_loader[:4]
epochs = 5
