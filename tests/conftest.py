"""Suite-wide settings."""

import torch

# Tiny models on a small, busy machine: one intra-op thread avoids OpenMP threads
# spinning against the trainer/console threads (10x slower steps under load).
# Subprocesses that the tests start keep torch's default.
torch.set_num_threads(1)
