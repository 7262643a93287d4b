"""A training script as it runs on a GPU server: mixed precision, gradient clipping and
gradient accumulation, AdamW with a per-step warm-up + cosine schedule.

A small Transformer encoder (2 layers, d_model 64) reads sequences of 32 tokens and
says which token occurs most often in each (10 classes). The data is synthetic, seeded
and made here (no downloads): each sequence draws its tokens around a randomly chosen
"majority" token, so the task is learnable and the loss falls within a few hundred steps.

How each step is taken comes from four script names (engine/step.py; the command line
overrides each: ``--amp``, ``--grad-clip``, ``--accumulate``, ``--compile``):

- ``amp = "bf16"``: the forward and loss under ``torch.autocast`` in bfloat16, on CUDA
  and on the CPU (where it runs, but 4-5x slower than float32 on CPUs without bf16
  units: ``--amp off`` there).
  On an older GPU without bf16, ``--amp fp16`` uses a ``torch.amp.GradScaler``.
- ``grad_clip = 1.0``: the gradients' total norm clipped to 1.0 before each optimizer
  step; the console shows the last norm and how often steps were clipped. Live:
  ``clip 0.5``, ``clip off``.
- ``accumulate = 4``: each optimizer step averages 4 micro-batches of 16 (an effective
  batch of 64); ``step`` counts optimizer steps. Live: ``accumulate 8``.
- ``compile = False``: ``--compile`` compiles the model with ``torch.compile`` (the first
  step waits for it; the console says "compiling").

Run it with ``tuiconsole run sample_models/gpu_server.py`` (CUDA if there is one, else
the CPU), e.g. ``--device cuda:1 --accumulate 8 --compile`` on a GPU server.
"""

import math

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

VOCAB = 16
SEQ_LEN = 32
NUM_CLASSES = 10  # the majority token is one of the first 10
TRAIN_SIZE = 4096
EVAL_SIZE = 1024
MICRO_BATCH = 16
D_MODEL = 64
WARMUP_STEPS = 30

epochs = 20
amp = "bf16"
grad_clip = 1.0
accumulate = 4
compile = False


def make_data(n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """n sequences whose most frequent token is the label (tokens >= 10 are noise)."""
    labels = torch.randint(0, NUM_CLASSES, (n,), generator=gen)
    tokens = torch.randint(0, VOCAB, (n, SEQ_LEN), generator=gen)
    majority = torch.rand(n, SEQ_LEN, generator=gen) < 0.3
    tokens = torch.where(majority, labels[:, None], tokens)
    counts = torch.nn.functional.one_hot(tokens, VOCAB).sum(1)[:, :NUM_CLASSES]
    return tokens, counts.argmax(1)  # ties: the smallest token, as argmax takes it


class Classifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, D_MODEL)
        self.position = nn.Parameter(torch.randn(SEQ_LEN, D_MODEL) * 0.02)
        layer = nn.TransformerEncoderLayer(
            D_MODEL, nhead=4, dim_feedforward=2 * D_MODEL, dropout=0.1, batch_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)
        self.head = nn.Sequential(nn.LayerNorm(D_MODEL), nn.Linear(D_MODEL, NUM_CLASSES))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.encoder(self.embed(tokens) + self.position)
        return self.head(x.mean(dim=1))


_gen = torch.Generator().manual_seed(2024)  # the same data whatever the run's seed
_train = TensorDataset(*make_data(TRAIN_SIZE, _gen))
_eval = TensorDataset(*make_data(EVAL_SIZE, _gen))

model = Classifier()

# No weight decay on biases, norms and the position table (the usual GPU-server recipe).
_decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and n != "position"]
_no_decay = [p for n, p in model.named_parameters() if p.dim() < 2 or n == "position"]
optimizer = torch.optim.AdamW(
    [{"params": _decay, "weight_decay": 0.05}, {"params": _no_decay, "weight_decay": 0.0}],
    lr=1e-3,
    betas=(0.9, 0.95),
)

# Per optimizer step: linear warm-up, then cosine down to 10% over the run.
_steps = epochs * (TRAIN_SIZE // MICRO_BATCH) // accumulate


def _schedule(step: int) -> float:
    if step < WARMUP_STEPS:
        return (step + 1) / WARMUP_STEPS
    progress = min(1.0, (step - WARMUP_STEPS) / max(1, _steps - WARMUP_STEPS))
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _schedule)
scheduler_interval = "step"

criterion = nn.CrossEntropyLoss()

train_loader = DataLoader(
    _train,
    batch_size=MICRO_BATCH,
    shuffle=True,
    drop_last=True,
    generator=torch.Generator().manual_seed(0),
)
eval_loader = DataLoader(_eval, batch_size=256)
