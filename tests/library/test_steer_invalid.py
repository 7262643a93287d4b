"""Invalid use of the library is one clear TuiconsoleError at the caller's line (no
traceback through tuiconsole's own frames), and changes nothing."""

from __future__ import annotations

import json
import traceback

import numpy as np
import pytest
import torch
from torch import nn

import tuiconsole
from tests.library.steerloop import Beside, end_record, make, train
from tuiconsole.errors import TuiconsoleError


def _raised_here(exc: BaseException) -> None:
    """The error is one line, and its traceback goes through none of tuiconsole's
    internals (the engine, the script checks): only the API function that was called."""
    assert "\n" not in str(exc)
    frames = traceback.extract_tb(exc.__traceback__)
    inside = [f.filename for f in frames if "/tuiconsole/" in f.filename]
    assert all(
        name.endswith(("tuiconsole/__init__.py", "tuiconsole/library.py")) for name in inside
    )
    assert exc.__cause__ is None and exc.__suppress_context__


def _steer_error(tmp_path, model, optimizer, **kw) -> str:
    with pytest.raises(TuiconsoleError) as raised:
        tuiconsole.steer(model, optimizer, run_dir=tmp_path / "run", listen=False, **kw)
    _raised_here(raised.value)
    assert not (tmp_path / "run").exists()  # refused before the run dir was made
    return str(raised.value)


def test_a_model_that_is_not_a_module(tmp_path):
    parts = make()
    message = _steer_error(tmp_path, parts.model.state_dict(), parts.optimizer)
    assert message == ("tuiconsole.steer(model, ...): model must be an nn.Module, got OrderedDict")


def test_an_optimizer_over_other_parameters(tmp_path):
    parts = make()
    other = torch.optim.SGD([nn.Parameter(torch.zeros(3, 2)), *parts.model.parameters()], lr=0.1)
    message = _steer_error(tmp_path, parts.model, other)
    assert message == (
        "tuiconsole.steer(model, optimizer) holds 1 parameter(s) that are not the model's "
        "(shapes (3, 2)); build it from model.parameters()"
    )


def test_an_optimizer_that_is_not_one(tmp_path):
    parts = make()
    message = _steer_error(tmp_path, parts.model, parts.optimizer.param_groups)
    assert "must be a torch.optim.Optimizer, got list" in message


