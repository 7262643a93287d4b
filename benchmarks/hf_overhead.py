"""What the Hugging Face callback costs: a Trainer's train() with it vs. without it.

    python -m benchmarks.hf_overhead [--rounds 5] [--steps 80] [--model sample|tiny]

Both variants train the same model (sample_models/hf_tiny.py's GPT-2, or a 1-layer,
16-wide one for the worst case: the smaller the step, the larger our share) from
the same initial weights on the same data, in this process, interleaved A B A B
(benchmarks.common). The rate is steps/s in the steady state: from the end of step
``--warmup`` to the end of the last step, timed by a callback ahead of ours, so a
figure of 1.000 means the callback costs nothing per step. Once per train() it also
costs its begin (run dir, journal header) and end (the final checkpoint); those are
printed beside the table, not in it. Measured at torch's default thread count and
at 1 thread. The callback runs with ``listen=False`` (no socket server thread).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
from transformers import (  # noqa: E402
    GPT2Config,
    GPT2LMHeadModel,
    PrinterCallback,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)
from transformers.utils import logging as hf_logging  # noqa: E402

from benchmarks.common import Row, interleaved_ratios, print_table, save, summarize  # noqa: E402
from tuiconsole.hf import TuiconsoleCallback  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "sample_models"))
import hf_tiny  # noqa: E402


class Clock(TrainerCallback):
    """Stamps the end of step ``warmup`` and of the last step."""

    def __init__(self, warmup: int) -> None:
        self.warmup = warmup
        self.start = self.end = 0.0
        self.steps = 0

    def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        now = time.perf_counter()
        if state.global_step == self.warmup:
            self.start = now
        self.end, self.steps = now, state.global_step - self.warmup

    def rate(self) -> float:
        return self.steps / (self.end - self.start)


def model_for(size: str) -> GPT2LMHeadModel:
    torch.manual_seed(0)
    if size == "sample":
        return hf_tiny.tiny_gpt2()
    config = GPT2Config(
        vocab_size=hf_tiny.VOCAB,
        n_positions=hf_tiny.SEQ,
        n_embd=16,
        n_layer=1,
        n_head=2,
        bos_token_id=0,
        eos_token_id=0,
    )
    return GPT2LMHeadModel(config)


class Bench:
    def __init__(self, size: str, steps: int, warmup: int, work: Path) -> None:
        self.size, self.steps, self.warmup, self.work = size, steps, warmup, work
        self.data = hf_tiny.Counting(4096, seed=1)
        self.runs = 0
        # train() wall time outside the timed steps (setup, warmup steps, the end)
        self.fixed: dict[bool, list[float]] = {False: [], True: []}
        self.inside: list[float] = []  # seconds in each boundary of the callback
        self.step_times: list[float] = []  # seconds per step, bare runs

    def timed(self, callback: TuiconsoleCallback) -> TuiconsoleCallback:
        """Adds the time spent in the callback's on_step_end (its boundary) to inside."""
        boundary = callback.on_step_end

        def on_step_end(*args: Any, **kwargs: Any) -> None:
            began = time.perf_counter()
            boundary(*args, **kwargs)
            self.inside.append(time.perf_counter() - began)

        callback.on_step_end = on_step_end  # type: ignore[method-assign]
        return callback

    def train(self, steered: bool) -> float:
        self.runs += 1
        clock = Clock(self.warmup)
        callbacks: list[TrainerCallback] = [clock]
        if steered:
            run_dir = self.work / f"run{self.runs}"
            callbacks.append(self.timed(TuiconsoleCallback(run_dir=run_dir, listen=False)))
        args = TrainingArguments(
            output_dir=str(self.work / "out"),
            max_steps=self.steps,
            per_device_train_batch_size=32,
            learning_rate=3e-3,
            logging_strategy="no",
            save_strategy="no",
            report_to="none",
            disable_tqdm=True,
            use_cpu=True,
            seed=0,
        )
        trainer = Trainer(
            model=model_for(self.size), args=args, train_dataset=self.data, callbacks=callbacks
        )
        trainer.pop_callback(PrinterCallback)  # its metrics line after each train()
        began = time.perf_counter()
        trainer.train()
        took = time.perf_counter() - began
        if self.runs > 2:  # not the warmup pair (the first Trainer in the process sets up more)
            self.fixed[steered].append(took - (clock.end - clock.start))
            if not steered:
                self.step_times.append(1 / clock.rate())
        return clock.rate()


def measure(size: str, steps: int, warmup: int, rounds: int, threads: int | None) -> Row:
    saved = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        with tempfile.TemporaryDirectory(prefix="hf_overhead-") as work:
            bench = Bench(size, steps, warmup, Path(work))
            ratios = interleaved_ratios(
                lambda: bench.train(False), {"callback": lambda: bench.train(True)}, rounds
            )
    finally:
        torch.set_num_threads(saved)
    value, spread = summarize(ratios["callback"])
    fixed = statistics.median(bench.fixed[True]) - statistics.median(bench.fixed[False])
    inside = statistics.median(bench.inside)
    step = statistics.median(bench.step_times)
    label = f"{size} model, {threads or saved} thread(s)"
    print(
        f"{label}: ratios {[round(r, 3) for r in ratios['callback']]}; a step {step * 1e3:.2f} ms, "
        f"in the callback {inside * 1e6:.0f} us a step (median, {inside / step:.2%}); once "
        f"per train(), begin + end: {fixed * 1e3:.0f} ms (difference of medians)",
        flush=True,
    )
    return Row(f"TuiconsoleCallback, {label}", value, "x bare", spread, ">= 0.95", value >= 0.95)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=80, help="optimizer steps per train()")
    parser.add_argument("--warmup", type=int, default=20, help="steps before the clock starts")
    parser.add_argument("--model", choices=("sample", "tiny"), default="sample")
    options = parser.parse_args()
    hf_logging.set_verbosity_error()
    rows = [
        measure(options.model, options.steps, options.warmup, options.rounds, threads)
        for threads in (None, 1)
    ]
    print_table(f"Hugging Face callback overhead ({options.steps} steps per run)", rows)
    save(f"hf_overhead-{options.model}", rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
