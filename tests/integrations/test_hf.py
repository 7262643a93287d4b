"""The Hugging Face Trainer callback, over real ``transformers.Trainer.train()`` runs.

Tiny GPT-2 models built from a config (no download), synthetic token data. Commands
go through the run's session as a front-end sends them; ``At`` submits them in the
training thread just before the tuiconsole callback's boundary of a given step, so
they are applied at that step, and the assertions read the real optimizer, the
journal and the Trainer's own state.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from transformers import (  # noqa: E402
    GPT2Config,
    GPT2LMHeadModel,
    Trainer,
    TrainerCallback,
    TrainerControl,
    TrainerState,
    TrainingArguments,
)

from tuiconsole.errors import StopTraining, TuiconsoleError  # noqa: E402
from tuiconsole.hf import TuiconsoleCallback  # noqa: E402

VOCAB, SEQ = 16, 8


class Counting(torch.utils.data.Dataset):
    """Token sequences that count up from a random start: next token = this + 1 (mod
    VOCAB), a pattern the model learns in a few hundred steps."""

    def __init__(self, n: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        start = torch.randint(0, VOCAB, (n, 1), generator=g)
        self.ids = (start + torch.arange(SEQ)) % VOCAB

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def tiny_gpt2() -> GPT2LMHeadModel:
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
    return GPT2LMHeadModel(config)


def make_trainer(
    tmp_path: Path,
    callbacks: list[TrainerCallback],
    *,
    eval_dataset: bool = True,
    model: torch.nn.Module | None = None,
    compute_metrics: Callable[..., dict[str, float]] | None = None,
    **args: Any,
) -> Trainer:
    settings: dict[str, Any] = {
        "output_dir": str(tmp_path / "out"),
        "report_to": "none",
        "disable_tqdm": True,
        "save_strategy": "no",
        "logging_strategy": "no",
        "max_steps": 8,
        "per_device_train_batch_size": 4,
        "per_device_eval_batch_size": 8,
        "learning_rate": 1e-3,
        "use_cpu": True,
        "seed": 0,
    }
    settings.update(args)
    return Trainer(
        model=model or tiny_gpt2(),
        args=TrainingArguments(**settings),
        train_dataset=Counting(64, seed=1),
        eval_dataset=Counting(16, seed=2) if eval_dataset else None,
        compute_metrics=compute_metrics,
        callbacks=callbacks,
    )


def steering(tmp_path: Path, **options: Any) -> TuiconsoleCallback:
    return TuiconsoleCallback(run_dir=tmp_path / "run", listen=False, **options)


class At(TrainerCallback):
    """At the end of step N (before the tuiconsole callback's boundary, which comes
    after it in the list), submit a command or call a probe."""

    def __init__(self, tc: TuiconsoleCallback, plan: dict[int, str | Callable[[], Any]]):
        self.tc, self.plan = tc, plan
        self.results: dict[str, Any] = {}  # command -> its future
        self.probed: dict[int, Any] = {}

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
    ) -> None:
        todo = self.plan.get(state.global_step)
        if isinstance(todo, str):
            assert self.tc.steer is not None
            self.results[todo] = self.tc.steer.session.submit(todo)
        elif todo is not None:
            self.probed[state.global_step] = todo()

    def result(self, command: str) -> Any:
        return self.results[command].result(timeout=30)


class Lrs(TrainerCallback):
    """The lrs of every group at each optimizer step, as that step used them; and
    whether accelerate skipped the step (fp16 overflow)."""

    def __init__(self) -> None:
        self.used: list[list[float]] = []
        self.skipped: list[bool] = []

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
    ) -> None:
        self.wrapper = kw["optimizer"]
        self.optimizer = kw["optimizer"].optimizer  # the torch optimizer in accelerate's wrapper
        self.optimizer.register_step_pre_hook(self._pre)
        self._taken = 0

    def _pre(self, optimizer: torch.optim.Optimizer, *_: Any) -> None:
        self._taken += 1

    def on_pre_optimizer_step(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
    ) -> None:
        self.used.append([float(g["lr"]) for g in self.optimizer.param_groups])

    def on_optimizer_step(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
    ) -> None:
        self.skipped.append(bool(self.wrapper.step_was_skipped))


def records(run_dir: Path, name: str = "journal.jsonl") -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / name).read_text().splitlines()]


def journal_step(run_dir: Path, at: At, command: str) -> int:
    """The step the journal names for ``command`` (by its canonical text)."""
    text = at.result(command).cmd
    (step,) = [r["step"] for r in records(run_dir) if r["type"] == "command" and r["cmd"] == text]
    return int(step)


def end_record(run_dir: Path) -> dict[str, Any]:
    (end,) = [r for r in records(run_dir) if r["type"] == "end"]
    return end


def adam_state(optimizer: torch.optim.Optimizer) -> dict[int, dict[str, Any]]:
    return {id(p): dict(s) for p, s in optimizer.state.items()}


# --------------------------------------------------------------------------- lr and state


def test_lr_lands_at_the_step_the_journal_names_and_keeps_adam_state(tmp_path: Path) -> None:
    tc = steering(tmp_path)
    lrs = Lrs()
    at = At(tc, {4: lambda: adam_state(lrs.optimizer), 5: "lr all 0.05"})
    trainer = make_trainer(tmp_path, [lrs, at, tc], lr_scheduler_type="constant")
    trainer.train()

    assert at.result("lr all 0.05").ok
    step = journal_step(tmp_path / "run", at, "lr all 0.05")
    assert step == 5
    # Optimizer steps 1..5 ran at the Trainer's lr, the ones after the journal's step at 0.05.
    assert [set(g) for g in lrs.used[:step]] == [{1e-3}] * step
    assert [set(g) for g in lrs.used[step:]] == [{0.05}] * (8 - step)
    # The very optimizer the Trainer holds, its Adam state the same tensors, still counting.
    assert lrs.optimizer is trainer.optimizer.optimizer
    before = at.probed[4]
    after = adam_state(lrs.optimizer)
    assert before.keys() == after.keys() and before
    for key, state in before.items():
        assert after[key]["exp_avg"] is state["exp_avg"]
        assert float(after[key]["step"]) == 8
    assert trainer.state.global_step == end_record(tmp_path / "run")["step"] == 8


def test_lr_under_the_trainers_linear_schedule_goes_on_in_proportion(tmp_path: Path) -> None:
    """HF's LambdaLR is attached to accelerate's wrapper: an lr edit still scales its
    base lrs, so the decay goes on from the new lr instead of snapping back."""
    tc = steering(tmp_path)
    lrs = Lrs()
    at = At(tc, {3: "lr all *4"})
    make_trainer(tmp_path, [lrs, at, tc], max_steps=10).train()  # linear decay to 0 over 10

    assert at.result("lr all *4").ok and journal_step(tmp_path / "run", at, "lr all *4") == 3
    schedule = [1e-3 * (10 - k) / 10 for k in range(10)]  # the lr of optimizer step k + 1
    for k, used in enumerate(lrs.used):
        expected = schedule[k] * (4 if k >= 3 else 1)
        assert used == pytest.approx([expected] * len(used), rel=1e-6), k


def test_split_makes_a_group_with_its_state_kept(tmp_path: Path) -> None:
    tc = steering(tmp_path)
    lrs = Lrs()
    command = "split emb transformer.wte lr=0.01"
    at = At(tc, {2: lambda: adam_state(lrs.optimizer), 3: command})
    trainer = make_trainer(tmp_path, [lrs, at, tc], lr_scheduler_type="constant")
    groups_before = len(trainer.create_optimizer().param_groups)
    trainer.optimizer = None  # let train() build its own, as it does by default
    trainer.train()

    assert at.result(command).ok, at.result(command).message
    assert journal_step(tmp_path / "run", at, command) == 3
    optimizer = trainer.optimizer.optimizer
    assert len(optimizer.param_groups) == groups_before + 1
    (emb,) = [g for g in optimizer.param_groups if g["name"] == "emb"]
    wte = trainer.model.transformer.wte.weight
    assert [id(p) for p in emb["params"]] == [id(wte)]
    # Its Adam state moved with it: the same moment tensor, stepped on through the end.
    assert optimizer.state[wte]["exp_avg"] is at.probed[2][id(wte)]["exp_avg"]
    assert float(optimizer.state[wte]["step"]) == 8
    # The new group trained at its own lr from the step after the split (constant schedule).
    index = optimizer.param_groups.index(emb)
    assert [u[index] for u in lrs.used[3:]] == [0.01] * 5


def test_rebuild_in_place_through_accelerate_and_the_schedule(tmp_path: Path) -> None:
    tc = steering(tmp_path)
    lrs = Lrs()
    command = "rebuild SGD momentum=0.9"
    at = At(tc, {4: command})
    trainer = make_trainer(tmp_path, [lrs, at, tc], max_steps=10)
    trainer.train()

    assert at.result(command).ok, at.result(command).message
    inner = trainer.optimizer.optimizer
    assert inner is lrs.optimizer  # the same object the Trainer and accelerate hold
    assert type(inner) is torch.optim.SGD
    assert all("momentum_buffer" in s and "exp_avg" not in s for s in inner.state.values())
    assert len(inner.state) == sum(1 for p in trainer.model.parameters())
    # HF's linear schedule still drives the lr after the rebuild.
    schedule = [1e-3 * (10 - k) / 10 for k in range(10)]
    assert [u[0] for u in lrs.used] == pytest.approx(schedule, rel=1e-6)
    assert trainer.state.global_step == 10


def test_fp16_grad_scaler_skipped_steps_and_a_rebuild(tmp_path: Path) -> None:
    """accelerate's fp16 path (a GradScaler in the AcceleratedOptimizer) on CPU: the
    Trainer's accelerator gets a real torch GradScaler, as it makes one on a GPU. With
    a huge initial scale the first steps overflow and are skipped (counted all the
    same), and a rebuild to another class must reach the scaler's step path."""
    tc = steering(tmp_path)
    lrs = Lrs()
    command = "rebuild SGD momentum=0.9"
    at = At(tc, {8: command})
    trainer = make_trainer(
        tmp_path, [lrs, at, tc], max_steps=12, max_grad_norm=0.0, optim="adamw_torch"
    )
    # fp32 on the CPU (accelerate 1.16 autocasts nothing here): only a scale near fp32's
    # limit overflows, for the first few steps, until the scaler backs off
    trainer.accelerator.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**127)
    trainer.train()

    assert lrs.skipped[0] and not lrs.skipped[-1]  # the case this test is about
    assert at.result(command).ok, at.result(command).message
    assert end_record(tmp_path / "run")["state"] == "FINISHED"
    inner = trainer.optimizer.optimizer
    assert type(inner) is torch.optim.SGD and trainer.optimizer.scaler is not None
    assert all("momentum_buffer" in s for s in inner.state.values()) and inner.state
    assert trainer.state.global_step == 12


