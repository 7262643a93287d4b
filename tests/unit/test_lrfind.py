"""`lrfind`: an lr range test on the real model and data that leaves the run exactly as
it was (weights, optimizer, scheduler, RNG, data position, step), journaled as a
record that replay skips."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, IterableDataset, TensorDataset

from tests.unit.models import ThreadDriver, make_data, make_spec, wait_for
from tuiconsole.engine import commands as C
from tuiconsole.engine.journal import read_sessions
from tuiconsole.engine.lrfind import planned_lrs, suggest
from tuiconsole.engine.snapshot import RunState
from tuiconsole.engine.trainer import RunConfig, Trainer
from tuiconsole.errors import CommandError
from tuiconsole.script import TrainingSpec


def shuffled_spec(optimizer: str, scheduler: str | None) -> TrainingSpec:
    """The test net on a shuffling DataLoader (its order drawn from torch's RNG at each
    epoch's iter()), 8 batches an epoch: a sweep of more steps than that runs passes
    of its own, and the run's next epoch must still draw the same order."""
    spec = make_spec(optimizer, scheduler)
    x = torch.cat([b[0] for b in make_data()])
    y = torch.cat([b[1] for b in make_data()])
    loader = DataLoader(TensorDataset(x, y), batch_size=32, shuffle=True)
    return TrainingSpec(
        model=spec.model,
        optimizer=spec.optimizer,
        criterion=spec.criterion,
        train_loader=loader,
        eval_loader=spec.eval_loader,
        epochs=1000,
        scheduler=spec.scheduler,
        scheduler_interval="step",
    )


def everything(t: Trainer) -> dict[str, Any]:
    """All a run continues from, as plain values and tensors."""
    t._flush_losses()  # the losses kept on the device go into the history
    opt = t.optimizer.state_dict()
    return {
        "model": {k: v.clone() for k, v in t.model.state_dict().items()},
        "grads": [None if p.grad is None else p.grad.clone() for p in t.model.parameters()],
        "opt_state": opt["state"],
        "groups": opt["param_groups"],
        "scheduler": t.scheduler.state_dict() if t.scheduler is not None else None,
        "torch_rng": torch.get_rng_state(),
        "python_rng": random.getstate(),
        "numpy_rng": np.random.get_state()[1].tolist(),
        "step": t.step,
        "epoch": t.epoch,
        "batches": t.data_position()["epoch_batches"],
        "losses": t._losses.history.series(),
        "last_loss": t._losses.last,
        "step_view": t._stepping.view(),
        "scaler": t._stepping.scaler.state_dict() if t._stepping.scaler else None,
        "modes": [m.training for m in t.model.modules()],
    }


def assert_same(a: Any, b: Any, where: str = "") -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(a, b), where  # bit for bit (no NaN here)
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for k in a:
            assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list | tuple):
        assert type(a) is type(b) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, (where, a, b)


def next_batches(t: Trainer, n: int) -> list[Any]:
    return [t._data.take(t.epoch) for _ in range(n)]


@pytest.mark.parametrize(
    "optimizer, scheduler, features, config",
    [
        ("sgd", "step", [], {}),  # SGD with momentum, StepLR stepped every step
        ("adam", "lambda", ["clip 0.5", "accumulate 2"], {}),  # engine/step.py's step
        ("adam", None, ["clip 1"], {"amp": "fp16"}),  # autocast and a GradScaler (CPU)
    ],
)
def test_a_run_with_an_lrfind_in_the_middle_is_bit_for_bit_the_run_without(
    drive, optimizer, scheduler, features, config
):
    results = []
    for sweep in (True, False):
        d = drive(shuffled_spec(optimizer, scheduler), **config)
        for f in features:
            assert d.cmd(f).ok
        scaler = d.trainer._stepping.scaler
        if scaler is not None:
            scaler.set_growth_interval(1)  # its scale doubles each step: the sweep's too
        d.steps(5)  # 5 batches into an 8-batch epoch
        if sweep:
            before = everything(d.trainer)
            r = d.cmd("lrfind from=1e-4 to=1 steps=20")
            assert r.ok, r.message
            view = d.trainer.latest_snapshot().lrfind
            assert view is not None and view.state == "done" and view.taken > 8
            assert_same(everything(d.trainer), before, "right after the sweep")
        d.steps(6)  # on into the next epoch: its order drawn from the restored RNG
        results.append((everything(d.trainer), next_batches(d.trainer, 3)))
    (with_sweep, batches), (without, batches_without) = results
    assert with_sweep["step"] == 11 and with_sweep["epoch"] >= 1  # past an epoch's end
    assert_same(with_sweep, without, "after")
    assert_same(batches, batches_without, "next batches")


