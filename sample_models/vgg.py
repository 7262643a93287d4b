"""A small VGG-style CNN trained with per-sub-network learning rates (the seed's "method 1").

The optimizer gets one param group per sub-network: ``features`` (the conv blocks) at the
default, small lr and ``classifier`` (the fully connected head) at a larger one::

    optim.SGD([{'params': model.features.parameters()},
               {'params': model.classifier.parameters(), 'lr': 1e-2}], lr=..., momentum=0.9)

so in the console the two groups show up as ``features`` and ``classifier``.

The data is synthetic, seeded and made here (no downloads): 10 classes of 3x32x32 images,
each class a fixed smooth random colour pattern ("template": a pattern shared by all classes
plus a fainter class-specific one), shown at a random contrast, shifted by a few pixels and
buried in noise. CrossEntropyLoss wants integer class indices, so the labels are a
LongTensor. On a 2-core CPU the loss starts falling after ~75 steps (a few seconds) and eval
accuracy is far above chance after 2 epochs. ``classifier`` contains Dropout, so the train
loss stays above the eval loss (eval runs under model.eval()).

Run it with ``tuiconsole run sample_models/vgg.py``.
"""

import torch
import torch.nn.functional as F
from torch import nn, optim
from torch.utils.data import DataLoader, TensorDataset

NUM_CLASSES = 10
IMAGE_SIZE = 32
TRAIN_SIZE = 5000
EVAL_SIZE = 1000
BATCH_SIZE = 64
MAX_SHIFT = 3  # pixels of random translation
NOISE = 1.5  # std of the additive Gaussian noise
COARSE = 8  # templates are random COARSExCOARSE grids, upsampled (smooth)
SEPARATION = 0.5  # size of the class-specific part of a template vs the shared part

epochs = 100


def make_templates(gen: torch.Generator) -> torch.Tensor:
    """One smooth random 3-channel pattern per class: a pattern shared by all classes plus a
    smaller class-specific one (so classes look alike and the task takes a while to learn)."""
    size = IMAGE_SIZE + 2 * MAX_SHIFT  # room to crop shifted views

    def smooth(n: int) -> torch.Tensor:
        coarse = torch.randn(n, 3, COARSE, COARSE, generator=gen)
        t = F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
        t = t - t.mean(dim=(1, 2, 3), keepdim=True)
        return t / t.std(dim=(1, 2, 3), keepdim=True)

    return smooth(1) + SEPARATION * smooth(NUM_CLASSES)


def make_images(templates: torch.Tensor, n: int, gen: torch.Generator):
    """n noisy, shifted, contrast-jittered views of random class templates."""
    labels = torch.randint(0, NUM_CLASSES, (n,), generator=gen)
    # A random crop offset per image, done as one gather (fast; no Python loop over images).
    dy = torch.randint(0, 2 * MAX_SHIFT + 1, (n,), generator=gen)
    dx = torch.randint(0, 2 * MAX_SHIFT + 1, (n,), generator=gen)
    ar = torch.arange(IMAGE_SIZE)
    rows = (dy[:, None] + ar[None, :])[:, None, :, None]  # n,1,H,1
    cols = (dx[:, None] + ar[None, :])[:, None, None, :]  # n,1,1,W
    src = templates[labels]  # n,3,S,S
    chan = torch.arange(3)[None, :, None, None]
    idx_n = torch.arange(n)[:, None, None, None]
    images = src[idx_n, chan, rows, cols]  # n,3,H,W
    contrast = torch.empty(n, 1, 1, 1).uniform_(0.5, 1.5, generator=gen)
    images = contrast * images + NOISE * torch.randn(images.shape, generator=gen)
    return images.contiguous(), labels  # labels: int64 (LongTensor), as CrossEntropyLoss needs


def conv_block(c_in: int, c_out: int) -> list[nn.Module]:
    return [
        nn.Conv2d(c_in, c_out, kernel_size=3, padding=1),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    ]


class SmallVGG(nn.Module):
    def __init__(self, num_classes: int = NUM_CLASSES):
        super().__init__()
        # 3x32x32 -> 16x16x16 -> 32x8x8 -> 64x4x4
        self.features = nn.Sequential(*conv_block(3, 16), *conv_block(16, 32), *conv_block(32, 64))
        # Same shape as the seed's classifier: [0] and [3] are Linear layers.
        self.classifier = nn.Sequential(
            nn.Linear(64 * 4 * 4, 128),
            nn.ReLU(inplace=True),
            nn.Dropout(0.5),
            nn.Linear(128, 128),
            nn.ReLU(inplace=True),
            nn.Dropout(0.5),
            nn.Linear(128, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        return self.classifier(torch.flatten(x, 1))


_gen = torch.Generator().manual_seed(1234)  # data is the same whatever the runner's seed
_templates = make_templates(_gen)
_train = TensorDataset(*make_images(_templates, TRAIN_SIZE, _gen))
_eval = TensorDataset(*make_images(_templates, EVAL_SIZE, _gen))

model = SmallVGG()

# The seed's method 1: one group per sub-network; features uses the outer (default) lr.
optimizer = optim.SGD(
    [
        {"params": model.features.parameters()},
        {"params": model.classifier.parameters(), "lr": 1e-2},
    ],
    lr=2e-3,
    momentum=0.9,
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