# --------------------------------------------------------------------------- the loss


def test_the_loss_is_the_trainers_own_with_gradient_accumulation(tmp_path: Path) -> None:
    """One boundary per optimizer step, its loss summed over the micro-batches: the
    number the Trainer logs for that step. The per-group signals are measured once per
    optimizer step too (accelerate steps the torch optimizer once in 3 micro-batches)."""
    tc = steering(tmp_path, log_every=1, signal_every=1)
    trainer = make_trainer(
        tmp_path,
        [tc],
        max_steps=6,
        gradient_accumulation_steps=3,
        logging_strategy="steps",
        logging_steps=1,
    )
    trainer.train()

    ours = {r["step"]: r["loss"] for r in records(tmp_path / "run", "metrics.jsonl")}
    theirs = {e["step"]: e["loss"] for e in trainer.state.log_history if "loss" in e}
    assert sorted(theirs) == list(range(1, 7))
    assert {s: ours[s] for s in theirs} == pytest.approx(theirs, rel=1e-5)
    assert end_record(tmp_path / "run")["step"] == trainer.state.global_step == 6
    assert tc.steer is not None and tc.steer._run._record.signals.measured == 6
    signals = tc.steer.snapshot().signals
    assert signals and all(s.step == 6 and s.adam_step is not None for s in signals)  # AdamW
    lines = [r for r in records(tmp_path / "run", "metrics.jsonl") if r["type"] == "train"]
    assert all(v is not None for r in lines for v in r["grad_norm"].values())