def test_the_sweep_sets_exponential_lrs_on_the_real_optimizer_for_its_target_only(drive):
    d = drive(make_spec("sgd", "cosine"))
    d.steps(2)
    seen: list[tuple[float, float]] = []
    hook = d.opt.register_step_pre_hook(
        lambda opt, args, kwargs: seen.append(tuple(g["lr"] for g in opt.param_groups))
    )
    features_lr = d.opt.param_groups[0]["lr"]
    r = d.cmd("lrfind classifier from=1e-5 to=1e-1 steps=9")
    hook.remove()
    assert r.ok, r.message
    planned = planned_lrs(1e-5, 1e-1, 9)
    assert planned[0] == 1e-5 and planned[-1] == 1e-1
    ratios = [b / a for a, b in zip(planned, planned[1:], strict=False)]
    assert all(math.isclose(q, 10**0.5) for q in ratios)  # x10 every 2 steps
    # each optimizer.step() of the sweep saw the next lr on classifier; features kept its own
    assert [s[1] for s in seen] == planned[: len(seen)] and len(seen) >= 5
    assert all(s[0] == features_lr for s in seen)
    view = d.trainer.latest_snapshot().lrfind
    assert view is not None and view.target == "classifier"
    assert list(view.lrs) == planned[: view.taken] and len(view.losses) == view.taken
    # the groups show their own lrs again
    assert d.opt.param_groups[1]["lr"] != planned[-1]
    assert [g.lr for g in d.trainer.latest_snapshot().groups] == [
        g["lr"] for g in d.opt.param_groups
    ]


def test_result_is_in_the_snapshot_and_the_journal_and_replay_ignores_it(drive, tmp_path):
    runs = []
    for sweep in (True, False):
        d = drive(make_spec("adam", "lambda"))
        d.steps(4)
        if sweep:
            assert d.cmd("lrfind features steps=12 from=1e-6 to=1").ok
        assert d.cmd("lr features 0.005").ok
        d.steps(4)
        assert d.cmd("stop").ok
        d.trainer.close()
        runs.append(d.trainer)
    with_sweep, without = runs
    journal = with_sweep.run_dir / "journal.jsonl"
    records = [json.loads(line) for line in journal.read_text().splitlines()]
    found = [r for r in records if r["type"] == "lrfind"]
    assert len(found) == 1
    rec = found[0]
    assert rec["step"] == 4 and rec["state"] == "done" and rec["target"] == "features"
    assert len(rec["lrs"]) == len(rec["losses"]) >= 3 and rec["lrs"][0] == 1e-6
    assert rec["suggestion"] in rec["lrs"] or rec["suggestion"] * 10 in rec["lrs"]
    assert rec["rule"]
    command = next(r for r in records if r["type"] == "command" and r["cmd"].startswith("lrf"))
    assert command["cmd"] == "lrfind features from=1e-06 to=1.0 steps=12" and command["ok"]
    view = with_sweep.latest_snapshot().lrfind
    assert view is not None and view.suggestion == rec["suggestion"] and view.at_step == 4
    assert list(view.losses) == rec["losses"]
    # the journal reads as before: the lrfind record is no command (the command is
    # one, a control command that replay skips)
    cmds = [e.cmd for e in read_sessions(journal)[-1].entries]
    assert cmds == ["step 4", command["cmd"], "lr features 0.005", "step 4", "stop"]
    for run in runs:
        assert_same(everything(run)["model"], everything(without)["model"], "runs")

    replay = Trainer(
        make_spec("adam", "lambda"),
        RunConfig(run_dir=tmp_path / "replay", replay=journal),
    ).prepare()
    replay.step_now(100)  # the journaled stop ends it at step 8
    replay.close()
    assert replay.step == 8 and replay.state == RunState.STOPPED
    assert_same(everything(replay)["model"], everything(without)["model"], "replay")
    assert_same(everything(replay)["opt_state"], everything(without)["opt_state"], "replay")
    replayed = (tmp_path / "replay" / "journal.jsonl").read_text()
    assert '"lrfind"' not in replayed  # skipped: neither run nor journaled again


