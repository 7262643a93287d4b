"""sample_models/vgg.py's small VGG and synthetic images, trained by PyTorch Lightning.

A LightningModule whose ``configure_optimizers`` gives one SGD param group per
sub-network (``features`` at 2e-3, ``classifier`` at 1e-2, momentum 0.9) and a
cosine lr schedule stepped every optimizer step, steered by
``TuiconsoleCallback``::

    python sample_models/lightning_vgg.py              # served: tuiconsole attach <id>
    tuiconsole run sample_models/lightning_vgg.py      # the console opens on it
    tuiconsole run sample_models/lightning_vgg.py -- --epochs 2

The data is vgg.py's (seeded, made here, no download: 10 classes of noisy,
shifted 3x32x32 colour patterns; 78 steps an epoch). On a 2-core CPU the loss
starts falling within the first epoch and val accuracy is far above chance
after 2; the default 150 epochs (11,700 steps) take minutes, time to steer it: ``lr
classifier *0.5``, ``split head classifier.6 lr=0.02``, ``eval`` (the module's
validation_step), ``checkpoint``, ``stop``.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from tuiconsole.lightning import TuiconsoleCallback

EPOCHS = 150


def _vgg() -> ModuleType:
    """sample_models/vgg.py, beside this file: its model class and its data."""
    path = Path(__file__).resolve().with_name("vgg.py")
    spec = importlib.util.spec_from_file_location("tuiconsole_sample_vgg", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


vgg = _vgg()


class LitVGG(pl.LightningModule):
    def __init__(self, steps: int) -> None:
        super().__init__()
        net = vgg.SmallVGG()
        # The parts as the module's own children: the groups are named after them.
        self.features = net.features
        self.classifier = net.classifier
        self.steps = steps  # for the cosine schedule

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        images, labels = batch
        return F.cross_entropy(self(images), labels)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        images, labels = batch
        logits = self(images)
        self.log("val_loss", F.cross_entropy(logits, labels))
        self.log("val_acc", (logits.argmax(1) == labels).float().mean())

    def on_validation_epoch_end(self) -> None:
        metrics = self.trainer.callback_metrics
        if "val_loss" in metrics:  # one line an epoch: it learns
            print(
                f"epoch {self.current_epoch + 1}: val_loss {float(metrics['val_loss']):.3f}, "
                f"val_acc {float(metrics['val_acc']):.3f}",
                flush=True,
            )

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.SGD(
            [
                {"params": self.features.parameters()},
                {"params": self.classifier.parameters(), "lr": 1e-2},
            ],
            lr=2e-3,
            momentum=0.9,
        )
        cosine = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=self.steps)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": cosine, "interval": "step"}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=EPOCHS, help=f"default {EPOCHS}")
    parser.add_argument("--batch-size", type=int, default=vgg.BATCH_SIZE)
    args, _ = parser.parse_known_args()  # under `tuiconsole run`, its options are its own
    if args.epochs < 1:
        parser.error("--epochs must be at least 1")

    pl.seed_everything(0, verbose=False)
    train = DataLoader(
        vgg._train,
        batch_size=args.batch_size,
        shuffle=True,
        drop_last=True,
        generator=torch.Generator().manual_seed(0),
    )
    val = DataLoader(vgg._eval, batch_size=256)
    model = LitVGG(steps=args.epochs * len(train))
    trainer = pl.Trainer(
        max_epochs=args.epochs,
        accelerator="auto",
        devices=1,
        callbacks=[TuiconsoleCallback()],
        logger=False,
        enable_checkpointing=False,  # tuiconsole's `checkpoint` and final checkpoint
        enable_model_summary=False,
        enable_progress_bar=sys.stderr.isatty(),  # under `tuiconsole run` stderr is a log
        num_sanity_val_steps=0,
    )
    trainer.fit(model, train, val)


if __name__ == "__main__":
    main()