# --------------------------------------------------------------------------- stop, max-steps


def test_stop_from_another_thread_ends_the_training(tmp_path: Path) -> None:
    tc = steering(tmp_path)
    trainer = make_trainer(tmp_path, [tc], max_steps=3000)
    answer: list[Any] = []

    def console() -> None:  # a front-end: submits once the run is under way
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            run = tc.steer
            if run is not None and run.snapshot().status.step >= 3:
                answer.append(run.session.submit("stop", source="test").result(timeout=60))
                return
            time.sleep(0.01)

    thread = threading.Thread(target=console)
    thread.start()
    trainer.train()
    thread.join()

    assert answer and answer[0].ok
    (stopped_at,) = [r["step"] for r in records(tmp_path / "run") if r.get("cmd") == "stop"]
    assert 3 <= stopped_at == trainer.state.global_step < 3000
    end = end_record(tmp_path / "run")
    assert end["state"] == "STOPPED" and end["step"] == stopped_at
    assert Path(end["checkpoint"]).is_file()
    assert "training_step" not in trainer.__dict__  # the loss hook is gone with the run


def test_max_steps_option_ends_the_trainer(tmp_path: Path) -> None:
    trainer = make_trainer(tmp_path, [steering(tmp_path, max_steps=5)], max_steps=50)
    trainer.train()

    assert trainer.state.global_step == 5
    end = end_record(tmp_path / "run")
    assert end["state"] == "FINISHED" and end["step"] == 5
    assert Path(end["checkpoint"]).is_file()


