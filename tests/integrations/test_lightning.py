"""TuiconsoleCallback over real Lightning fits of tiny models.

Each test starts a real ``Trainer.fit`` in the test's thread. Commands go through the
run's session (``steer.session.submit``) from a callback of the test's own, placed
before TuiconsoleCallback: it queues them at a chosen step and records what the real
optimizer looks like before every batch, so the assertions read the optimizer
Lightning steps, at the step the journal names.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

pl = pytest.importorskip("lightning.pytorch")

from tuiconsole.engine.commands import CommandResult  # noqa: E402
from tuiconsole.errors import TuiconsoleError  # noqa: E402
from tuiconsole.lightning import TuiconsoleCallback  # noqa: E402

# Lightning's own deprecation noise (its _pytree) and its hints about tiny test fits.
pytestmark = [
    pytest.mark.filterwarnings("ignore:.*LeafSpec.*"),
    pytest.mark.filterwarnings("ignore::UserWarning:lightning"),
    pytest.mark.filterwarnings("ignore:.*does not have many workers.*"),
]

BATCHES = 8  # per epoch


def data(n: int = 8 * BATCHES, seed: int = 0) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]]) + 0.1 * torch.randn(n, 1, generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=8)


class Tiny(pl.LightningModule):
    """Two named parts (``body``, ``head``), SGD with momentum, an optional StepLR."""

    def __init__(self, scheduler: bool = False, validate: bool = True) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 8), nn.Tanh())
        self.head = nn.Linear(8, 1)
        self.with_scheduler = scheduler
        if not validate:
            self.validation_step = None  # type: ignore[assignment]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.mse_loss(self(x), y)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", nn.functional.mse_loss(self(x), y))

    def configure_optimizers(self) -> Any:
        opt = torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)
        if not self.with_scheduler:
            return opt
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=4, gamma=0.5)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


class Script(pl.Callback):
    """Queues commands at given steps; records the optimizer before each batch."""

    def __init__(self, console: TuiconsoleCallback, at: dict[int, str]) -> None:
        self.console = console
        self.at = dict(at)
        self.results: dict[str, Future[CommandResult]] = {}
        self.seen: list[dict[str, Any]] = []  # before the batch of step len(seen) + 1
        self.hooks: dict[int, Callable[[Any], None]] = {}

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, idx: int) -> None:
        opt = trainer.optimizers[0]
        self.seen.append(
            {
                "global_step": trainer.global_step,
                "opt": opt,
                "cls": type(opt).__name__,
                "lrs": [float(g["lr"]) for g in opt.param_groups],
                "names": [g.get("name") for g in opt.param_groups],
                "state": {id(p): dict(s) for p, s in opt.state.items()},
            }
        )

    def on_train_batch_end(self, trainer: Any, pl_module: Any, out: Any, b: Any, i: int) -> None:
        step = trainer.global_step
        if step in self.hooks:
            self.hooks[step](trainer)
        if step in self.at:  # once (accumulating, two batches end at one step)
            assert self.console.steer is not None
            text = self.at.pop(step)
            self.results[text] = self.console.steer.session.submit(text)


def fit(
    tmp_path: Path,
    model: pl.LightningModule,
    at: dict[int, str] | None = None,
    val: bool = True,
    epochs: int = 3,
    hooks: dict[int, Callable[[Any], None]] | None = None,
    trainer_kw: dict[str, Any] | None = None,
    **options: Any,
) -> tuple[Any, Script, TuiconsoleCallback]:
    console = TuiconsoleCallback(run_dir=tmp_path / "run", listen=False, **options)
    script = Script(console, at or {})
    script.hooks = hooks or {}
    trainer = pl.Trainer(
        max_epochs=epochs,
        callbacks=[script, console],
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        **(trainer_kw or {}),
    )
    trainer.fit(model, data(), data(32, seed=1) if val else None)
    return trainer, script, console


def journal(tmp_path: Path, name: str = "journal.jsonl") -> list[dict[str, Any]]:
    return [json.loads(line) for line in (tmp_path / "run" / name).read_text().splitlines()]


def command(tmp_path: Path, text: str) -> dict[str, Any]:
    hits = [r for r in journal(tmp_path) if r["type"] == "command" and r["cmd"] == text]
    assert len(hits) == 1, hits
    return hits[0]


def end(tmp_path: Path) -> dict[str, Any]:
    return journal(tmp_path)[-1]


@pytest.fixture(autouse=True)
def _seeded() -> None:
    torch.manual_seed(0)


# ---------------------------------------------------------------------- optimizer commands


def test_lr_lands_at_the_step_the_journal_names_and_keeps_momentum(tmp_path: Path) -> None:
    trainer, script, _ = fit(tmp_path, Tiny(), at={3: "lr all 0.01"}, epochs=1)
    assert script.results["lr all 0.01"].result().ok
    rec = command(tmp_path, "lr all 0.01")
    assert rec["step"] == 3
    lrs = [s["lrs"][0] for s in script.seen]
    # seen[k] is the optimizer step k+1 used: steps 1..3 at 0.05, from step 4 on at 0.01
    assert lrs[:3] == [0.05] * 3 and set(lrs[3:]) == {0.01}
    opt = trainer.optimizers[0]
    assert script.seen[3]["opt"] is opt is script.seen[0]["opt"]
    # the momentum buffers step 4 starts from are the tensors step 3 left (same objects)
    before = script.seen[3]["state"]
    p = opt.param_groups[0]["params"][0]
    assert before[id(p)]["momentum_buffer"] is script.seen[2]["state"][id(p)]["momentum_buffer"]
    assert before[id(p)]["momentum_buffer"].abs().sum() > 0
    assert end(tmp_path)["state"] == "FINISHED"


def test_lr_keeps_the_scheduler_in_step(tmp_path: Path) -> None:
    """StepLR halves every 4 steps; an lr command at step 2 is where it goes on from."""
    _, script, _ = fit(tmp_path, Tiny(scheduler=True), at={2: "lr all 0.2"}, epochs=1)
    assert command(tmp_path, "lr all 0.2")["step"] == 2
    lrs = [s["lrs"][0] for s in script.seen]
    assert lrs == [0.05, 0.05, 0.2, 0.2, 0.1, 0.1, 0.1, 0.1]


def test_set_changes_a_hyper_parameter_in_place(tmp_path: Path) -> None:
    trainer, script, _ = fit(tmp_path, Tiny(), at={2: "set all momentum=0.5"}, epochs=1)
    assert command(tmp_path, "set all momentum=0.5")["step"] == 2
    assert trainer.optimizers[0].param_groups[0]["momentum"] == 0.5


def test_split_makes_a_new_group_with_its_state_kept(tmp_path: Path) -> None:
    trainer, script, _ = fit(
        tmp_path, Tiny(scheduler=True), at={3: "split head head lr=0.3"}, epochs=1
    )
    assert script.results["split head head lr=0.3"].result().ok
    rec = command(tmp_path, "split head head lr=0.3")
    assert rec["step"] == 3
    assert [g["name"] for g in rec["groups"]] == ["group0", "head"]
    opt = trainer.optimizers[0]
    assert [g["name"] for g in opt.param_groups] == ["group0", "head"]
    assert [len(g["params"]) for g in opt.param_groups] == [2, 2]
    head = trainer.lightning_module.head.weight
    assert any(head is p for p in opt.param_groups[1]["params"])
    # the head's momentum buffer went with it: step 4 starts from step 3's tensor
    assert (
        script.seen[3]["state"][id(head)]["momentum_buffer"]
        is script.seen[2]["state"][id(head)]["momentum_buffer"]
    )
    assert script.seen[3]["names"] == ["group0", "head"]
    # the StepLR goes on over both groups (halved at step 4 and 8)
    assert script.seen[3]["lrs"] == [0.05, 0.3]
    assert script.seen[4]["lrs"] == [0.025, 0.15]
    sched = trainer.lr_scheduler_configs[0].scheduler
    assert len(sched.base_lrs) == 2


def test_rebuild_changes_the_optimizer_lightning_steps_in_place(tmp_path: Path) -> None:
    trainer, script, _ = fit(
        tmp_path, Tiny(scheduler=True), at={5: "rebuild Adam lr=0.01"}, epochs=1
    )
    assert script.results["rebuild Adam lr=0.01"].result().ok
    assert command(tmp_path, "rebuild Adam lr=0.01")["step"] == 5
    opt = trainer.optimizers[0]
    assert opt is script.seen[0]["opt"]  # the object Lightning and the scheduler hold
    assert [s["cls"] for s in script.seen] == ["SGD"] * 5 + ["Adam"] * 3
    assert isinstance(opt, torch.optim.Adam)
    # Adam's own state from step 6 on, none of SGD's
    p = opt.param_groups[0]["params"][0]
    assert set(opt.state[p]) == {"step", "exp_avg", "exp_avg_sq"}
    assert float(opt.state[p]["step"]) == 3  # steps 6, 7, 8
    # the scheduler kept stepping this optimizer: halved at step 8 from the rebuilt lr
    sched = trainer.lr_scheduler_configs[0].scheduler
    assert sched.optimizer is opt
    assert [s["lrs"][0] for s in script.seen[5:]] == [0.01, 0.01, 0.01]
    assert opt.param_groups[0]["lr"] == pytest.approx(0.005)
    # Lightning's wrapper (what self.optimizers() gives) says Adam too
    (wrapper,) = trainer.strategy._lightning_optimizers
    assert isinstance(wrapper, torch.optim.Adam) and type(wrapper).__name__ == "LightningAdam"


def test_a_refused_command_changes_nothing(tmp_path: Path) -> None:
    trainer, script, _ = fit(tmp_path, Tiny(), at={2: "lr nowhere 0.1"}, epochs=1)
    result = script.results["lr nowhere 0.1"].result()
    assert not result.ok and "nowhere" in result.message
    assert {s["lrs"][0] for s in script.seen} == {0.05}


# ---------------------------------------------------------------------- control


def test_stop_ends_the_fit_at_that_step_with_a_final_checkpoint(tmp_path: Path) -> None:
    trainer, script, console = fit(tmp_path, Tiny(), at={5: "stop"}, epochs=50)
    assert script.results["stop"].result().ok
    assert trainer.global_step == 5 < 50 * BATCHES
    assert trainer.should_stop
    last = end(tmp_path)
    assert last["type"] == "end" and last["state"] == "STOPPED" and last["step"] == 5
    ckpt = torch.load(last["checkpoint"], weights_only=False)
    assert ckpt["step"] == 5
    weights = trainer.lightning_module.state_dict()
    assert all(torch.equal(ckpt["model"][k], v) for k, v in weights.items())
    assert console.steer is not None and console.steer.ended is not None
    assert "stopped at step 5" in console.steer.ended.reason


def test_max_steps_ends_the_fit(tmp_path: Path) -> None:
    trainer, _, _ = fit(tmp_path, Tiny(), epochs=50, max_steps=6)
    assert trainer.global_step == 6
    last = end(tmp_path)
    assert last["state"] == "FINISHED" and last["step"] == 6
    assert Path(last["checkpoint"]).is_file()


def test_the_fits_own_end_finishes_the_run(tmp_path: Path) -> None:
    trainer, _, console = fit(tmp_path, Tiny(), epochs=2)
    assert trainer.global_step == 2 * BATCHES
    last = end(tmp_path)
    assert last["state"] == "FINISHED" and last["step"] == 2 * BATCHES
    assert Path(last["checkpoint"]).is_file()
    assert console.steer is not None and console.steer.steps == 2 * BATCHES


def test_checkpoint_writes_model_and_optimizer_at_that_step(tmp_path: Path) -> None:
    trainer, script, _ = fit(tmp_path, Tiny(scheduler=True), at={4: "checkpoint"}, epochs=1)
    assert script.results["checkpoint"].result().ok
    ckpts = sorted((tmp_path / "run").glob("checkpoint-step4*.pt"))
    assert ckpts, list((tmp_path / "run").iterdir())
    ckpt = torch.load(ckpts[0], weights_only=False)
    assert ckpt["step"] == 4
    assert len(ckpt["optimizer"]["state"]) == 4  # momentum for each of the 4 tensors


def test_a_failing_step_ends_the_run_in_error(tmp_path: Path) -> None:
    class Fails(Tiny):
        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            if self.trainer.global_step == 3:
                raise RuntimeError("boom at step 4")
            return super().training_step(batch, batch_idx)

    with pytest.raises(RuntimeError, match="boom"):
        fit(tmp_path, Fails(), epochs=1)
    last = end(tmp_path)
    assert last["state"] == "ERROR" and last["step"] == 3


# ---------------------------------------------------------------------- eval


def test_eval_gives_the_validation_loss(tmp_path: Path) -> None:
    expected: list[float] = []

    def val_loss(trainer: Any) -> None:  # the same loss, computed apart, right then
        module = trainer.lightning_module
        with torch.no_grad():
            losses = [nn.functional.mse_loss(module(x), y) for x, y in data(32, seed=1)]
        expected.append(float(torch.stack(losses).mean()))

    trainer, script, _ = fit(tmp_path, Tiny(), at={4: "eval"}, hooks={4: val_loss}, epochs=1)
    result = script.results["eval"].result()
    assert result.ok, result.message
    evals = [r for r in journal(tmp_path, "metrics.jsonl") if r["type"] == "eval"]
    assert [e["step"] for e in evals] == [4]
    assert evals[0]["loss"] == pytest.approx(expected[0], rel=1e-6)
    assert trainer.lightning_module.training  # put back in train mode
    assert command(tmp_path, "eval")["step"] == 4


def test_eval_reads_what_validation_step_returns(tmp_path: Path) -> None:
    class Returns(Tiny):
        def validation_step(self, batch: Any, batch_idx: int) -> dict[str, torch.Tensor]:
            x, y = batch
            return {"loss": torch.tensor(2.0), "accuracy": torch.tensor(0.25)}

    fit(tmp_path, Returns(), at={2: "eval"}, epochs=1)
    (ev,) = [r for r in journal(tmp_path, "metrics.jsonl") if r["type"] == "eval"]
    assert ev["loss"] == pytest.approx(2.0) and ev["accuracy"] == pytest.approx(0.25)


def test_eval_computes_and_resets_a_torchmetrics_metric_it_logs(tmp_path: Path) -> None:
    """validation_step updates a MeanMetric and logs the object (Lightning computes it
    at the epoch's end): eval computes it over its batches, then resets it, so the
    next real validation starts empty."""
    from torchmetrics import MeanMetric

    class Metered(Tiny):
        def __init__(self) -> None:
            super().__init__()
            self.val_mse = MeanMetric()

        def validation_step(self, batch: Any, batch_idx: int) -> None:
            x, y = batch
            self.val_mse.update((self(x) - y) ** 2)
            self.log("val_loss", self.val_mse)

    expected: list[float] = []
    left: list[int] = []

    def val_mse(trainer: Any) -> None:
        module = trainer.lightning_module
        with torch.no_grad():
            errors = torch.cat([((module(x) - y) ** 2).flatten() for x, y in data(32, seed=1)])
        expected.append(float(errors.mean()))

    def after(trainer: Any) -> None:
        left.append(trainer.lightning_module.val_mse.update_count)

    fit(tmp_path, Metered(), at={4: "eval"}, hooks={4: val_mse, 5: after}, epochs=1)
    (ev,) = [r for r in journal(tmp_path, "metrics.jsonl") if r["type"] == "eval"]
    assert ev["loss"] == pytest.approx(expected[0], rel=1e-5)
    assert left == [0]


def test_eval_without_val_data_is_refused(tmp_path: Path) -> None:
    _, script, _ = fit(tmp_path, Tiny(), at={2: "eval"}, val=False, epochs=1)
    result = script.results["eval"].result()
    assert not result.ok
    assert "no val data" in result.message


def test_eval_without_validation_step_is_refused(tmp_path: Path) -> None:
    class NoVal(Tiny):
        validation_step = pl.LightningModule.validation_step

    _, script, _ = fit(tmp_path, NoVal(), at={2: "eval"}, val=False, epochs=1)
    result = script.results["eval"].result()
    assert not result.ok and "no validation_step" in result.message


# ---------------------------------------------------------------------- loops


def test_gradient_accumulation_boundary_is_the_optimizer_step(tmp_path: Path) -> None:
    trainer, script, console = fit(
        tmp_path,
        Tiny(),
        at={2: "lr all 0.01"},
        epochs=1,
        trainer_kw={"accumulate_grad_batches": 2},
    )
    assert trainer.global_step == BATCHES // 2
    assert console.steer is not None and console.steer.steps == BATCHES // 2
    assert command(tmp_path, "lr all 0.01")["step"] == 2
    # batches 1-4 make steps 1-2 at the old lr; batches 5-8 steps 3-4 at the new one
    assert [s["lrs"][0] for s in script.seen] == [0.05] * 4 + [0.01] * 4


def test_signals_are_measured_at_each_optimizer_step_from_the_real_gradients(
    tmp_path: Path,
) -> None:
    """Lightning steps through a closure (the backward runs inside optimizer.step()):
    the per-group signals read the gradients after it, once per optimizer step."""
    grads: dict[str, float] = {}

    def keep(trainer: Any) -> None:  # the last step's gradients, as its optimizer used them
        for g in trainer.optimizers[0].param_groups:
            grads.setdefault(g["name"], sum(float(p.grad.pow(2).sum()) for p in g["params"]))

    _, _, console = fit(
        tmp_path,
        Tiny(),
        epochs=1,
        hooks={BATCHES // 2: keep},
        trainer_kw={"accumulate_grad_batches": 2},
        signal_every=1,
    )
    assert console.steer is not None
    snap = console.steer.snapshot()
    assert snap.signal_every == 1 and console.steer._run._record.signals.measured == BATCHES // 2
    assert [s.name for s in snap.signals] == [g.name for g in snap.groups] == list(grads)
    for s in snap.signals:
        assert s.step == BATCHES // 2
        assert s.grad_norm == pytest.approx(grads[s.name] ** 0.5, rel=1e-5)
        assert s.update_ratio is not None and s.update_ratio > 0


class Manual(Tiny):
    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        opt = self.optimizers()
        x, y = batch
        loss = nn.functional.mse_loss(self(x), y)
        opt.zero_grad()
        self.manual_backward(loss)
        opt.step()
        return loss


def test_manual_optimization_is_steered(tmp_path: Path) -> None:
    trainer, script, _ = fit(tmp_path, Manual(), at={3: "lr all 0.01", 6: "stop"}, epochs=5)
    assert command(tmp_path, "lr all 0.01")["step"] == 3
    assert [s["lrs"][0] for s in script.seen] == [0.05] * 3 + [0.01] * 3
    assert trainer.global_step == 6 and end(tmp_path)["state"] == "STOPPED"


def test_a_training_step_without_a_loss_is_one_clear_error(tmp_path: Path) -> None:
    class Silent(Manual):
        def training_step(self, batch: Any, batch_idx: int) -> None:  # type: ignore[override]
            super().training_step(batch, batch_idx)

    with pytest.raises(TuiconsoleError, match="no loss under 'loss'.*loss=") as info:
        fit(tmp_path, Silent(), epochs=1)
    assert "\n" not in str(info.value)
    assert end(tmp_path)["state"] == "ERROR"


def test_the_loss_is_the_steps_loss(tmp_path: Path) -> None:
    class Recorded(Tiny):
        losses: list[float] = []

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            loss = super().training_step(batch, batch_idx)
            self.losses.append(float(loss.detach()))
            return loss

    model = Recorded()
    fit(tmp_path, model, epochs=1, log_every=1)
    trains = {
        r["step"]: r["loss"] for r in journal(tmp_path, "metrics.jsonl") if r["type"] == "train"
    }
    assert sorted(trains) == list(range(1, BATCHES + 1))
    assert [trains[s] for s in sorted(trains)] == pytest.approx(model.losses, rel=1e-6)


def test_an_accumulated_steps_loss_is_its_micro_batches_mean(tmp_path: Path) -> None:
    class Recorded(Tiny):
        losses: list[float] = []

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            loss = super().training_step(batch, batch_idx)
            self.losses.append(float(loss.detach()))
            return loss

    model = Recorded()
    fit(tmp_path, model, epochs=1, log_every=1, trainer_kw={"accumulate_grad_batches": 2})
    trains = {
        r["step"]: r["loss"] for r in journal(tmp_path, "metrics.jsonl") if r["type"] == "train"
    }
    pairs = [(a + b) / 2 for a, b in zip(model.losses[::2], model.losses[1::2], strict=True)]
    assert [trains[s] for s in sorted(trains)] == pytest.approx(pairs, rel=1e-6)


# ---------------------------------------------------------------------- several optimizers


class TwoOptimizers(pl.LightningModule):
    """A tiny GAN: manual optimization, Adam for the generator (with a StepLR the
    module steps itself), SGD with momentum for the discriminator. Each batch steps
    both, so Lightning's global_step is twice tuiconsole's step."""

    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.generator = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 4))
        self.discriminator = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))

    def training_step(self, batch: Any, batch_idx: int) -> dict[str, torch.Tensor]:
        g_opt, d_opt = self.optimizers()
        bce = nn.functional.binary_cross_entropy_with_logits
        real, _ = batch
        fake = self.generator(torch.randn_like(real))
        ones, zeros = torch.ones(len(real), 1), torch.zeros(len(real), 1)
        d_loss = bce(self.discriminator(real), ones) + bce(self.discriminator(fake.detach()), zeros)
        d_opt.zero_grad()
        self.manual_backward(d_loss)
        d_opt.step()
        g_loss = bce(self.discriminator(fake), ones)
        g_opt.zero_grad()
        self.manual_backward(g_loss)
        g_opt.step()
        self.lr_schedulers().step()
        return {"loss": (g_loss + d_loss).detach()}

    def configure_optimizers(self) -> Any:
        g = torch.optim.Adam(self.generator.parameters(), lr=1e-3)
        d = torch.optim.SGD(self.discriminator.parameters(), lr=0.01, momentum=0.9)
        return [g, d], [torch.optim.lr_scheduler.StepLR(g, step_size=4, gamma=0.5)]


def lrs_of(trainer: Any) -> list[list[float]]:
    return [[float(g["lr"]) for g in opt.param_groups] for opt in trainer.optimizers]


def test_several_optimizers_are_named_after_their_modules(tmp_path: Path) -> None:
    trainer, _, _ = fit(tmp_path, TwoOptimizers(), epochs=1)
    header = journal(tmp_path)[0]
    assert header["optimizer"] == "Adam+SGD" and header["scheduler"] == "StepLR+none"
    assert [g["name"] for g in header["groups"]] == ["generator", "discriminator"]
    assert end(tmp_path)["step"] == BATCHES  # one step a batch; Lightning counts two
    assert trainer.global_step == 2 * BATCHES


def test_lr_on_one_optimizers_group_keeps_its_scheduler_and_state(tmp_path: Path) -> None:
    seen: dict[str, Any] = {}

    def before(trainer: Any) -> None:
        g_opt = trainer.optimizers[0]
        seen["adam"] = {id(p): s["exp_avg"] for p, s in g_opt.state.items()}

    # global_step 6: after batch 3 (two optimizer steps a batch)
    trainer, script, _ = fit(
        tmp_path, TwoOptimizers(), at={6: "lr generator 0.01"}, hooks={6: before}, epochs=1
    )
    assert script.results["lr generator 0.01"].result().ok
    rec = command(tmp_path, "lr generator 0.01")
    assert rec["step"] == 3
    assert [(g["name"], g["lr"]) for g in rec["groups"]] == [
        ("generator", 0.01),
        ("discriminator", 0.01),
    ]
    g_opt, d_opt = trainer.optimizers
    # StepLR (step_size 4) went on from 0.01: halved after step 4 and step 8
    assert g_opt.param_groups[0]["lr"] == pytest.approx(0.0025)
    assert d_opt.param_groups[0]["lr"] == 0.01
    # Adam's state went on: the moments step 3 left are the tensors steps 4.. updated
    assert all(
        g_opt.state[p]["exp_avg"] is t for p, t in ((p, seen["adam"][id(p)]) for p in g_opt.state)
    )
    assert float(next(iter(g_opt.state.values()))["step"]) == BATCHES


def test_a_command_on_several_optimizers_is_checked_on_all_before_any_changes(
    tmp_path: Path,
) -> None:
    trainer, script, _ = fit(
        tmp_path,
        TwoOptimizers(),
        at={4: "set all betas=0.5,0.9", 6: "decay 0.5", 8: "set discriminator momentum=0.5"},
        epochs=1,
    )
    # Adam (the first) takes betas, SGD (the second) has none: refused, and Adam's kept
    refused = script.results["set all betas=0.5,0.9"].result()
    assert not refused.ok and "betas" in refused.message
    assert trainer.optimizers[0].param_groups[0]["betas"] == (0.9, 0.999)  # not half-applied
    assert script.results["decay 0.5"].result().ok
    assert command(tmp_path, "decay 0.5 all")["step"] == 3
    g_opt, d_opt = trainer.optimizers
    assert d_opt.param_groups[0]["lr"] == pytest.approx(0.005)
    assert g_opt.param_groups[0]["lr"] == pytest.approx(0.0005 * 0.25)  # and StepLR twice
    assert command(tmp_path, "set discriminator momentum=0.5")["ok"]
    assert d_opt.param_groups[0]["momentum"] == 0.5


def test_split_within_one_optimizer_keeps_state_and_names(tmp_path: Path) -> None:
    seen: dict[str, Any] = {}

    def before(trainer: Any) -> None:
        seen["buf"] = trainer.optimizers[1].state[trainer.lightning_module.discriminator[2].weight][
            "momentum_buffer"
        ]

    trainer, script, _ = fit(
        tmp_path,
        TwoOptimizers(),
        at={4: "split dhead discriminator.2", 8: "lr dhead 0.5"},
        hooks={4: before},
        epochs=1,
    )
    result = script.results["split dhead discriminator.2"].result()
    assert result.ok and "in optimizer discriminator" in result.message
    rec = command(tmp_path, "split dhead discriminator.2")
    assert rec["step"] == 2
    assert [g["name"] for g in rec["groups"]] == ["generator", "discriminator", "dhead"]
    d_opt = trainer.optimizers[1]
    assert [g["name"] for g in d_opt.param_groups] == ["discriminator", "dhead"]
    head = trainer.lightning_module.discriminator[2].weight
    assert any(head is p for p in d_opt.param_groups[1]["params"])
    assert d_opt.state[head]["momentum_buffer"] is seen["buf"]  # the same tensor, stepped on
    assert command(tmp_path, "lr dhead 0.5")["step"] == 4
    assert lrs_of(trainer)[1] == [0.01, 0.5]


def test_split_across_optimizers_is_refused(tmp_path: Path) -> None:
    trainer, script, _ = fit(
        tmp_path, TwoOptimizers(), at={4: "split both generator.2 discriminator.2"}, epochs=1
    )
    result = script.results["split both generator.2 discriminator.2"].result()
    assert not result.ok
    assert "in optimizers generator and discriminator" in result.message
    assert [len(o.param_groups) for o in trainer.optimizers] == [1, 1]


def test_rebuild_is_refused_with_several_optimizers(tmp_path: Path) -> None:
    trainer, script, _ = fit(tmp_path, TwoOptimizers(), at={4: "rebuild SGD"}, epochs=1)
    result = script.results["rebuild SGD"].result()
    assert not result.ok and "generator, discriminator" in result.message
    assert [type(o).__name__ for o in trainer.optimizers] == ["Adam", "SGD"]


def test_the_checkpoint_holds_every_optimizer_and_scheduler(tmp_path: Path) -> None:
    trainer, _, _ = fit(tmp_path, TwoOptimizers(), epochs=1)
    ckpt = torch.load(end(tmp_path)["checkpoint"], weights_only=False)
    members = ckpt["optimizer"]["members"]
    assert sorted(members) == ["discriminator", "generator"]
    assert (
        members["generator"]["param_groups"][0]["lr"] == trainer.optimizers[0].param_groups[0]["lr"]
    )
    assert len(members["discriminator"]["state"]) == 4
    assert ckpt["scheduler"]["members"]["generator"]["last_epoch"] == BATCHES
    assert ckpt["scheduler"]["members"]["discriminator"] is None


def test_optimizer_names_name_the_groups(tmp_path: Path) -> None:
    _, script, _ = fit(
        tmp_path, TwoOptimizers(), at={2: "lr disc 0.2"}, optimizer_names=["gen", "disc"], epochs=1
    )
    assert script.results["lr disc 0.2"].result().ok
    assert [g["name"] for g in journal(tmp_path)[0]["groups"]] == ["gen", "disc"]


def test_bad_optimizer_names_are_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(TuiconsoleError, match="optimizer_names"):
        TuiconsoleCallback(optimizer_names=["a b", "c"])
    with pytest.raises(TuiconsoleError, match="2 distinct names"):
        fit(tmp_path, TwoOptimizers(), optimizer_names=["x"], epochs=1)


# ---------------------------------------------------------------------- the sample

SAMPLE = Path(__file__).resolve().parents[2] / "sample_models" / "lightning_vgg.py"


class Host:
    """What `tuiconsole run` is to a script that steers itself (library.Host)."""

    def __init__(self, config: Any, script: Path) -> None:
        self.config, self.script = config, script
        self.sessions: list[Any] = []

    def started(self, session: Any) -> None:
        self.sessions.append(session)


def test_the_sample_runs_as_tuiconsole_run_runs_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its main program under a host whose --max-steps 4 the steer applies: the fit
    ends there; the sample's own --epochs is its own option."""
    import runpy

    from tuiconsole import library
    from tuiconsole.engine.config import RunConfig

    host = Host(RunConfig(run_dir=tmp_path / "run", max_steps=4, nan="stop"), SAMPLE)
    monkeypatch.setattr("sys.argv", [str(SAMPLE), "--epochs", "3", "--batch-size", "16"])
    monkeypatch.chdir(tmp_path)
    with library.hosted(host):
        runpy.run_path(str(SAMPLE), run_name="__main__")
    (session,) = host.sessions
    session.close()  # what the host does once the script is over
    last = end(tmp_path)
    assert last["state"] == "FINISHED" and last["step"] == 4
    header = journal(tmp_path)[0]
    assert [g["name"] for g in header["groups"]] == ["features", "classifier"]
    assert header["scheduler"] == "CosineAnnealingLR"


@pytest.mark.subprocess
def test_the_sample_runs_as_a_plain_python_script(tmp_path: Path) -> None:
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": str(SAMPLE.parents[1])}
    proc = subprocess.run(
        [sys.executable, str(SAMPLE), "--epochs", "1", "--batch-size", "1000"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "tuiconsole: finished at step 5" in proc.stderr
    assert "epoch 1: val_loss" in proc.stdout
    (run,) = (tmp_path / "runs").iterdir()
    assert (run / "journal.jsonl").is_file()


# ---------------------------------------------------------------------- Lightning's resume


def test_a_fit_resumed_after_split_and_rebuild_gets_that_optimizer_back(tmp_path: Path) -> None:
    """Lightning's checkpoint holds the split groups' and Adam's state: a fit resumed from
    it (ckpt_path=) with the callback gets the groups and class back first, so Lightning
    can load that state into them (without: 'a different number of parameter groups')."""
    trainer, _, _ = fit(
        tmp_path, Tiny(scheduler=True), at={2: "split head head", 4: "rebuild Adam"}, epochs=1
    )
    saved = tmp_path / "lightning.ckpt"
    trainer.save_checkpoint(saved)
    before = trainer.optimizers[0].state_dict()

    resumed = Tiny(scheduler=True)
    console = TuiconsoleCallback(run_dir=tmp_path / "run2", listen=False)
    again = pl.Trainer(
        max_epochs=2,
        callbacks=[console],
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    restored: dict[str, Any] = {}

    class Peek(pl.Callback):
        def on_train_start(self, trainer: Any, pl_module: Any) -> None:
            restored["sd"] = copy.deepcopy(trainer.optimizers[0].state_dict())  # steps on

    again.callbacks.insert(0, Peek())
    again.fit(resumed, data(), ckpt_path=saved)
    sd = restored["sd"]
    assert [g["name"] for g in sd["param_groups"]] == ["group0", "head"]
    assert [g["params"] for g in sd["param_groups"]] == [[0, 1], [2, 3]]
    assert all(
        torch.equal(sd["state"][i]["exp_avg"], before["state"][i]["exp_avg"]) for i in range(4)
    )
    opt = again.optimizers[0]
    assert type(opt) is torch.optim.Adam and again.global_step == 2 * BATCHES
    assert again.lr_scheduler_configs[0].scheduler.optimizer is opt
    assert len(again.lr_scheduler_configs[0].scheduler.base_lrs) == 2


def test_without_the_callback_lightning_refuses_that_checkpoint(tmp_path: Path) -> None:
    """What the test above guards against: the same resume, the callback left out."""
    trainer, _, _ = fit(tmp_path, Tiny(), at={2: "split head head"}, epochs=1)
    saved = tmp_path / "lightning.ckpt"
    trainer.save_checkpoint(saved)
    again = pl.Trainer(
        max_epochs=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    with pytest.raises(ValueError, match="different number of parameter groups"):
        again.fit(Tiny(), data(), ckpt_path=saved)


# ---------------------------------------------------------------------- no host sync

SYNC_METHODS = ("item", "cpu", "tolist", "__float__", "__bool__", "numpy", "__int__")


def test_the_callback_reads_no_loss_per_step(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the loss checked when losses are read (what an accelerator gets; on CPU the
    check reads each loss, free there), the callback adds host reads that do not grow
    with the steps: the loss stays a device tensor until a batched read."""
    from tuiconsole import library
    from tuiconsole.engine.config import RunConfig

    counts = dict.fromkeys(SYNC_METHODS, 0)
    for name in SYNC_METHODS:
        original = getattr(torch.Tensor, name)

        def counted(self: Any, *a: Any, _orig: Any = original, _name: str = name, **k: Any) -> Any:
            counts[_name] += 1
            return _orig(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, counted)

    def reads(steps: int, steered: bool) -> int:
        before = sum(counts.values())
        trainer = pl.Trainer(
            max_steps=steps,
            callbacks=[TuiconsoleCallback()] if steered else [],
            accelerator="cpu",
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
        )
        if steered:
            config = RunConfig(
                run_dir=tmp_path / f"run{steps}",
                log_every=0,
                snapshot_interval=1e9,
                nan_check="flush",
                final_checkpoint=False,
            )
            host = Host(config, Path(__file__))
            with library.hosted(host):
                trainer.fit(Tiny(), data(8 * 48))
            host.sessions[0].close()
        else:
            trainer.fit(Tiny(), data(8 * 48))
        return sum(counts.values()) - before

    extra = {n: reads(n, True) - reads(n, False) for n in (8, 40)}
    assert extra[40] == extra[8], (extra, counts)
    assert extra[8] <= 10


# ---------------------------------------------------------------------- groups added mid-fit


class Unfreeze(pl.callbacks.BaseFinetuning):
    """Lightning's own fine-tuning pattern: the head frozen, then added as a group."""

    def freeze_before_training(self, pl_module: Any) -> None:
        self.freeze(pl_module.head)

    def finetune_function(self, pl_module: Any, epoch: int, optimizer: Any) -> None:
        if epoch == 1:
            self.unfreeze_and_add_param_group(pl_module.head, optimizer, lr=0.02)


class Trainable(Tiny):
    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(
            [p for p in self.parameters() if p.requires_grad], lr=0.05, momentum=0.9
        )


def test_a_group_lightning_adds_mid_fit_is_steered(tmp_path: Path) -> None:
    console = TuiconsoleCallback(run_dir=tmp_path / "run", listen=False)
    script = Script(console, {10: "lr head 0.2", 11: "split hb head.bias"})
    trainer = pl.Trainer(
        max_epochs=2,
        callbacks=[Unfreeze(), script, console],
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(Trainable(), data())
    assert script.results["lr head 0.2"].result().ok
    assert command(tmp_path, "lr head 0.2")["step"] == 10
    opt = trainer.optimizers[0]
    assert [g["name"] for g in opt.param_groups] == ["body.0", "head", "hb"]
    assert [g["lr"] for g in opt.param_groups] == [0.05, 0.2, 0.2]
    notes = (tmp_path / "run" / "journal.jsonl").read_text()
    assert script.results["split hb head.bias"].result().ok, notes
    last = end(tmp_path)
    assert last["state"] == "FINISHED" and Path(last["checkpoint"]).is_file()


def test_a_group_added_to_one_of_several_optimizers_is_named_after_it(tmp_path: Path) -> None:
    def add(trainer: Any) -> None:
        module = trainer.lightning_module
        extra = nn.Linear(4, 4)
        module.generator.add_module("extra", extra)
        trainer.optimizers[0].add_param_group({"params": list(extra.parameters()), "lr": 0.3})

    trainer, script, _ = fit(
        tmp_path, TwoOptimizers(), at={6: "lr generator/extra 0.1"}, hooks={4: add}, epochs=1
    )
    assert script.results["lr generator/extra 0.1"].result().ok
    rec = command(tmp_path, "lr generator/extra 0.1")
    assert [g["name"] for g in rec["groups"]] == ["generator", "generator/extra", "discriminator"]
    assert rec["groups"][1]["lr"] == 0.1
    assert lrs_of(trainer)[0][1] == pytest.approx(0.1 * 0.25)  # then StepLR, twice


def test_ddp_on_one_process_is_steered_as_one_device(tmp_path: Path) -> None:
    """DDP with one CPU process (no torchrun): a real strategy that wraps the module in
    DistributedDataParallel; the commands act on its one optimizer."""
    from lightning.pytorch.strategies import DDPStrategy

    env = dict(os.environ)
    try:
        trainer, script, _ = fit(
            tmp_path,
            Tiny(),
            at={3: "lr all 0.01"},
            epochs=1,
            trainer_kw={"devices": 1, "strategy": DDPStrategy(process_group_backend="gloo")},
        )
    finally:
        if torch.distributed.is_initialized():  # the process group the strategy made
            torch.distributed.destroy_process_group()
        os.environ.clear()  # and the MASTER_PORT, LOCAL_RANK, OMP_NUM_THREADS it set
        os.environ.update(env)
    assert command(tmp_path, "lr all 0.01")["step"] == 3
    assert [s["lrs"][0] for s in script.seen] == [0.05] * 3 + [0.01] * 5
    assert end(tmp_path)["state"] == "FINISHED"


@pytest.mark.parametrize(
    ("strategy", "devices", "says"),
    [
        ("ddp_spawn", 2, "the ddp_spawn strategy starts its processes itself.*torchrun"),
        ("ddp_notebook", 2, "ddp_fork / ddp_notebook strategy starts its processes itself"),
        ("model_parallel", 1, "ModelParallelStrategy is not supported: .*sharded"),
        ("ddp", 2, "2 processes were not started by torchrun.*--nproc-per-node N"),
    ],
)
def test_a_strategy_it_cannot_steer_is_refused_with_the_reason(
    strategy: Any, devices: int, says: str
) -> None:
    """Real Trainers, as configured (the check runs as the fit starts, before steer());
    "ddp" on 2 devices without torchrun is Lightning launching the ranks itself."""
    from lightning.pytorch.strategies import ModelParallelStrategy

    from tuiconsole.lightning import check_strategy

    if strategy == "model_parallel":  # FSDP's kin that Lightning builds on the CPU too
        strategy = ModelParallelStrategy()
    env = dict(os.environ)
    try:
        trainer = pl.Trainer(accelerator="cpu", devices=devices, strategy=strategy, logger=False)
        with pytest.raises(TuiconsoleError, match=says):
            check_strategy(trainer)
    finally:
        os.environ.clear()
        os.environ.update(env)


SIGTERMED = """
import sys
import lightning.pytorch as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from tuiconsole.lightning import TuiconsoleCallback

class Tiny(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = nn.Linear(4, 1)
    def training_step(self, batch, idx):
        x, y = batch
        return nn.functional.mse_loss(self.net(x), y)
    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)

class Ready(pl.Callback):
    def on_train_batch_end(self, trainer, *_):
        if trainer.global_step == 3:
            print("ready", flush=True)

x = torch.randn(64, 4)
trainer = pl.Trainer(max_epochs=100000, callbacks=[Ready(), TuiconsoleCallback(
    run_dir=sys.argv[1], listen=False)], logger=False, enable_checkpointing=False,
    enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")
trainer.fit(Tiny(), DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=8))
print("fit returned at", trainer.global_step, flush=True)
"""


@pytest.mark.subprocess
def test_sigterm_stops_the_fit_as_a_stop(tmp_path: Path) -> None:
    """Lightning's own SIGTERM handler ends the fit with an exception at its next check:
    the run is STOPPED with its final checkpoint, not failed."""
    import signal
    import subprocess
    import sys

    script = tmp_path / "fit.py"
    script.write_text(SIGTERMED)
    env = {**os.environ, "PYTHONPATH": str(SAMPLE.parents[1])}
    proc = subprocess.Popen(
        [sys.executable, str(script), str(tmp_path / "run")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    last = end(tmp_path)
    assert last["state"] == "STOPPED", err[-2000:]
    assert Path(last["checkpoint"]).is_file()
    assert "tuiconsole: stopped at step" in err


def test_a_failed_run_leaves_fit_with_exit_code_1(tmp_path: Path) -> None:
    """--nan stop: the run fails at the first NaN loss; fit() raises StopTraining(1) (what a
    steered loop's process exits with), after Lightning's teardown."""
    from tuiconsole.errors import StopTraining

    class GoesNaN(Tiny):
        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            loss = super().training_step(batch, batch_idx)
            return loss * float("nan") if self.trainer.global_step == 3 else loss

    with pytest.raises(StopTraining) as info:
        fit(tmp_path, GoesNaN(), epochs=5, nan="stop")
    assert info.value.code == 1
    last = end(tmp_path)
    assert last["state"] == "ERROR" and last["step"] == 4


@pytest.mark.subprocess
def test_ctrl_c_stops_the_fit_and_exits_130(tmp_path: Path) -> None:
    import signal
    import subprocess
    import sys

    script = tmp_path / "fit.py"
    script.write_text(SIGTERMED)
    env = {**os.environ, "PYTHONPATH": str(SAMPLE.parents[1])}
    proc = subprocess.Popen(
        [sys.executable, str(script), str(tmp_path / "run")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, err[-2000:]
    assert "fit returned" not in out  # StopTraining left fit() (no traceback)
    assert "Traceback" not in err
    stop = command(tmp_path, "stop")
    assert stop["source"] == "signal:SIGINT"
    last = end(tmp_path)
    assert last["state"] == "STOPPED" and last["step"] == stop["step"]


def test_optimizers_sharing_a_parameter_are_refused_with_the_reason(tmp_path: Path) -> None:
    class Shared(TwoOptimizers):
        def configure_optimizers(self) -> Any:
            g = torch.optim.Adam(self.generator.parameters(), lr=1e-3)
            d = torch.optim.SGD(self.parameters(), lr=0.01)  # the generator's too
            return [g, d]

    with pytest.raises(TuiconsoleError, match="both hold a parameter"):
        fit(tmp_path, Shared(), epochs=1)


def test_a_replayed_journal_gives_the_same_weights(tmp_path: Path) -> None:
    """A fit with lr, split and rebuild at chosen steps, then the same fit with replay=
    its journal and no commands: the final weights are equal bit for bit (and differ from
    a fit with neither)."""
    at = {3: "lr body 0.01", 6: "split out head lr=0.2", 9: "rebuild Adam lr=0.003"}
    torch.manual_seed(0)
    first = Tiny(scheduler=True)
    fit(tmp_path / "a", first, at, epochs=2)
    commands = [r for r in journal(tmp_path / "a") if r["type"] == "command"]
    assert [(r["step"], r["ok"]) for r in commands[:3]] == [(3, True), (6, True), (9, True)]
    torch.manual_seed(0)
    again = Tiny(scheduler=True)
    _, _, console = fit(
        tmp_path / "b", again, epochs=2, replay=tmp_path / "a" / "run" / "journal.jsonl"
    )
    assert type(console.steer.optimizer).__name__ == "Adam"  # type: ignore[union-attr]
    torch.manual_seed(0)
    plain = Tiny(scheduler=True)
    fit(tmp_path / "c", plain, epochs=2)
    a, b, c = first.state_dict(), again.state_dict(), plain.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)
