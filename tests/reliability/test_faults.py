"""Faults during training: a step that raises (script, loader, OOM, optimizer),
NaN/Inf losses under --nan=pause|stop|ignore, both ways of checking for them,
and that none of it adds a per-step host sync."""

from __future__ import annotations

import math

import pytest
import torch

from tests.reliability.helpers import (
    assert_same,
    cli,
    jsonl,
    loader_spec,
    optimizer_sd,
    sync_trainer,
    weights,
    write_script,
)
from tests.unit.models import make_spec
from tuiconsole.engine.checkpoint import load_checkpoint
from tuiconsole.engine.snapshot import RunState
from tuiconsole.engine.trainer import RunConfig, Trainer


def failing_at(k: int, exc: BaseException, **spec_kw):
    """A spec whose training_step raises ``exc`` on its k-th call."""
    spec = make_spec(**spec_kw)
    calls = {"n": 0}

    def training_step(model, batch, criterion):
        calls["n"] += 1
        if calls["n"] == k:
            raise exc
        x, y = batch
        return criterion(model(x), y)

    spec.training_step = training_step
    return spec


def reference_weights(steps: int, **spec_kw) -> tuple[dict, tuple]:
    t = sync_trainer(make_spec(**spec_kw))
    t.step_now(steps)
    return weights(t.model), optimizer_sd(t.optimizer)


def assert_error_with_last_good_checkpoint(t: Trainer, k: int, type_: str, fragment: str):
    assert t.state == RunState.ERROR and t.step == k - 1
    assert (t.error.type, t.error.step) == (type_, k)
    assert fragment in t.error.message
    snap = t._build_snapshot()
    assert snap.status.error == t.error
    assert snap.status.checkpoint.endswith(f"checkpoint-step{k - 1}.pt")
    log = [e.text for e in snap.log]
    assert f"training raised {type_} at step {k}: " in "\n".join(log)
    assert f"checkpoint of the last good step {k - 1} written to" in "\n".join(log)
    (err,) = [r for r in jsonl(t.run_dir / "journal.jsonl") if r["type"] == "error"]
    assert err["step"] == k and err["error"] == type_ and fragment in err["message"]
    assert err["checkpoint"] == snap.status.checkpoint
    ckpt = load_checkpoint(err["checkpoint"])
    assert ckpt["step"] == k - 1 and ckpt["reason"] == "error"
    return ckpt


@pytest.mark.parametrize(
    "exc, type_, fragment",
    [
        (ValueError("bad batch"), "ValueError", "bad batch"),
        (
            torch.OutOfMemoryError(
                "CUDA out of memory. Tried to allocate 20.00 GiB. GPU 0 has a total capacity "
                "of 79.1 GiB of which 1.2 GiB is free.\nIncluding non-PyTorch memory..."
            ),
            "OutOfMemoryError",
            "out of memory (CUDA out of memory. Tried to allocate 20.00 GiB); lower the batch",
        ),
    ],
    ids=["ValueError", "OOM"],
)
def test_step_that_raises_is_error_with_checkpoint_of_last_good_step(
    tmp_path, exc, type_, fragment
):
    k = 6
    t = sync_trainer(failing_at(k, exc), tmp_path / "run")
    t.step_now(20)
    ckpt = assert_error_with_last_good_checkpoint(t, k, type_, fragment)
    good_w, good_opt = reference_weights(k - 1)
    assert_same(ckpt["model"], good_w)
    assert_same(weights(t.model), good_w)  # the failed step changed no weight
    assert_same(optimizer_sd(t.optimizer), good_opt)
    assert all(p.grad is None for p in t.model.parameters())  # memory given back
    t.close()
    # the run stays inspectable; the final record says how it ended
    end = jsonl(t.run_dir / "journal.jsonl")[-1]
    assert end["type"] == "end" and end["state"] == "ERROR"