def test_a_nan_loss_under_nan_stop_ends_the_training_there(tmp_path: Path) -> None:
    model = tiny_gpt2()

    def poison(module: torch.nn.Module, inputs: Any, outputs: Any) -> Any:
        if poison.calls == 3:  # type: ignore[attr-defined]
            outputs["loss"] = outputs["loss"] * float("nan")
        poison.calls += 1  # type: ignore[attr-defined]
        return outputs

    poison.calls = 0  # type: ignore[attr-defined]
    model.register_forward_hook(poison)
    trainer = make_trainer(tmp_path, [steering(tmp_path, nan="stop")], model=model)
    with pytest.raises(StopTraining) as failed:  # python train.py exits 1
        trainer.train()

    assert failed.value.code == 1

    (nan,) = [r for r in records(tmp_path / "run") if r["type"] == "nan"]
    assert nan["step"] == 4 and nan["action"] == "stop"
    assert end_record(tmp_path / "run")["state"] == "ERROR"
    assert trainer.state.global_step == 4  # not the 8 it was set to
    assert not list((tmp_path / "out").glob("checkpoint-*"))  # no Trainer save of NaN weights


def test_replay_applies_the_journal_again_at_the_same_steps(tmp_path: Path) -> None:
    """The same seeds and the journal replayed: the same commands at the same steps, so
    the same weights at the end, bit for bit; without the replay they differ."""
    first = tmp_path / "first"
    tc = TuiconsoleCallback(run_dir=first / "run", listen=False)
    at = At(tc, {2: "lr all 0.02", 5: "split emb transformer.wte lr=0.005"})
    one = make_trainer(first, [at, tc])
    one.train()
    assert all(f.result(timeout=30).ok for f in at.results.values())

    again = tmp_path / "again"
    replayed = TuiconsoleCallback(
        run_dir=again / "run", listen=False, replay=first / "run" / "journal.jsonl"
    )
    two = make_trainer(again, [replayed])
    two.train()
    plain = make_trainer(tmp_path / "plain", [steering(tmp_path / "plain")])
    plain.train()

    steps = [(r["step"], r["cmd"]) for r in records(first / "run") if r["type"] == "command"]
    assert [(r["step"], r["cmd"]) for r in records(again / "run") if r["type"] == "command"] == (
        steps
    )
    assert [g["name"] for g in two.optimizer.param_groups][-1] == "emb"
    for a, b in zip(one.model.parameters(), two.model.parameters(), strict=True):
        assert torch.equal(a, b)
    assert not all(
        torch.equal(a, c)
        for a, c in zip(one.model.parameters(), plain.model.parameters(), strict=True)
    )