def test_cancel_midway_puts_the_run_back_and_commands_wait_meanwhile(tmp_path):
    def run(sweep: bool) -> dict[str, Any]:
        t = Trainer(
            make_spec("sgd", "step"),
            RunConfig(run_dir=tmp_path / f"run{sweep}", start_paused=True),
        ).start()
        d = ThreadDriver(t)
        try:
            d.steps(3)
            if sweep:
                lrs = [g["lr"] for g in t.optimizer.param_groups]
                r = d.cmd("lrfind from=1e-6 to=1e-5 steps=10000")
                assert r.ok and "10000 steps" in r.message, r.message
                wait_for(lambda: (v := t.latest_snapshot().lrfind) is not None and v.taken >= 3)
                snap = t.latest_snapshot()
                assert snap.lrfind is not None and snap.lrfind.state == "running"
                assert snap.status.step == 3 and snap.status.state == RunState.PAUSED
                assert [g.lr for g in snap.groups] == lrs  # the groups' own, not the sweep's
                busy = d.cmd("lr features 0.1")
                assert not busy.ok and "lrfind cancel" in busy.message
                assert not d.cmd("lrfind").ok  # one at a time
                assert d.cmd("pause").ok
                r = d.cmd("lrfind cancel")
                assert r.ok and "cancelled" in r.message, r.message
                view = t.latest_snapshot().lrfind
                assert view is not None and view.state == "cancelled"
                assert 3 <= view.taken < 10000 and view.steps == 10000
                assert [g["lr"] for g in t.optimizer.param_groups] == lrs
                assert not d.cmd("lrfind cancel").ok  # nothing to cancel now
            d.steps(3)
            return everything(t)
        finally:
            t.close()

    with_sweep = run(True)
    assert_same(with_sweep, run(False), "after a cancelled sweep")


def test_stop_during_a_sweep_puts_the_run_back_before_its_final_checkpoint(tmp_path):
    t = Trainer(make_spec(), RunConfig(run_dir=tmp_path, start_paused=True)).start()
    d = ThreadDriver(t)
    d.steps(2)
    weights = {k: v.clone() for k, v in t.model.state_dict().items()}
    assert d.cmd("lrfind from=1e-3 to=1e-2 steps=10000").ok
    wait_for(lambda: (v := t.latest_snapshot().lrfind) is not None and v.taken >= 2)
    assert d.cmd("stop").ok
    assert t.wait_done(20)
    t.close()
    assert t.latest_snapshot().lrfind.state == "cancelled"
    ckpt = torch.load(t.last_checkpoint, weights_only=False)
    assert ckpt["step"] == 2
    for k, v in weights.items():
        assert torch.equal(ckpt["model"][k], v), k