def test_loader_that_raises_mid_epoch(tmp_path):
    class Flaky:
        def __init__(self, data, bad):
            self.data, self.bad = data, bad

        def __iter__(self):
            for i, b in enumerate(self.data):
                if i == self.bad:
                    raise OSError("disk went away")
                yield b

    spec = make_spec()
    spec.train_loader = Flaky(spec.train_loader, bad=3)
    t = sync_trainer(spec, tmp_path / "run")
    t.step_now(10)
    ckpt = assert_error_with_last_good_checkpoint(t, 4, "OSError", "disk went away")
    assert_same(ckpt["model"], reference_weights(3)[0])
    t.close()


def test_error_inside_optimizer_step_writes_no_checkpoint(tmp_path):
    spec = make_spec()
    original = spec.optimizer.step
    calls = {"n": 0}

    def step(*a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("foreach kernel failed")
        return original(*a, **k)

    spec.optimizer.step = step
    t = sync_trainer(spec, tmp_path / "run")
    t.step_now(10)
    assert t.state == RunState.ERROR and t.error.step == 3
    text = "\n".join(e.text for e in t._build_snapshot().log)
    assert "no checkpoint written: the error came from inside optimizer.step()" in text
    assert not list((tmp_path / "run").glob("*.pt"))
    t.close()


def test_resume_from_error_checkpoint_skips_the_failed_batch(tmp_path):
    t = sync_trainer(failing_at(4, ValueError("bad")), tmp_path / "run")
    t.step_now(10)
    t.close()
    r = Trainer(make_spec(), RunConfig(resume=t.run_dir / "checkpoint-step3.pt")).prepare()
    assert r.step == 3 and r.data_position()["epoch_batches"] == 4
    r.step_now(2)
    assert r.state == RunState.RUNNING and r.step == 5


# --------------------------------------------------------------------------- NaN / Inf


def poisoned_spec(bad_index: int = 4, value: float = math.nan, **kw):
    """make_spec's data with batch ``bad_index`` of each epoch poisoned (loss NaN/Inf)."""
    spec = make_spec(**kw)
    data = list(spec.train_loader)
    x, y = data[bad_index]
    data[bad_index] = (x * value, y)
    spec.train_loader = data
    return spec


@pytest.mark.parametrize("value", [math.nan, math.inf], ids=["nan", "inf"])
def test_nonfinite_loss_pauses_at_that_step_with_its_weights_untouched(tmp_path, value):
    t = sync_trainer(poisoned_spec(value=value, scheduler="step"), tmp_path / "run")
    t.step_now(20)
    assert t.state == RunState.NAN_PAUSED and t.step == 5  # the skipped step counts
    ev = t.nan_event
    assert ev.step == 5 and ev.skipped and ev.lrs == (("features", 1e-3), ("classifier", 1e-2))
    assert math.isnan(ev.loss) or math.isinf(ev.loss)
    # the bad step changed nothing: weights, optimizer state, scheduler
    good = sync_trainer(make_spec(scheduler="step"))
    good.step_now(4)
    assert_same(weights(t.model), weights(good.model))
    assert_same(optimizer_sd(t.optimizer), optimizer_sd(good.optimizer))
    assert t.scheduler.last_epoch == 4
    snap = t._build_snapshot()
    assert snap.status.state == RunState.NAN_PAUSED and snap.status.nan == ev
    nan_log = [e for e in snap.log if e.kind == "nan"]
    assert nan_log and nan_log[-1].text.startswith(f"NAN-PAUSED: loss is {ev.loss} at step 5 (lr ")
    assert "features=0.001, classifier=0.01" in nan_log[-1].text and "decay 0.1" in nan_log[-1].text
    (rec,) = [r for r in jsonl(t.run_dir / "journal.jsonl") if r["type"] == "nan"]
    assert rec["step"] == 5 and rec["action"] == "pause" and rec["lrs"]["classifier"] == 1e-2
    # the user lowers the lr and resumes: training goes on (the poisoned batch is behind)
    assert t.apply_now("decay 0.1").ok and t.apply_now("resume").ok
    t.step_now(3)
    assert t.state == RunState.RUNNING and t.step == 8
    assert all(torch.isfinite(p).all() for p in t.model.parameters())
    t.close()


def test_nan_stop_is_an_error_with_last_good_checkpoint(tmp_path):
    t = sync_trainer(poisoned_spec(), tmp_path / "run", nan="stop")
    t.step_now(20)
    ckpt = assert_error_with_last_good_checkpoint(t, 5, "NonFiniteLoss", "loss is nan at step 5")
    assert_same(ckpt["model"], reference_weights(4)[0])
    t.close()


def test_nan_ignore_goes_on_and_says_so_once(tmp_path):
    t = sync_trainer(poisoned_spec(), tmp_path / "run", nan="ignore", log_every=4)
    t.step_now(12)
    assert t.state == RunState.RUNNING and t.step == 12
    notes = [e.text for e in t._build_snapshot().log if e.kind == "nan"]
    assert len(notes) == 1 and "at step 5" in notes[0] and "--nan=ignore" in notes[0]
    t.close()


def test_flush_check_names_the_exact_first_bad_step(tmp_path):
    """The accelerator path (no per-step read), exercised on CPU."""
    t = Trainer(
        poisoned_spec(), RunConfig(run_dir=tmp_path / "run", log_every=8, nan_check="flush")
    ).prepare()
    t.step_now(20)
    assert t.state == RunState.NAN_PAUSED
    ev = t.nan_event
    assert ev.step == 5 and not ev.skipped and ev.detected_at == 8 == t.step
    assert "found at step 8, updates up to it were applied" in str(ev)
    t.close()


def test_replay_of_a_nan_paused_run_resumes_where_the_user_did(tmp_path):
    t = sync_trainer(poisoned_spec(bad_index=2), tmp_path / "run")
    t.step_now(10)
    assert t.state == RunState.NAN_PAUSED and t.step == 3
    t.apply_now("lr classifier *0.5")
    t.apply_now("resume")
    t.step_now(10)
    assert t.state == RunState.NAN_PAUSED  # the poisoned batch comes round again
    t.apply_now("resume")
    t.step_now(3)
    t.close()
    r = sync_trainer(poisoned_spec(bad_index=2), replay=t.run_dir / "journal.jsonl")
    r.step_now(t.step)
    assert r.step == t.step and r.state == RunState.RUNNING
    assert_same(weights(r.model), weights(t.model))


@pytest.mark.parametrize("check, per_step", [("step", 1), ("flush", 0)])
def test_nan_checks_add_no_per_step_host_sync(monkeypatch, check, per_step):
    """Neither mode calls a syncing method per step; "step" checks each loss on the host."""
    from tuiconsole.engine import faults

    names = ("item", "cpu", "tolist", "__float__", "__bool__", "numpy", "__int__", "is_nonzero")
    counts = dict.fromkeys(names, 0)
    for name in names:
        original = getattr(torch.Tensor, name)

        def counted(self, *a, _orig=original, _name=name, **k):
            counts[_name] += 1
            return _orig(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, counted)
    checks = []
    real_read = faults.host_scalar

    def counted_read(loss):
        checks.append(loss)
        return real_read(loss)

    monkeypatch.setattr(faults, "host_scalar", counted_read)
    t = Trainer(make_spec(), RunConfig(max_steps=300, log_every=0, nan_check=check))
    t._snapshot_wanted = False
    t.prepare()
    t._snapshot_wanted = False
    t.step_now(300)
    assert t.step == 300
    assert sum(counts.values()) <= 5, counts
    assert len(checks) == 300 * per_step


def test_cpu_finite_check_reads_the_value():
    from tuiconsole.engine.faults import finite_on_cpu as _finite_on_cpu
    from tuiconsole.engine.faults import host_scalar as _host_scalar

    assert _host_scalar(torch.tensor(0.1, dtype=torch.float32)) == torch.tensor(0.1).item()
    assert _host_scalar(torch.tensor([2.5], dtype=torch.float64)) == 2.5
    assert _host_scalar(torch.tensor(2.5, dtype=torch.bfloat16)) is None  # read by torch
    assert _host_scalar(torch.tensor([1.0, 2.0])) is None
    for dtype in (torch.float32, torch.float64, torch.bfloat16):
        assert _finite_on_cpu(torch.tensor(1.5, dtype=dtype))[0]
        assert not _finite_on_cpu(torch.tensor(float("nan"), dtype=dtype))[0]
        assert not _finite_on_cpu(torch.tensor(float("-inf"), dtype=dtype))[0]
    assert not _finite_on_cpu(torch.tensor([1.0, float("inf")]))[0]


@pytest.mark.subprocess
def test_headless_nan_stop_and_default_in_batch_mode(tmp_path):
    """Not a terminal on stdin: the default becomes stop (nobody could resume); exit 1."""
    body = """
    import torch
    from torch import nn
    model = nn.Linear(4, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    criterion = nn.CrossEntropyLoss()
    g = torch.Generator().manual_seed(0)
    train_loader = [(torch.randn(8, 4, generator=g), torch.randint(0, 2, (8,), generator=g))
                    for _ in range(6)]
    train_loader[3] = (train_loader[3][0] * float("nan"), train_loader[3][1])
    """
    script = write_script(tmp_path, body)
    r = cli("run", str(script), "--headless", "--run-dir", str(tmp_path / "r"))
    assert r.returncode == 1, r.stdout + r.stderr
    assert (
        "training failed: NonFiniteLoss at step 4: loss is nan at step 4 (lr group0=0.1)"
        in r.stdout
    )
    assert "checkpoint of the last good step 3 written to" in r.stdout
    assert load_checkpoint(tmp_path / "r" / "checkpoint-step3.pt")["step"] == 3


def test_flush_mode_on_a_loader_spec_keeps_bit_for_bit_replay(tmp_path):
    """The data-position bookkeeping does not disturb determinism of a normal run."""
    a = sync_trainer(loader_spec(scheduler="lambda"), tmp_path / "a")
    a.step_now(30)
    b = sync_trainer(loader_spec(scheduler="lambda"), tmp_path / "b", nan_check="flush")
    b.step_now(30)
    assert_same(weights(a.model), weights(b.model))
    a.close()
    b.close()


@pytest.mark.parametrize(
    "exc, type_, fragment",
    [
        (SystemExit(3), "SystemExit", "the script called sys.exit(3) inside the step"),
        (KeyboardInterrupt(), "KeyboardInterrupt", "KeyboardInterrupt raised inside the step"),
    ],
    ids=["sys.exit", "KeyboardInterrupt"],
)
def test_exit_inside_a_step_still_writes_the_last_good_checkpoint(tmp_path, exc, type_, fragment):
    """These are BaseExceptions: they used to skip the step's handler, so the run
    ended with no checkpoint (and step_now raised them)."""
    k = 4
    t = sync_trainer(failing_at(k, exc), tmp_path / "run")
    t.step_now(10)
    ckpt = assert_error_with_last_good_checkpoint(t, k, type_, fragment)
    assert_same(ckpt["model"], reference_weights(k - 1)[0])
    t.close()


@pytest.mark.subprocess
def test_sys_exit_in_a_step_of_a_cli_run_writes_the_checkpoint(tmp_path):
    script = write_script(
        tmp_path,
        """
        import sys, torch
        from torch import nn
        model = nn.Linear(4, 2)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        criterion = nn.CrossEntropyLoss()
        train_loader = [(torch.randn(8, 4), torch.randint(0, 2, (8,))) for _ in range(10)]
        calls = 0
        def training_step(model, batch, criterion):
            global calls
            calls += 1
            if calls == 3:
                sys.exit(0)
            return criterion(model(batch[0]), batch[1])
        """,
    )
    r = cli("run", str(script), "--headless", "--run-dir", str(tmp_path / "run"))
    assert r.returncode == 1, r.stdout + r.stderr
    assert "training failed: SystemExit at step 3: the script called sys.exit(0)" in r.stdout
    assert (tmp_path / "run" / "checkpoint-step2.pt").is_file()
