"""A Lightning fit with strategy="ddp" on the CPU under torchrun, steered on every rank.

Lightning makes the process group and the DDP wrapper itself (torchrun's environment:
devices and num_nodes from it); TuiconsoleCallback steers each rank. When the fit has
returned, each rank writes what Lightning counted to TUICONSOLE_RANK_DUMP/fit-rank<N>.json.
"""

import argparse
import json
import os
from pathlib import Path

import lightning.pytorch as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from tuiconsole.lightning import TuiconsoleCallback

parser = argparse.ArgumentParser()
parser.add_argument("--epochs", type=int, default=60)
args = parser.parse_args()


class Tiny(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Linear(8, 16), nn.ReLU())
        self.classifier = nn.Linear(16, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        out = self(x)
        self.log("val_loss", nn.functional.cross_entropy(out, y), sync_dist=True)
        self.log("val_acc", (out.argmax(1) == y).float().mean(), sync_dist=True)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)


g = torch.Generator().manual_seed(1)
x = torch.randn(320, 8, generator=g)
y = (x.sum(dim=1) > 0).long()
train = DataLoader(TensorDataset(x[:256], y[:256]), batch_size=16)  # 8 batches a rank
val = DataLoader(TensorDataset(x[256:], y[256:]), batch_size=16)
local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
trainer = pl.Trainer(
    max_epochs=args.epochs,
    accelerator="cpu",
    devices=local,
    num_nodes=int(os.environ.get("WORLD_SIZE", "1")) // local,
    strategy="ddp",
    callbacks=[TuiconsoleCallback()],
    logger=False,
    enable_checkpointing=False,
    enable_progress_bar=False,
    enable_model_summary=False,
    num_sanity_val_steps=0,
    check_val_every_n_epoch=1000,  # the eval command validates; Lightning does not
)
trainer.fit(Tiny(), train, val)
folder = os.environ.get("TUICONSOLE_RANK_DUMP")
if folder:
    record = {"global_step": trainer.global_step, "should_stop": trainer.should_stop}
    Path(folder, f"fit-rank{trainer.global_rank}.json").write_text(json.dumps(record))
