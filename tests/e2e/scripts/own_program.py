"""A program with a loop of its own, steered through the library API (tests/e2e)."""

import argparse
import json
import sys

import torch
from torch import nn

import tuiconsole

parser = argparse.ArgumentParser()
parser.add_argument("--epochs", type=int, default=50)
parser.add_argument("--out", required=True)
parser.add_argument("--fail-at", type=int, default=0)
parser.add_argument("--fail-early", action="store_true")
args = parser.parse_args()
if args.fail_early:
    raise ValueError("no data here")

torch.manual_seed(0)
model = nn.Sequential(nn.Linear(6, 12), nn.Tanh(), nn.Linear(12, 3))
optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
scheduler = torch.optim.lr_scheduler.StepLR(optimizer, 25, 0.5)
g = torch.Generator().manual_seed(1)
X = torch.randn(64, 6, generator=g)
Y = torch.randint(0, 3, (64,), generator=g)
BATCHES = 8


def evaluate():
    return nn.functional.cross_entropy(model(X), Y)


def main():
    with tuiconsole.steer(model, optimizer, scheduler=scheduler, evaluate=evaluate) as steer:
        for step in range(steer.start_step, args.epochs * BATCHES):
            if args.fail_at and step + 1 == args.fail_at:
                raise RuntimeError(f"broken batch at step {step + 1}")
            b = step % BATCHES
            x, y = X[b * 8 : b * 8 + 8], Y[b * 8 : b * 8 + 8]
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            steer.step(loss)
    torch.save(model.state_dict(), args.out + ".pt")
    with open(args.out, "w") as f:
        json.dump(
            {
                "argv": sys.argv[1:],
                "name": __name__,
                "steps": steer.steps,
                "lr": optimizer.param_groups[0]["lr"],
                "class": type(optimizer).__name__,
                "groups": len(optimizer.param_groups),
            },
            f,
        )


if __name__ == "__main__":
    main()
