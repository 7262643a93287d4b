"""A deeper model (a small ResNet, 100+ modules) with Adam, a per-step lr schedule and
param groups built like the seed's "method 2".

Method 2 picks a few "special layers" by ``id()`` and gives them their own lr; every other
parameter goes into a base group at the default lr::

    special_layers = nn.ModuleList([model.head[0], model.head[3]])
    special_ids = set(map(id, special_layers.parameters()))
    base_params = [p for p in model.parameters() if id(p) not in special_ids]
    optimizer = Adam([{'params': base_params}, {'params': special_layers.parameters(), 'lr': ...}])

``base_params`` is a list on purpose: the seed uses ``filter(...)``, a one-shot iterator that
is empty the second time anyone walks it.

The lr schedule is a linear warm-up then a cosine decay, stepped after every optimizer step
(``scheduler_interval = "step"``). It is a LambdaLR, so it keeps going (at its floor) if the
run is longer than planned, e.g. with ``--epochs``.

The data is synthetic and seeded (no downloads): 3x16x16 images of stripes, 10 classes = 5
orientations x 2 frequencies, with a random phase, a random colour and noise, so the class is
in the orientation and spacing, not in where or what colour the stripes are.

Run it with ``tuiconsole run sample_models/resnet_adam.py``.
"""

import math

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR
from torch.utils.data import DataLoader, TensorDataset

NUM_CLASSES = 10  # 5 orientations x 2 stripe frequencies
IMAGE_SIZE = 16
TRAIN_SIZE = 4096
EVAL_SIZE = 1024
BATCH_SIZE = 64
NOISE = 1.0
WIDTHS = (8, 16, 32)  # channels of the three stages
BLOCKS_PER_STAGE = 6
WARMUP_STEPS = 100

epochs = 10


def make_stripes(n: int, gen: torch.Generator):
    labels = torch.randint(0, NUM_CLASSES, (n,), generator=gen)
    angle = (labels % 5).float() * (math.pi / 5)  # 0, 36, 72, 108, 144 degrees
    freq = torch.where(labels < 5, 1.5, 3.0) / IMAGE_SIZE * 2 * math.pi  # cycles per image
    phase = torch.rand(n, generator=gen) * 2 * math.pi
    coords = torch.arange(IMAGE_SIZE, dtype=torch.float32)
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    proj = xx * angle.cos()[:, None, None] + yy * angle.sin()[:, None, None]  # n,H,W
    stripes = torch.cos(freq[:, None, None] * proj + phase[:, None, None])
    colour = torch.randn(n, 3, 1, 1, generator=gen)
    noise = NOISE * torch.randn(n, 3, IMAGE_SIZE, IMAGE_SIZE, generator=gen)
    images = colour * stripes[:, None] + noise
    return images, labels  # labels: int64 (LongTensor), as CrossEntropyLoss needs


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.relu2 = nn.ReLU(inplace=True)
        self.shortcut = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


def make_stage(c_in: int, c_out: int, blocks: int, stride: int) -> nn.Sequential:
    layers = [BasicBlock(c_in, c_out, stride)]
    layers += [BasicBlock(c_out, c_out) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


class SmallResNet(nn.Module):
    def __init__(self, widths=WIDTHS, blocks=BLOCKS_PER_STAGE, num_classes=NUM_CLASSES):
        super().__init__()
        w1, w2, w3 = widths
        self.stem = nn.Sequential(
            nn.Conv2d(3, w1, 3, padding=1, bias=False), nn.BatchNorm2d(w1), nn.ReLU(inplace=True)
        )
        self.stage1 = make_stage(w1, w1, blocks, stride=1)  # 16x16
        self.stage2 = make_stage(w1, w2, blocks, stride=2)  # 8x8
        self.stage3 = make_stage(w2, w3, blocks, stride=2)  # 4x4
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        # Like the seed's classifier: [0] and [3] are the Linear layers picked out below.
        self.head = nn.Sequential(
            nn.Linear(w3, 64), nn.ReLU(inplace=True), nn.Dropout(0.2), nn.Linear(64, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stage3(self.stage2(self.stage1(self.stem(x))))
        return self.head(self.pool(x))


def warmup_cosine(step: int, total: int, warmup: int = WARMUP_STEPS, floor: float = 0.05) -> float:
    """lr multiplier: linear warm-up to 1, cosine down to `floor` at `total`, then flat."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


_gen = torch.Generator().manual_seed(1234)  # data is the same whatever the runner's seed
_train = TensorDataset(*make_stripes(TRAIN_SIZE, _gen))
_eval = TensorDataset(*make_stripes(EVAL_SIZE, _gen))

model = SmallResNet()

# The seed's method 2: the two Linear layers of the head get a larger lr, picked by id().
special_layers = nn.ModuleList([model.head[0], model.head[3]])
special_ids = set(map(id, special_layers.parameters()))
base_params = [p for p in model.parameters() if id(p) not in special_ids]  # a list, not a filter
optimizer = torch.optim.Adam(
    [
        {"params": base_params},
        {"params": special_layers.parameters(), "lr": 3e-3},
    ],
    lr=1e-3,
)

criterion = nn.CrossEntropyLoss()

train_loader = DataLoader(
    _train,
    batch_size=BATCH_SIZE,
    shuffle=True,
    drop_last=True,
    generator=torch.Generator().manual_seed(0),
)
eval_loader = DataLoader(_eval, batch_size=256)

_total_steps = epochs * len(train_loader)
scheduler = LambdaLR(optimizer, lambda step: warmup_cosine(step, _total_steps))
scheduler_interval = "step"
