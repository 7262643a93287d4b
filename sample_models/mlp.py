"""A tiny MLP that runs thousands of steps per second on a CPU (used by the benchmarks).

Two param groups, one per sub-network like the seed's "method 1": ``body`` (the hidden
layers) at the default lr and ``head`` (the output layer) at a larger one, SGD with momentum.

The data is synthetic and seeded: 32-dimensional Gaussian inputs labelled by a fixed random
linear "teacher" (4 classes), so the classes are linearly separable and the loss keeps falling
for a long time. ``epochs`` is large so a run lasts as long as a benchmark wants (pass
``--max-steps``/``--epochs`` to cut it short).

Run it with ``tuiconsole run sample_models/mlp.py``.
"""

import torch
from torch import nn, optim

IN_FEATURES = 32
HIDDEN = 64
NUM_CLASSES = 4
TRAIN_SIZE = 8192
EVAL_SIZE = 2048
BATCH_SIZE = 64

epochs = 1000


class BatchLoader:
    """A lightweight, re-iterable stand-in for a DataLoader over a TensorDataset.

    A DataLoader costs tens of microseconds per batch (sampler, fetch of each index, collate),
    which is more than a step of this model takes. Here the data already lives in two tensors:
    each epoch does one seeded permutation and then yields slices (views, no copies), so
    batching costs next to nothing and the benchmarks measure the trainer, not the loader.
    Same batches in the same order on every run, whatever the runner's seed.
    """

    def __init__(self, inputs, targets, batch_size, shuffle=False, seed=0):
        self.inputs, self.targets = inputs, targets
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return -(-len(self.inputs) // self.batch_size)  # number of batches (ceil)

    def __iter__(self):
        x, y = self.inputs, self.targets
        if self.shuffle:
            perm = torch.randperm(len(x), generator=self.generator)
            x, y = x[perm], y[perm]
        for start in range(0, len(x), self.batch_size):
            yield x[start : start + self.batch_size], y[start : start + self.batch_size]


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            nn.Linear(IN_FEATURES, HIDDEN),
            nn.ReLU(),
            nn.Linear(HIDDEN, HIDDEN),
            nn.ReLU(),
        )
        self.head = nn.Linear(HIDDEN, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def make_data(n: int, teacher: torch.Tensor, gen: torch.Generator):
    x = torch.randn(n, IN_FEATURES, generator=gen)
    y = (x @ teacher).argmax(dim=1)  # int64 class indices, as CrossEntropyLoss needs
    return x, y


_gen = torch.Generator().manual_seed(1234)  # data is the same whatever the runner's seed
_teacher = torch.randn(IN_FEATURES, NUM_CLASSES, generator=_gen)

model = MLP()

optimizer = optim.SGD(
    [
        {"params": model.body.parameters()},
        {"params": model.head.parameters(), "lr": 5e-2},
    ],
    lr=2e-2,
    momentum=0.9,
)

criterion = nn.CrossEntropyLoss()

train_loader = BatchLoader(*make_data(TRAIN_SIZE, _teacher, _gen), BATCH_SIZE, shuffle=True)
eval_loader = BatchLoader(*make_data(EVAL_SIZE, _teacher, _gen), 512)