def test_after_resume_from_checkpoint_the_journal_counts_from_that_train(
    tmp_path: Path,
) -> None:
    """The Trainer resumes itself (its weights, optimizer, scheduler, data position); the
    journal's steps count the steps of this train() call: step N is global step G + N."""
    make_trainer(tmp_path, [], save_strategy="steps", save_steps=4, max_steps=8).train()
    assert (tmp_path / "out" / "checkpoint-4").is_dir()

    tc = steering(tmp_path)
    at = At(tc, {6: "lr all 0.02"})
    trainer = make_trainer(tmp_path, [at, tc], max_steps=8)
    trainer.train(resume_from_checkpoint=str(tmp_path / "out" / "checkpoint-4"))

    assert journal_step(tmp_path / "run", at, "lr all 0.02") == 6 - 4
    assert end_record(tmp_path / "run")["step"] == 4 and trainer.state.global_step == 8


# --------------------------------------------------------------------------- eval, checkpoint


def accuracy(prediction: Any) -> dict[str, float]:
    """Next-token accuracy of the causal LM (logits at t predict the label at t + 1)."""
    logits, labels = prediction.predictions, prediction.label_ids
    return {"accuracy": float((logits.argmax(-1)[:, :-1] == labels[:, 1:]).mean())}


def test_eval_runs_the_trainers_evaluate(tmp_path: Path) -> None:
    tc = steering(tmp_path)
    at = At(tc, {3: "eval"})
    trainer = make_trainer(tmp_path, [at, tc], compute_metrics=accuracy)
    trainer.train()

    result = at.result("eval")
    assert result.ok, result.message
    assert journal_step(tmp_path / "run", at, "eval") == 3
    (ours,) = [r for r in records(tmp_path / "run", "metrics.jsonl") if r["type"] == "eval"]
    (theirs,) = [e for e in trainer.state.log_history if "eval_loss" in e]
    assert ours["step"] == theirs["step"] == 3
    assert ours["loss"] == pytest.approx(theirs["eval_loss"])
    assert ours["accuracy"] == pytest.approx(theirs["eval_accuracy"])
    assert trainer.model.training  # back in train mode for the steps after


def test_eval_leaves_the_trainers_own_schedule_as_it_was(tmp_path: Path) -> None:
    """evaluate() clears the Trainer's should_evaluate / should_log: at a step where its
    own schedule logs and evaluates, both still happen after ours."""
    tc = steering(tmp_path)
    at = At(tc, {3: "eval"})
    trainer = make_trainer(
        tmp_path,
        [at, tc],
        logging_strategy="steps",
        logging_steps=3,
        eval_strategy="steps",
        eval_steps=3,
    )
    trainer.train()

    assert at.result("eval").ok
    evals = [e["step"] for e in trainer.state.log_history if "eval_loss" in e]
    assert evals == [3, 3, 6, 8]  # ours, then the Trainer's own at 3; its own at 6 and the end
    logged = [e["step"] for e in trainer.state.log_history if "loss" in e]
    assert logged == [3, 6]


