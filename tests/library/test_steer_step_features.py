"""A loop of its own with the step features it can have: the live clip value
(``steer.clip_gradients()`` clips to it, ``clip`` commands change it) and its GradScaler,
whose state goes into checkpoints and comes back on resume, bit for bit on CPU (torch's
CPU float16 autocast)."""

from __future__ import annotations

import pytest
import torch

import tuiconsole
from tests.library.steerloop import Parts, batch, commands, make
from tests.reliability.helpers import assert_same, optimizer_sd, weights
from tuiconsole.engine.checkpoint import load_checkpoint
from tuiconsole.engine.config import RunConfig
from tuiconsole.engine.ownloop import OwnLoop
from tuiconsole.errors import TuiconsoleError

STEPS = 12


def amp_step(parts: Parts, scaler: torch.amp.GradScaler, steer, step: int) -> torch.Tensor:
    """One step as the torch AMP recipe writes it, clipping through the steer."""
    inputs, targets = batch(step)
    with torch.autocast("cpu", dtype=torch.float16):
        loss = parts.criterion(parts.model(inputs), targets)
    parts.optimizer.zero_grad()
    scaler.scale(loss).backward()
    scaler.unscale_(parts.optimizer)
    steer.clip_gradients()
    scaler.step(parts.optimizer)
    scaler.update()
    return loss


def run_amp(new_steer, stop_at: int = STEPS, **kw):
    parts = make()
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    steer = new_steer(parts, scaler=scaler, grad_clip=0.5, **kw)
    for step in range(steer.start_step, stop_at):
        loss = amp_step(parts, scaler, steer, step)
        if step == 3:
            steer.session.submit("clip 0.2")
        if step == 7:
            steer.session.submit("checkpoint")
        steer.step(loss)
    return parts, scaler, steer


def test_the_scaler_and_the_live_clip_resume_bit_for_bit(new_steer):
    a, scaler_a, steer_a = run_amp(new_steer)
    view = steer_a.session._trainer._build_snapshot().step_view  # read now
    assert view is not None and view.grad_clip == 0.2 and view.clip_steps == STEPS
    assert view.scale == scaler_a.get_scale() and view.clipped > 0
    assert [(s, c) for s, c, _ in commands(steer_a.run_dir)] == [
        (4, "clip 0.2"),
        (8, "checkpoint"),
    ]
    ckpt = steer_a.run_dir / "checkpoint-step8.pt"
    saved = load_checkpoint(ckpt)["step_features"]
    assert saved["grad_clip"] == 0.2 and saved["scaler"]["scale"] == pytest.approx(2.0**10)
    steer_a.close()

    b, scaler_b, steer_b = run_amp(new_steer, resume=ckpt)
    assert steer_b.start_step == 8 and steer_b.grad_clip == 0.2
    assert_same(weights(a.model), weights(b.model))
    assert_same(optimizer_sd(a.optimizer), optimizer_sd(b.optimizer))
    assert scaler_a.state_dict() == scaler_b.state_dict()
    view_b = steer_b.session._trainer._build_snapshot().step_view
    assert view_b == view  # the counts and the last norm came back with it
    steer_b.close()


def plain_step(parts: Parts, steer, step: int) -> torch.Tensor:
    inputs, targets = batch(step)
    loss = parts.criterion(parts.model(inputs), targets)
    parts.optimizer.zero_grad()
    loss.backward()
    steer.clip_gradients()
    parts.optimizer.step()
    return loss


def command_at_next_boundary(steer, parts: Parts, text: str):
    """A command from a front-end, applied at the loop's next boundary (after a step)."""
    future = steer.session.submit(text)
    steer.step(plain_step(parts, steer, steer.steps))
    return future.result(timeout=5)


def test_clip_gradients_clips_to_the_live_value_and_off_returns_none(new_steer):
    parts = make()
    steer = new_steer(parts)
    r = command_at_next_boundary(steer, parts, "clip 0.01")  # that step was not clipped
    assert r.ok and r.message == "grad clip off->0.01 from the next optimizer step"
    inputs, targets = batch(1)
    parts.optimizer.zero_grad()
    parts.criterion(parts.model(inputs), targets).backward()
    expected = torch.nn.utils.get_total_norm([p.grad for p in parts.model.parameters()])
    norm = steer.clip_gradients()
    assert norm is not None and torch.equal(norm, expected)
    after = torch.nn.utils.get_total_norm([p.grad for p in parts.model.parameters()])
    assert float(after) == pytest.approx(0.01, rel=1e-3)
    parts.optimizer.step()
    steer.step(torch.tensor(1.0))
    assert steer.grad_clip == 0.01
    r = command_at_next_boundary(steer, parts, "clip off")
    assert r.ok and steer.clip_gradients() is None


def test_a_clip_command_says_so_when_the_loop_does_not_clip_through_steer(new_steer):
    parts = make()
    steer = new_steer(parts)
    future = steer.session.submit("clip 1")
    inputs, targets = batch(0)
    parts.criterion(parts.model(inputs), targets).backward()
    parts.optimizer.step()  # no clip_gradients()
    steer.step(torch.tensor(1.0))
    r = future.result(timeout=5)
    assert r.ok and r.message.endswith(
        "; this loop clips only if it calls steer.clip_gradients() (it has not yet)"
    )


def test_accumulate_is_the_loops_own(new_steer):
    parts = make()
    steer = new_steer(parts)
    r = command_at_next_boundary(steer, parts, "accumulate 4")
    assert not r.ok and r.message == (
        "accumulate: this loop is the script's own: it decides how many micro-batches make "
        "an optimizer step"
    )


@pytest.mark.parametrize(
    "kw, fragment",
    [
        ({"grad_clip": 0}, "tuiconsole.steer(..., grad_clip=) must be a finite number > 0"),
        ({"grad_clip": "1"}, "tuiconsole.steer(..., grad_clip=) must be a number > 0, got str"),
        ({"scaler": object()}, "scaler=): must be a torch.amp.GradScaler, got object"),
    ],
)
def test_bad_scaler_or_grad_clip_is_one_line(tmp_path, kw, fragment):
    parts = make()
    with pytest.raises(TuiconsoleError) as err:
        tuiconsole.steer(parts.model, parts.optimizer, run_dir=tmp_path, listen=False, **kw)
    assert fragment in str(err.value)


@pytest.mark.parametrize("option, value", [("amp", "bf16"), ("accumulate", 2), ("compile", True)])
def test_step_options_a_loop_takes_itself_are_refused(option, value):
    parts = make()
    with pytest.raises(TuiconsoleError) as err:
        OwnLoop(parts.model, parts.optimizer, config=RunConfig(**{option: value}))
    assert str(err.value).startswith(f"--{option} does not apply to a loop of its own")