def test_a_scheduler_of_another_optimizer(tmp_path):
    parts = make()
    other = torch.optim.SGD(parts.model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(other, 3)
    message = _steer_error(tmp_path, parts.model, parts.optimizer, scheduler=sched)
    assert "must be an lr scheduler attached to the optimizer" in message


def test_an_evaluate_that_is_not_callable(tmp_path):
    parts = make()
    message = _steer_error(tmp_path, parts.model, parts.optimizer, evaluate=0.5)
    assert message == "tuiconsole.steer(..., evaluate=): must be a callable, got float"


def test_a_scheduler_interval_that_is_neither_step_nor_epoch(tmp_path):
    parts = make()
    message = _steer_error(tmp_path, parts.model, parts.optimizer, scheduler_interval="often")
    assert message == (
        'tuiconsole.steer(..., scheduler_interval=): must be "step" or "epoch", got \'often\''
    )


def test_paused_with_nothing_that_could_resume_it(tmp_path):
    """Not served and outside `tuiconsole run`, a paused start would wait forever."""
    parts = make()
    message = _steer_error(tmp_path, parts.model, parts.optimizer, paused=True)
    assert "paused=True, listen=False): nothing could resume the run" in message


@pytest.mark.parametrize(
    "kw, says",
    [
        ({"nan": "panic"}, "--nan must be one of pause, stop, ignore, got 'panic'"),
        ({"max_steps": -1}, "max_steps must be >= 0, got -1"),
        ({"log_every": -3}, "log_every must be >= 0, got -3"),
    ],
)
def test_options_out_of_range(tmp_path, kw, says):
    parts = make()
    assert _steer_error(tmp_path, parts.model, parts.optimizer, **kw) == says


def test_log_every_0_means_no_metrics_lines(new_steer):
    parts = make()
    steer = new_steer(parts, log_every=0)
    train(steer, parts, 120)
    assert not [line for line in (steer.run_dir / "metrics.jsonl").read_text().splitlines() if line]


def test_a_run_dir_that_is_a_file(tmp_path):
    parts = make()
    (tmp_path / "taken").write_text("not a dir")
    with pytest.raises(TuiconsoleError) as raised:
        tuiconsole.steer(parts.model, parts.optimizer, run_dir=tmp_path / "taken", listen=False)
    _raised_here(raised.value)


def test_step_before_optimizer_step_ever_ran(new_steer):
    parts = make()
    steer = new_steer(parts)
    inputs, targets = torch.randn(4, 6), torch.zeros(4, dtype=torch.long)
    loss = parts.criterion(parts.model(inputs), targets)
    loss.backward()
    with pytest.raises(TuiconsoleError) as raised:
        steer.step(loss)  # the loop calls it before optimizer.step()
    _raised_here(raised.value)
    assert str(raised.value) == (
        "steer.step() was called before optimizer.step() ever ran: call it once per step, "
        "after optimizer.step() (and your scheduler's step)"
    )
    assert steer.steps == 0
    train(steer, parts, 3)  # used the right way, it goes on
    assert steer.steps == 3


def test_step_before_optimizer_step_with_sparse_gradients(new_steer):
    """The check reads the gradients (a GradScaler skip leaves them non-finite): sparse
    ones too, still one clear error."""
    model = nn.Embedding(10, 3, sparse=True)
    parts = make()
    parts.model, parts.optimizer = model, torch.optim.SparseAdam(model.parameters())
    steer = new_steer(parts)
    loss = model(torch.tensor([1, 2])).sum()
    loss.backward()
    with pytest.raises(TuiconsoleError, match="before optimizer.step\\(\\) ever ran"):
        steer.step(loss)


@pytest.mark.parametrize(
    "loss, says",
    [
        ("0.5", "the loss must be a tensor or a number, got str"),
        (None, "the loss must be a tensor or a number, got NoneType"),
        (True, "the loss must be a tensor or a number, got bool"),
        ([0.5], "the loss must be a tensor or a number, got list"),
        (torch.ones(3), "the loss must be one number, got a tensor of shape (3,)"),
    ],
)
def test_a_loss_that_is_not_a_number(new_steer, loss, says):
    parts = make()
    steer = new_steer(parts)
    parts.take(0)
    with pytest.raises(TuiconsoleError) as raised:
        steer.step(loss)
    _raised_here(raised.value)
    assert str(raised.value) == f"steer.step(loss): {says}"
    assert steer.steps == 0  # nothing was counted
    steer.step(parts.take(1))
    assert steer.steps == 1


@pytest.mark.parametrize(
    "loss", [0.5, 1, np.float32(0.5), np.float64(0.5), torch.tensor([0.5]), torch.tensor(0.5)]
)
def test_numbers_of_any_kind_are_losses(new_steer, loss):
    parts = make()
    steer = new_steer(parts, log_every=1)
    parts.take(0)
    steer.step(loss)
    steer.close()
    assert steer.steps == 1
    metrics = [json.loads(line) for line in (steer.run_dir / "metrics.jsonl").open()]
    assert {r["step"]: r["loss"] for r in metrics if r["type"] == "train"} == {
        1: 1.0 if loss == 1 else 0.5
    }


def test_step_from_another_thread(new_steer):
    parts = make()
    steer = new_steer(parts)
    loss = parts.take(0)
    with pytest.raises(TuiconsoleError) as raised:
        Beside(lambda: steer.step(loss)).result()
    _raised_here(raised.value)
    assert str(raised.value) == (
        "steer.step() was called from another thread than the one that began the run"
    )
    steer.step(loss)  # from the loop's own thread it is fine
    assert steer.steps == 1


def test_a_first_step_skipped_by_a_grad_scaler_is_not_misuse(new_steer):
    """AMP's GradScaler skips optimizer.step() while its scale makes gradients overflow
    (often the first steps): that is not a loop that calls steer.step() too early."""
    parts = make()
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**127)
    steer = new_steer(parts)
    skipped = 0
    for _ in range(12):
        inputs, targets = torch.randn(8, 6) * 1e3, torch.zeros(8, dtype=torch.long)
        loss = parts.criterion(parts.model(inputs), targets)
        parts.optimizer.zero_grad()
        scale = scaler.get_scale()
        scaler.scale(loss).backward()
        scaler.step(parts.optimizer)
        scaler.update()
        skipped += scaler.get_scale() < scale
        steer.step(loss)
    assert skipped >= 1 and steer.steps == 12
    steer.close()
    assert end_record(steer.run_dir)["state"] == "STOPPED"


def test_a_second_steer_in_a_process_is_a_run_of_its_own(new_steer):
    """Outside a host (`tuiconsole run`), each steer() is its own run (tests, notebooks)."""
    a, b = make(), make(seed=1)
    steer_a, steer_b = new_steer(a), new_steer(b)
    train(steer_a, a, 2)
    train(steer_b, b, 3)
    assert (steer_a.steps, steer_b.steps) == (2, 3)
    assert steer_a.run_dir != steer_b.run_dir


def test_a_closed_run_lets_go_of_the_model(tmp_path):
    """steer() registers an atexit for `python train.py`; once closed the run is not
    kept alive by it (a notebook that trains many models would hold them all)."""
    import gc
    import weakref

    parts = make()
    steer = tuiconsole.steer(parts.model, parts.optimizer, run_dir=tmp_path / "r", listen=False)
    train(steer, parts, 2)
    steer.close()
    ref = weakref.ref(steer)
    del steer
    gc.collect()
    assert ref() is None
