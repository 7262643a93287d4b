"""A tiny GPT-2 trained by a Hugging Face ``Trainer``, steered by tuiconsole.

Nothing is downloaded: the model is built from a ``GPT2Config`` (2 layers, 64 wide,
~0.1M parameters) and the data is synthetic. Each sequence counts up modulo 32 from a
random start with a random stride of 1, 2 or 3 (``5 8 11 14 ...``): after two tokens
the rest follows, so the loss falls from ln(32) = 3.47 to under 0.2 in a few
hundred steps, on towards ln(3) / 31 = 0.035 (the second token stays one guess in
three), and the next-token accuracy of ``eval`` climbs towards 0.98. It starts in
a few seconds on a CPU and by default (100 epochs, 12,800 steps) trains for minutes,
long enough to steer.

    python sample_models/hf_tiny.py [--epochs N] [--max-steps N]
    tuiconsole run sample_models/hf_tiny.py [--max-steps N] [-- --epochs N]

Run with ``python`` it is served on a socket (``tuiconsole attach`` reaches it);
under ``tuiconsole run`` the console opens on it and ``run``'s own options
(``--max-steps``, ``--nan``, ``--paused``, ``--run-dir``...) apply. Try ``lr``
on ``transformer.h.1``, ``split head lm_head``... (GPT-2 ties ``lm_head`` to
``transformer.wte``: they are one parameter), ``eval``, ``checkpoint``, ``stop``.
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here needs the hub
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
from transformers import (  # noqa: E402
    GPT2Config,
    GPT2LMHeadModel,
    Trainer,
    TrainingArguments,
    set_seed,
)

from tuiconsole.hf import TuiconsoleCallback  # noqa: E402

VOCAB = 32
SEQ = 32
STRIDES = (1, 2, 3)


class Counting(torch.utils.data.Dataset):
    """``n`` sequences ``start, start + s, start + 2s, ...`` (mod VOCAB), seeded."""

    def __init__(self, n: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        start = torch.randint(0, VOCAB, (n, 1), generator=g)
        stride = torch.tensor(STRIDES)[torch.randint(0, len(STRIDES), (n, 1), generator=g)]
        self.ids = (start + stride * torch.arange(SEQ)) % VOCAB

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def tiny_gpt2() -> GPT2LMHeadModel:
    config = GPT2Config(
        vocab_size=VOCAB,
        n_positions=SEQ,
        n_embd=64,
        n_layer=2,
        n_head=4,
        bos_token_id=0,
        eos_token_id=0,
    )
    return GPT2LMHeadModel(config)


def argmax(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Keep only the predicted tokens of an eval batch (not 32 logits per token)."""
    return logits.argmax(-1)


def accuracy(prediction) -> dict[str, float]:
    """Next-token accuracy: the prediction at t is for the label at t + 1."""
    predicted, labels = prediction.predictions, prediction.label_ids
    return {"accuracy": float((predicted[:, :-1] == labels[:, 1:]).mean())}


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=100, help="passes over the data (100)")
    parser.add_argument(
        "--max-steps",
        type=int,
        default=None,
        help="end after this many steps (with python; under tuiconsole run, run's own option)",
    )
    parser.add_argument("--train-size", type=int, default=4096, help="training sequences")
    parser.add_argument("--output-dir", default="runs/hf_tiny-trainer", help="Trainer output")
    options, _unknown = parser.parse_known_args(argv)
    return options


def main(argv: list[str]) -> None:
    options = parse(argv)
    set_seed(0)
    args = TrainingArguments(
        output_dir=options.output_dir,
        num_train_epochs=options.epochs,
        per_device_train_batch_size=32,
        per_device_eval_batch_size=128,
        learning_rate=3e-3,
        warmup_steps=50,
        weight_decay=0.01,
        logging_steps=100,
        eval_strategy="no",  # eval when you ask for it: the `eval` command
        save_strategy="no",  # `checkpoint` writes tuiconsole's; set "steps" for the Trainer's too
        report_to="none",
        disable_tqdm=True,
        use_cpu=not torch.cuda.is_available(),
        dataloader_num_workers=0,
        seed=0,
    )
    steering = TuiconsoleCallback(max_steps=options.max_steps)
    trainer = Trainer(
        model=tiny_gpt2(),
        args=args,
        train_dataset=Counting(options.train_size, seed=1),
        eval_dataset=Counting(512, seed=2),
        compute_metrics=accuracy,
        preprocess_logits_for_metrics=argmax,
        callbacks=[steering],
    )
    trainer.train()


if __name__ == "__main__":
    main(sys.argv[1:])