def test_eval_without_an_eval_dataset_is_refused(tmp_path: Path) -> None:
    tc = steering(tmp_path)
    at = At(tc, {2: "eval"})
    trainer = make_trainer(tmp_path, [at, tc], eval_dataset=False)
    trainer.train()

    result = at.result("eval")
    assert not result.ok and "no eval_dataset" in result.message
    assert not [r for r in records(tmp_path / "run", "metrics.jsonl") if r["type"] == "eval"]
    assert trainer.state.global_step == 8


def test_checkpoint_writes_ours_and_the_trainers(tmp_path: Path) -> None:
    tc = steering(tmp_path)
    at = At(tc, {3: "checkpoint"})
    trainer = make_trainer(tmp_path, [at, tc], save_strategy="steps", save_steps=1000)
    trainer.train()

    assert at.result("checkpoint").ok
    assert journal_step(tmp_path / "run", at, "checkpoint") == 3
    assert (tmp_path / "run" / "checkpoint-step3.pt").is_file()
    # The Trainer's own, resumable with train(resume_from_checkpoint=...), at the same step
    # (and at the end, where its save_strategy saves the last step itself).
    assert (tmp_path / "out" / "checkpoint-3" / "optimizer.pt").is_file()
    end = end_record(tmp_path / "run")
    assert end["state"] == "FINISHED" and Path(end["checkpoint"]).name == "checkpoint-step8.pt"


def test_stop_has_the_trainer_save_its_checkpoint_too(tmp_path: Path) -> None:
    tc = steering(tmp_path)
    at = At(tc, {3: "stop"})
    trainer = make_trainer(tmp_path, [at, tc], save_strategy="steps", save_steps=1000)
    trainer.train()

    assert at.result("stop").ok and trainer.state.global_step == 3
    assert Path(end_record(tmp_path / "run")["checkpoint"]).name == "checkpoint-step3.pt"
    assert sorted(p.name for p in (tmp_path / "out").glob("checkpoint-*")) == ["checkpoint-3"]


def test_no_trainer_checkpoint_when_it_saves_none(tmp_path: Path) -> None:
    tc = steering(tmp_path)
    at = At(tc, {3: "checkpoint"})
    make_trainer(tmp_path, [at, tc]).train()  # save_strategy="no"

    assert at.result("checkpoint").ok
    assert (tmp_path / "run" / "checkpoint-step3.pt").is_file()
    assert not list((tmp_path / "out").glob("checkpoint-*"))


# --------------------------------------------------------------------------- failures, misuse


class Breaks(TrainerCallback):
    """Makes the model's forward raise from the given step on."""

    def __init__(self, model: torch.nn.Module, at_step: int) -> None:
        self.at_step = at_step
        self.step = 0
        model.register_forward_pre_hook(self._forward)

    def _forward(self, *_: Any) -> None:
        if self.step >= self.at_step:
            raise RuntimeError("the forward broke")

    def on_step_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
    ) -> None:
        self.step = state.global_step + 1


def test_an_error_in_the_step_ends_the_run_as_failed(tmp_path: Path) -> None:
    tc = steering(tmp_path)
    model = tiny_gpt2()
    trainer = make_trainer(tmp_path, [Breaks(model, at_step=3), tc], model=model)
    with pytest.raises(RuntimeError, match="the forward broke"):
        trainer.train()

    end = end_record(tmp_path / "run")
    assert end["state"] == "ERROR" and end["step"] == 2
    (error,) = [r for r in records(tmp_path / "run") if r["type"] == "error"]
    assert "the forward broke" in json.dumps(error)
    assert "training_step" not in trainer.__dict__


