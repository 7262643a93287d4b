"""``steer.step(loss)`` is the step boundary: commands from any front-end are applied
there, in the loop's thread, journaled (fsynced) before it returns; the loss is
recorded without a host sync."""

from __future__ import annotations

import json
import os
import threading

import pytest
import torch

from tests.library.steerloop import Beside, commands, journal, make, train
from tuiconsole.engine.config import RunConfig
from tuiconsole.engine.ownloop import OwnLoop


def test_commands_queued_before_the_first_step_are_applied_at_its_boundary(new_steer):
    parts = make()
    steer = new_steer(parts)
    lr = steer.session.submit("lr head 0.01")
    split = steer.session.submit("split first body.0")
    seen = []
    train(steer, parts, 3, before_boundary=lambda s: seen.append(lr.done()))
    assert seen == [False, True, True]  # queued until the first boundary, not before
    assert lr.result().ok and split.result().ok, (lr.result(), split.result())
    groups = {g["name"]: g for g in parts.optimizer.param_groups}
    assert groups["head"]["lr"] == 0.01
    assert [id(p) for p in groups["first"]["params"]] == [
        id(p) for p in parts.model.body[0].parameters()
    ]
    assert commands(steer.run_dir)[:2] == [
        (1, "lr head 0.01", True),
        (1, "split first body.0", True),
    ]


def test_a_command_is_applied_by_the_loop_thread_and_journaled_before_step_returns(
    new_steer, monkeypatch
):
    """A front-end thread submits; the loop's thread applies it at its next boundary
    (the future resolves there: its callback runs in that thread), and the command's
    record is on disk, fsynced, when that ``steer.step`` returns."""
    parts = make()
    steer = new_steer(parts)
    fsynced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (fsynced.append(fd), real_fsync(fd))[1])
    journal_fd = steer._run.journal._fd
    resolved_in: list[threading.Thread] = []

    def front_end():
        fut = steer.session.submit("lr body *0.5")
        fut.add_done_callback(lambda f: resolved_in.append(threading.current_thread()))
        return fut

    for step in range(5):
        loss = parts.take(step)
        if step == 2:
            fut = Beside(front_end).result()  # submitted from another thread, then joined
            assert not fut.done()
            fsynced.clear()
        steer.step(loss)
        if step == 2:
            assert fut.done() and fut.result().ok, fut.result()
            assert resolved_in == [threading.current_thread()]  # the loop's thread
            assert (3, "lr body *0.5", True) in commands(steer.run_dir)  # on disk now
            assert journal_fd in fsynced
    assert parts.optimizer.param_groups[0]["lr"] == 0.01


def test_lrs_change_only_at_boundaries_under_a_flood_of_commands(new_steer):
    """A front-end sends lr commands as fast as it can while the loop trains: inside
    each step (forward, backward, optimizer.step) the lr never moves."""
    parts = make()
    steer = new_steer(parts)
    torn: list[tuple[int, float, float]] = []
    at_step_start: list[float] = []

    def pre_hook(opt, args, kwargs):
        if opt.param_groups[1]["lr"] != at_step_start[-1]:
            torn.append((len(at_step_start), at_step_start[-1], opt.param_groups[1]["lr"]))

    parts.optimizer.register_step_pre_hook(pre_hook)
    stop = threading.Event()

    def flood() -> int:
        n = 0
        while not stop.is_set():
            n += 1
            steer.session.submit(f"lr head {0.001 * (1 + n % 50)}").result(20)
        return n

    original_take = parts.take

    def take(step: int) -> torch.Tensor:
        at_step_start.append(parts.optimizer.param_groups[1]["lr"])
        return original_take(step)

    parts.take = take  # type: ignore[method-assign]
    sender = Beside(flood)
    try:
        train(steer, parts, 100)
    finally:
        stop.set()
        steer.close()  # answers a command sent after the last boundary
    sent = sender.result()
    assert sent > 10, "the flood never got going"
    assert torn == []
    applied = [c for c in commands(steer.run_dir) if c[1].startswith("lr head")]
    assert len(applied) >= sent - 1 and all(ok for _, _, ok in applied)


SYNC_METHODS = ("item", "cpu", "tolist", "__float__", "__bool__", "numpy", "__int__")


def _count_syncs_inside(monkeypatch, inside: list[bool]) -> dict[str, int]:
    counts = dict.fromkeys(SYNC_METHODS, 0)
    for name in SYNC_METHODS:
        original = getattr(torch.Tensor, name)

        def counted(self, *a, _orig=original, _name=name, **k):
            if inside[0]:
                counts[_name] += 1
            return _orig(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, counted)
    return counts


def test_the_boundary_reads_no_loss_per_step_on_cpu(new_steer, monkeypatch):
    """On CPU the loss is read from host memory for the NaN check (no Tensor method
    call that would be a device sync elsewhere): no such call in 300 boundaries but the
    per-group signals' one batched read for each metrics line (engine/signals.py)."""
    parts = make()
    steer = new_steer(parts, log_every=50)
    inside = [False]
    counts = _count_syncs_inside(monkeypatch, inside)
    real_step = steer.step

    def counted_step(loss):
        inside[0] = True
        try:
            real_step(loss)
        finally:
            inside[0] = False

    steer.step = counted_step  # type: ignore[method-assign]
    train(steer, parts, 300)
    assert counts["tolist"] <= 300 // 50, counts  # the signals, read for each metrics line
    assert sum(counts.values()) == counts["tolist"], counts
    assert steer.steps == 300
    metrics = [json.loads(line) for line in (steer.run_dir / "metrics.jsonl").open()]
    assert all(r["grad_norm"].keys() == r["lr"].keys() for r in metrics if r["type"] == "train")
    logged = [(r["step"], r["loss"]) for r in metrics if r["type"] == "train"]
    assert [s for s, _ in logged] == list(range(50, 301, 50))  # every loss was recorded
    assert all(isinstance(v, float) for _, v in logged)


def test_the_accelerator_path_reads_losses_in_batches_not_per_step(tmp_path, monkeypatch):
    """nan_check="flush" is what an accelerator gets: the boundary keeps the loss on
    its device; 500 boundaries make a handful of batched reads, not 500."""
    parts = make()
    run = OwnLoop(
        parts.model,
        parts.optimizer,
        config=RunConfig(
            run_dir=tmp_path / "run", log_every=0, snapshot_interval=1e9, nan_check="flush"
        ),
    )
    run.open()
    run.begin()
    inside = [False]
    counts = _count_syncs_inside(monkeypatch, inside)
    for step in range(500):
        loss = parts.take(step)
        inside[0] = True
        run.boundary(loss)
        inside[0] = False
    inside[0] = True
    run.close()
    inside[0] = False
    assert counts["tolist"] >= 1  # the one batched read (at the end)
    assert sum(counts.values()) <= 5, counts
    assert run._losses.history.count == 500


@pytest.mark.parametrize("nan", ["pause", "stop", "ignore"])
def test_the_journal_names_the_run_and_its_groups(new_steer, nan):
    parts = make("steplr")
    steer = new_steer(parts, nan=nan)
    train(steer, parts, 2)
    steer.close()
    header = journal(steer.run_dir)[0]
    assert header["type"] == "header"
    assert header["optimizer"] == "SGD" and header["scheduler"] == "StepLR"
    assert [g["name"] for g in header["groups"]] == ["body", "head"]
    assert header["nan"] == nan
