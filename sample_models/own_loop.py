"""A training loop of your own, steered with ``tuiconsole.steer`` (the library API).

The loop is plain PyTorch: forward, backward, ``optimizer.step()``, ``sched.step()``.
One call per step, ``steer.step(loss)``, is where the console's commands are applied
(lr, split, set, rebuild, pause, eval, checkpoint, stop) and journaled::

    with tuiconsole.steer(model, optimizer, scheduler=sched, evaluate=evaluate) as steer:
        for step in range(steer.start_step, total_steps):
            ...
            optimizer.step(); sched.step()
            steer.step(loss)

Run it either way:

    python sample_models/own_loop.py [--epochs N] [--max-steps N] [--resume CKPT]
    tuiconsole run sample_models/own_loop.py [--max-steps N] [--resume CKPT] [-- --epochs N]

The first serves the run on a private socket (stderr says how to ``tuiconsole attach``);
the second opens the console on it, and ``run``'s own options apply.

The model and data are those of sample_models/vgg.py, made smaller: a VGG-style CNN with
``features`` and ``classifier`` param groups, on synthetic 3x32x32 images of 10 classes
(a smooth random colour template per class, shifted, contrast-jittered and buried in
noise; seeded, nothing downloaded). It starts in seconds; the loss falls from 2.3 to
~1.5 in the first 150 steps and eval accuracy climbs from chance to ~80% in 6 epochs,
then on; the default 200 epochs (12,800 steps) take minutes on a CPU: time to steer it.

Resuming is exact: the batch of step N comes from step N alone (each epoch's shuffle is
seeded by its number), so a loop that starts at ``steer.start_step`` takes the very
batches the interrupted run would have; the checkpoint brings back the rest (model,
optimizer with its groups and class, scheduler, RNG).
"""

import argparse
import math

import torch
import torch.nn.functional as F
from torch import nn, optim

import tuiconsole

NUM_CLASSES = 10
IMAGE_SIZE = 32
TRAIN_SIZE = 4096
EVAL_SIZE = 1024
BATCH_SIZE = 64
STEPS_PER_EPOCH = TRAIN_SIZE // BATCH_SIZE
MAX_SHIFT = 3  # pixels of random translation
NOISE = 2.5  # std of the additive Gaussian noise
SEPARATION = 0.3  # size of the class-specific part of a template vs the shared part
WARMUP = 50  # steps of linear lr warm-up, then a cosine decay to the end


def make_images(n: int, templates: torch.Tensor, gen: torch.Generator):
    """n noisy, shifted, contrast-jittered views of random class templates."""
    labels = torch.randint(0, NUM_CLASSES, (n,), generator=gen)
    dy, dx = torch.randint(0, 2 * MAX_SHIFT + 1, (2, n), generator=gen)
    ar = torch.arange(IMAGE_SIZE)
    rows = (dy[:, None] + ar)[:, None, :, None]
    cols = (dx[:, None] + ar)[:, None, None, :]
    chan = torch.arange(3)[None, :, None, None]
    images = templates[labels][torch.arange(n)[:, None, None, None], chan, rows, cols]
    contrast = torch.empty(n, 1, 1, 1).uniform_(0.5, 1.5, generator=gen)
    return contrast * images + NOISE * torch.randn(images.shape, generator=gen), labels


def make_data():
    gen = torch.Generator().manual_seed(1234)  # the same data whatever the run's seed
    size = IMAGE_SIZE + 2 * MAX_SHIFT

    def smooth(n: int) -> torch.Tensor:  # random 8x8 colour grids, upsampled
        t = F.interpolate(
            torch.randn(n, 3, 8, 8, generator=gen), size=(size, size), mode="bilinear"
        )
        t = t - t.mean(dim=(1, 2, 3), keepdim=True)
        return t / t.std(dim=(1, 2, 3), keepdim=True)

    templates = smooth(1) + SEPARATION * smooth(NUM_CLASSES)  # alike: it takes a while
    return make_images(TRAIN_SIZE, templates, gen), make_images(EVAL_SIZE, templates, gen)


def conv_block(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(), nn.MaxPool2d(2)]


class SmallVGG(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        # 3x32x32 -> 16x16x16 -> 32x8x8 -> 64x4x4
        self.features = nn.Sequential(*conv_block(3, 16), *conv_block(16, 32), *conv_block(32, 64))
        self.classifier = nn.Sequential(
            nn.Linear(64 * 4 * 4, 128),
            nn.ReLU(),
            nn.Dropout(0.5),
            nn.Linear(128, NUM_CLASSES),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


def main() -> None:
    parser = argparse.ArgumentParser(description="A VGG-style CNN in a loop of its own.")
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--max-steps", type=int, help="end the run at this step")
    parser.add_argument("--resume", help="a checkpoint of this script's run to go on from")
    args, _ = parser.parse_known_args()  # other arguments are the caller's business
    total_steps = args.epochs * STEPS_PER_EPOCH

    torch.manual_seed(0)
    (train_x, train_y), (eval_x, eval_y) = make_data()
    model = SmallVGG()
    criterion = nn.CrossEntropyLoss()
    # One param group per sub-network: the console shows `features` and `classifier`.
    optimizer = optim.SGD(
        [
            {"params": model.features.parameters(), "name": "features"},
            {"params": model.classifier.parameters(), "name": "classifier", "lr": 0.02},
        ],
        lr=0.01,
        momentum=0.9,
        weight_decay=5e-4,
    )

    def warmup_cosine(step: int) -> float:
        if step < WARMUP:
            return (step + 1) / WARMUP
        return 0.5 * (1 + math.cos(math.pi * min(1.0, step / max(1, total_steps))))

    scheduler = optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine)

    def evaluate() -> dict[str, torch.Tensor]:
        """The `eval` command runs this (under model.eval() and torch.no_grad())."""
        logits = torch.cat([model(x) for x in eval_x.split(256)])
        return {
            "loss": criterion(logits, eval_y),
            "accuracy": (logits.argmax(1) == eval_y).float().mean(),
        }

    with tuiconsole.steer(
        model,
        optimizer,
        scheduler=scheduler,
        evaluate=evaluate,
        max_steps=args.max_steps,
        resume=args.resume,
    ) as steer:
        print(f"own_loop: steps {steer.start_step}..{total_steps} ({args.epochs} epochs)")
        order = torch.empty(0, dtype=torch.long)
        for step in range(steer.start_step, total_steps):
            epoch, i = divmod(step, STEPS_PER_EPOCH)
            if i == 0 or step == steer.start_step:  # each epoch's shuffle, from its number
                order = torch.randperm(TRAIN_SIZE, generator=torch.Generator().manual_seed(epoch))
            batch = order[i * BATCH_SIZE : (i + 1) * BATCH_SIZE]
            loss = criterion(model(train_x[batch]), train_y[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            steer.step(loss)  # the step boundary: the console's commands apply here
            if i == STEPS_PER_EPOCH - 1:
                print(f"epoch {epoch + 1}/{args.epochs} done at step {step + 1}: loss {loss:.3f}")


if __name__ == "__main__":
    main()