@pytest.mark.parametrize(
    "line, fragment",
    [
        ("lrfind from=0", "from must be > 0"),
        ("lrfind from=1 to=0.1", "must be below to"),
        ("lrfind from=1e-3 to=1e-3", "must be below to"),
        ("lrfind to=inf", "finite"),
        ("lrfind from=nan", "finite"),
        ("lrfind steps=1", "steps must be 2..10,000"),
        ("lrfind steps=10001", "steps must be 2..10,000"),
        ("lrfind steps=2.5", "whole number"),
        ("lrfind lr=1", "from=, to= and steps="),
        ("lrfind from=1e-5 from=1e-4", "given twice"),
        ("lrfind a b", "usage"),
        ("lrfind from=1e-5 features", "usage"),
    ],
)
def test_bad_ranges_are_refused_and_change_nothing(drive, line, fragment):
    with pytest.raises(CommandError, match=fragment.replace(".", r"\.")):
        C.parse(line)
    d = drive()
    d.steps(1)
    before = everything(d.trainer)
    r = d.cmd(line)
    assert not r.ok and fragment in r.message
    assert d.trainer.latest_snapshot().lrfind is None
    assert_same(everything(d.trainer), before)


def test_the_grammar_round_trips():
    cmd = C.parse("LRFIND 'my group' STEPS=007 to=1 From=1e-6")
    assert cmd == C.LrFind("my group", 1e-6, 1.0, 7)
    assert C.parse(cmd.text) == cmd
    assert C.parse("lrfind").text == "lrfind all from=1e-07 to=10.0 steps=100"
    assert C.parse("lrfind cancel") == C.LrFind(cancel=True)
    assert C.parse("lrfind cancel").control  # never replayed


def test_refused_while_running_unknown_target_or_a_loader_it_cannot_put_back(drive):
    d = drive()
    d.steps(1)
    assert d.cmd("resume").ok
    r = d.cmd("lrfind")
    assert not r.ok and "pause first" in r.message
    assert d.cmd("pause").ok
    r = d.cmd("lrfind nosuch")
    assert not r.ok and "nosuch" in r.message
    assert d.trainer.latest_snapshot().lrfind is None

    class Stream(IterableDataset):  # type: ignore[type-arg]
        def __iter__(self):
            yield from make_data()

    dataset = TensorDataset(torch.randn(64, 8), torch.zeros(64, dtype=torch.long))
    for loader, why in (
        (iter(make_data() * 10), "iterator"),
        (DataLoader(Stream(), batch_size=None), "IterableDataset"),
        (DataLoader(dataset, num_workers=1, persistent_workers=True), "persistent workers"),
    ):
        spec = make_spec()
        spec = TrainingSpec(
            model=spec.model,
            optimizer=spec.optimizer,
            criterion=spec.criterion,
            train_loader=loader,
            epochs=1,
        )
        d = drive(spec)  # refused before a batch is taken (no worker is started)
        r = d.cmd("lrfind")
        assert not r.ok and why in r.message, r.message


def test_refused_in_a_loop_of_its_own(tmp_path):
    from tuiconsole.engine.ownloop import OwnLoop

    spec = make_spec()
    run = OwnLoop(spec.model, spec.optimizer, config=RunConfig(run_dir=tmp_path, start_paused=True))
    try:
        r = run.apply_now("lrfind")
        assert not r.ok and "own" in r.message, r.message
    finally:
        run.close()


def test_a_nan_paused_run_can_sweep_and_stays_nan_paused(drive):
    d = drive()
    d.steps(2)
    d.cmd("lr all 1e30")
    d.trainer.step_now(1)  # at 1e30 the next steps blow up: NAN-PAUSED
    d.trainer.step_now(5)
    assert d.trainer.state == RunState.NAN_PAUSED
    before = everything(d.trainer)
    r = d.cmd("lrfind from=1e-4 to=1e-2 steps=5")
    assert r.ok, r.message
    assert d.trainer.state == RunState.NAN_PAUSED
    assert_same(everything(d.trainer), before)


def test_suggestion_rules():
    lrs = planned_lrs(1e-4, 1.0, 40)
    # falls fastest around lr 1e-2 (index ~20), lowest at ~3e-1, then blows up
    losses = [2.0 - 1.5 / (1 + math.exp(-(math.log10(lr) + 2) * 4)) for lr in lrs]
    losses[-3:] = [3.0, 6.0, 12.0]
    lr, rule = suggest(lrs, losses, 0.5)
    assert 3e-3 < lr < 3e-2 and "steepest" in rule
    rising = [1.0 + i for i in range(10)]
    lr, rule = suggest(lrs[:10], rising, 0.5)
    assert lr == lrs[0] / 10 and "tenth" in rule
    assert suggest(lrs[:2], [1.0, 0.5], 0.5) == (None, "no suggestion: fewer than 3 points")


