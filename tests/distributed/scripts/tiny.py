"""A tiny contract script for 2-rank gloo jobs: an MLP on 256 random samples."""

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

g = torch.Generator().manual_seed(1)
x = torch.randn(256, 8, generator=g)
y = (x.sum(dim=1) > 0).long()
model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(0.1), nn.Linear(16, 2))
model[0].name = "features"
optimizer = torch.optim.SGD(
    [
        {"params": model[0].parameters(), "name": "features"},
        {"params": model[3].parameters(), "name": "classifier"},
    ],
    lr=0.05,
    momentum=0.9,
)
criterion = nn.CrossEntropyLoss()
train_loader = DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True)
eval_loader = DataLoader(TensorDataset(x[:64], y[:64]), batch_size=32)
epochs = 50