def test_outside_a_trainer_it_says_so(tmp_path: Path) -> None:
    args = TrainingArguments(output_dir=str(tmp_path / "out"), report_to="none", use_cpu=True)
    with pytest.raises(TuiconsoleError, match="no transformers.Trainer is calling it"):
        steering(tmp_path).on_train_begin(args, TrainerState(), TrainerControl())


@pytest.mark.parametrize(
    ("options", "says"),
    [
        ({"resume": "x.pt"}, "resume_from_checkpoint"),
        ({"max_step": 3}, "unknown option(s) max_step"),
    ],
)
def test_options_it_does_not_take(options: dict[str, Any], says: str) -> None:
    with pytest.raises(TuiconsoleError, match=says.replace("(", r"\(").replace(")", r"\)")):
        TuiconsoleCallback(**options)


# --------------------------------------------------------------------------- the sample


SAMPLE = Path(__file__).resolve().parents[2] / "sample_models" / "hf_tiny.py"


def run_sample(command: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=180,
        stdin=subprocess.DEVNULL,
    )


@pytest.mark.subprocess
def test_the_sample_runs_with_python(tmp_path: Path) -> None:
    """Its own --epochs (1 epoch of 64 sequences, batch 32: 2 steps, before --max-steps 6)."""
    done = run_sample(
        [sys.executable, str(SAMPLE), *("--epochs", "1", "--max-steps", "6", "--train-size", "64")],
        tmp_path,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    (run_dir,) = (tmp_path / "runs").glob("hf_tiny-2*")
    end = end_record(run_dir)
    assert end["state"] == "FINISHED" and end["step"] == 2
    assert "tuiconsole attach" in done.stderr  # served for attach while it ran


@pytest.mark.subprocess
def test_the_sample_runs_under_tuiconsole_run(tmp_path: Path) -> None:
    """run's own --max-steps is applied by the steer: the Trainer stops at step 3 of its 4
    (2 epochs of 64 sequences, batch 32)."""
    done = run_sample(
        [
            *(sys.executable, "-m", "tuiconsole", "run", str(SAMPLE)),
            *("--headless", "--no-listen", "--run-dir", "run", "--max-steps", "3"),
            *("--epochs", "2", "--", "--train-size", "64"),
        ],
        tmp_path,
    )
    assert done.returncode == 0, done.stderr[-2000:] + done.stdout[-2000:]
    end = end_record(tmp_path / "run")
    assert end["state"] == "FINISHED" and end["step"] == 3
    assert "reached --max-steps 3" in done.stdout


def test_ctrl_c_stops_at_the_boundary_and_leaves_train_with_130(tmp_path: Path) -> None:
    """In the main thread (as ``python train.py``) the steer catches SIGINT: the stop is
    applied at this step's boundary, the Trainer saves, and train() raises StopTraining."""
    assert threading.current_thread() is threading.main_thread()
    tc = steering(tmp_path)
    sent: list[bool] = []

    def ctrl_c() -> None:
        if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:  # ours is in
            sent.append(True)
            os.kill(os.getpid(), signal.SIGINT)

    at = At(tc, {3: ctrl_c})
    trainer = make_trainer(tmp_path, [at, tc], save_strategy="steps", save_steps=1000)
    with pytest.raises(StopTraining) as stop:
        trainer.train()

    assert sent and stop.value.code == 130
    (record,) = [r for r in records(tmp_path / "run") if r.get("cmd") == "stop"]
    assert record["step"] == 3 and record["source"] == "signal:SIGINT"
    assert end_record(tmp_path / "run")["state"] == "STOPPED"
    assert trainer.state.global_step == 3 and (tmp_path / "out" / "checkpoint-3").is_dir()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # put back
