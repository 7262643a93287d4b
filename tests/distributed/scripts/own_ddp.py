"""A loop of its own under torchrun: its process group, its DDP, its sampler, steered."""

import argparse

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

import tuiconsole

parser = argparse.ArgumentParser()
parser.add_argument("--epochs", type=int, default=40)
args = parser.parse_args()

dist.init_process_group("gloo")
torch.manual_seed(0)
g = torch.Generator().manual_seed(1)
x = torch.randn(256, 8, generator=g)
y = (x.sum(dim=1) > 0).long()
model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
ddp = DistributedDataParallel(model)
optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
data = TensorDataset(x, y)
sampler = DistributedSampler(data, shuffle=True, seed=0)
loader = DataLoader(data, batch_size=16, sampler=sampler)
criterion = nn.CrossEntropyLoss()


def evaluate() -> dict:
    out = model(x[:64])
    return {"loss": criterion(out, y[:64]), "accuracy": (out.argmax(1) == y[:64]).float().mean()}


steer = tuiconsole.steer(ddp, optimizer, evaluate=evaluate)
for epoch in range(args.epochs):
    sampler.set_epoch(epoch)
    for inputs, targets in loader:
        optimizer.zero_grad()
        loss = criterion(ddp(inputs), targets)
        loss.backward()
        optimizer.step()
        steer.step(loss)
steer.close()
dist.destroy_process_group()
