"""A Hugging Face Trainer on 2 CPU ranks under torchrun (accelerate's DDP, gloo), steered
on every rank. A tiny GPT-2 from a config (no download) learns counting sequences.
When train() has returned, each rank writes what the Trainer counted to
TUICONSOLE_RANK_DUMP/fit-rank<N>.json.
"""

import argparse
import json
import os
from pathlib import Path

import torch
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

from tuiconsole.hf import TuiconsoleCallback

parser = argparse.ArgumentParser()
parser.add_argument("--epochs", type=int, default=60)
args = parser.parse_args()
VOCAB, SEQ = 16, 8


class Counting(torch.utils.data.Dataset):
    def __init__(self, n: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        start = torch.randint(0, VOCAB, (n, 1), generator=g)
        self.ids = (start + torch.arange(SEQ)) % VOCAB

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict:
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


torch.manual_seed(0)
config = GPT2Config(
    vocab_size=VOCAB,
    n_positions=SEQ,
    n_embd=16,
    n_layer=1,
    n_head=2,
    bos_token_id=0,
    eos_token_id=0,
)
folder = os.environ.get("TUICONSOLE_RANK_DUMP")
trainer = Trainer(
    model=GPT2LMHeadModel(config),
    args=TrainingArguments(
        output_dir=str(Path(folder or ".", "hf-out")),
        report_to="none",
        disable_tqdm=True,
        save_strategy="no",
        logging_strategy="no",
        num_train_epochs=args.epochs,
        per_device_train_batch_size=4,
        per_device_eval_batch_size=8,
        learning_rate=1e-3,
        use_cpu=True,
        seed=0,
        ddp_find_unused_parameters=False,
    ),
    train_dataset=Counting(64, seed=1),  # 8 steps an epoch on each of 2 ranks
    eval_dataset=Counting(32, seed=2),
    callbacks=[TuiconsoleCallback()],
)
trainer.train()
if folder:
    rank = trainer.args.process_index
    record = {"global_step": trainer.state.global_step, "epoch": trainer.state.epoch}
    Path(folder, f"fit-rank{rank}.json").write_text(json.dumps(record))