def test_a_sweep_that_raises_fails_and_puts_the_run_back(drive):
    spec = make_spec()
    calls = {"n": 0}

    def training_step(model: nn.Module, batch: Any, criterion: Any) -> torch.Tensor:
        calls["n"] += 1
        if calls["n"] == 6:  # the sweep's 4th step (2 steps of the run before)
            raise RuntimeError("boom")
        inputs, targets = batch
        return criterion(model(inputs), targets)

    spec = TrainingSpec(
        model=spec.model,
        optimizer=spec.optimizer,
        criterion=spec.criterion,
        train_loader=spec.train_loader,
        epochs=10,
        training_step=training_step,
    )
    d = drive(spec)
    d.steps(2)
    before = everything(d.trainer)
    r = d.cmd("lrfind steps=10")
    assert r.ok and "failed" in r.message and "boom" in r.message, r.message
    view = d.trainer.latest_snapshot().lrfind
    assert view is not None and view.state == "failed" and view.taken == 3
    assert_same(everything(d.trainer), before)
    assert d.trainer.state == RunState.PAUSED


def test_view_is_downsampled_for_long_sweeps(drive, monkeypatch: pytest.MonkeyPatch):
    from tuiconsole.engine import lrfind

    monkeypatch.setattr(lrfind, "VIEW_POINTS", 5)
    d = drive()
    d.steps(1)
    assert d.cmd("lrfind from=1e-6 to=1e-5 steps=12").ok
    view = d.trainer.latest_snapshot().lrfind
    assert view is not None and view.taken == 12 and len(view.lrs) == 5
    assert view.lrs[0] == 1e-6 and view.lrs[-1] == 1e-5
    rec = [
        json.loads(x)
        for x in Path(d.trainer.run_dir / "journal.jsonl").read_text().splitlines()
        if '"lrfind"' in x
    ][-1]
    assert len(rec["lrs"]) == 12  # the journal keeps every point


def test_a_sweep_before_the_first_step_leaves_no_optimizer_state(drive):
    results = []
    for sweep in (True, False):
        d = drive(make_spec("sgd"))
        assert not d.opt.state  # no step yet: SGD has no momentum buffers
        if sweep:
            assert d.cmd("lrfind steps=5 from=1e-3 to=1e-2").ok
            assert not d.opt.state  # those the sweep made are gone
        d.steps(3)
        results.append(everything(d.trainer))
    assert_same(*results, "after")


def test_the_view_travels_over_the_socket_protocol(drive):
    from tuiconsole.remote.protocol import snapshot_from_dict, snapshot_to_dict

    d = drive()
    d.steps(1)
    assert d.cmd("lrfind steps=6 from=1e-4 to=1e-1").ok
    snap = d.trainer.latest_snapshot()
    again = snapshot_from_dict(json.loads(json.dumps(snapshot_to_dict(snap))))
    assert again.lrfind == snap.lrfind and again.lrfind is not None


@pytest.mark.subprocess  # DataLoader workers are processes
def test_a_loader_with_workers_is_put_back_too(drive):
    """The sweep's pass has workers of its own; the run's iterator (and its workers'
    prefetched batches) is left as it was."""
    results = []
    for sweep in (True, False):
        spec = shuffled_spec("adam", None)
        loader = spec.train_loader
        assert isinstance(loader, DataLoader)
        spec.train_loader = DataLoader(loader.dataset, batch_size=32, shuffle=True, num_workers=2)
        d = drive(spec)
        d.steps(5)
        if sweep:
            assert d.cmd("lrfind steps=12 from=1e-4 to=1").ok
        d.steps(6)
        results.append((everything(d.trainer), next_batches(d.trainer, 3)))
    assert_same(*results, "after")
