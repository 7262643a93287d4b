"""A scheduler never silently undoes a manual change. Every lr-changing command
(lr, decay, set lr=, split lr=, rebuild lr=) against StepLR, CosineAnnealingLR,
OneCycleLR, ReduceLROnPlateau (and LambdaLR): the schedule continues *from* the
user's value. See the README's per-scheduler notes for the exact behaviour."""

from __future__ import annotations

import warnings

import pytest
import torch

from tests.reliability.helpers import loader_spec, sync_trainer

EDIT_AT, TOTAL = 7, 19  # StepLR(step_size=7) halves at 7 and 14; cosine/onecycle move every step


def lrs(t):
    return [float(g["lr"]) for g in t.optimizer.param_groups]


def shadow(kind: str, steps: int) -> list[list[float]]:
    """The schedule alone, no manual edit."""
    t = sync_trainer(loader_spec(scheduler=kind))
    out = [lrs(t)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(steps):
            t.step_now(1)
            out.append(lrs(t))
    return out


EDITS = {
    # command, group index edited, factor applied to that group's schedule
    "lr": ("lr classifier {x3}", 1, 3.0),
    "lr-relative": ("lr classifier *3", 1, 3.0),
    "decay": ("decay 0.25 classifier", 1, 0.25),
    "set": ("set features lr={x3f}", 0, 3.0),
}


@pytest.mark.parametrize("kind", ["step", "cosine", "onecycle", "lambda"])
@pytest.mark.parametrize("edit", list(EDITS))
def test_manual_lr_survives_and_the_schedule_continues_from_it(kind, edit):
    text, index, factor = EDITS[edit]
    ref = shadow(kind, TOTAL)
    t = sync_trainer(loader_spec(scheduler=kind))
    t.step_now(EDIT_AT)
    assert lrs(t) == pytest.approx(ref[EDIT_AT], rel=1e-12)
    r = t.apply_now(
        text.format(x3=repr(ref[EDIT_AT][1] * 3), x3f=repr(ref[EDIT_AT][0] * 3)), source="t"
    )
    assert r.ok, r.message
    for step in range(EDIT_AT + 1, TOTAL + 1):
        t.step_now(1)
        want = list(ref[step])
        want[index] *= factor
        assert lrs(t) == pytest.approx(want, rel=1e-9), (kind, edit, step)


@pytest.mark.parametrize("kind", ["step", "cosine", "onecycle", "lambda"])
def test_split_with_its_own_lr_follows_the_schedule_scaled(kind):
    ref = shadow(kind, TOTAL)
    t = sync_trainer(loader_spec(scheduler=kind))
    t.step_now(EDIT_AT)
    assert t.apply_now(f"split fc1 classifier.0 lr={ref[EDIT_AT][1] * 0.5!r}").ok
    t.step_now(TOTAL - EDIT_AT)
    got = lrs(t)
    assert got == pytest.approx([ref[TOTAL][0], ref[TOTAL][1], ref[TOTAL][1] * 0.5], rel=1e-9)


@pytest.mark.parametrize("kind", ["lambda", "onecycle", "cosine", "step"])
def test_rebuild_with_a_new_lr_is_not_reverted(kind):
    """`rebuild ... lr=V` used to leave base_lrs/initial_lr at the old values, so a
    LambdaLR or OneCycleLR put the old lrs back at its next step."""
    ref = shadow(kind, TOTAL)
    t = sync_trainer(loader_spec(scheduler=kind))
    t.step_now(EDIT_AT)
    new = 0.004
    assert t.apply_now(f"rebuild Adam lr={new}").ok
    assert lrs(t) == [new, new]
    t.step_now(TOTAL - EDIT_AT)
    want = [ref[TOTAL][i] * new / ref[EDIT_AT][i] for i in range(2)]
    assert lrs(t) == pytest.approx(want, rel=1e-9)


def test_cosine_with_eta_min_keeps_the_edit_as_a_scaled_gap_that_ends_at_eta_min():
    spec = loader_spec(scheduler=None)
    spec.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
        spec.optimizer, T_max=20, eta_min=1e-4
    )
    t = sync_trainer(spec)
    t.step_now(5)
    before = lrs(t)[1]
    assert t.apply_now(f"lr classifier {before * 3!r}").ok
    t.step_now(1)
    sched = t.scheduler
    # one cosine step: (lr - eta_min) shrinks by the cosine ratio, from the user's value
    import math

    ratio = (1 + math.cos(math.pi * 6 / 20)) / (1 + math.cos(math.pi * 5 / 20))
    assert lrs(t)[1] == pytest.approx((before * 3 - 1e-4) * ratio + 1e-4, rel=1e-9)
    t.step_now(14)
    assert sched.last_epoch == 20 and lrs(t)[1] == pytest.approx(1e-4, rel=1e-6)


# --------------------------------------------------------------------------- plateau


def plateau_trainer(min_lr: float = 0.0):
    spec = loader_spec(scheduler=None, interval="epoch")
    spec.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        spec.optimizer, factor=0.5, patience=0, threshold=0.5, min_lr=min_lr
    )
    return sync_trainer(spec)


EPOCH = 11  # batches per epoch of loader_spec


def test_plateau_reduces_from_the_manual_value():
    t = plateau_trainer()
    t.step_now(2 * EPOCH + 1)  # epoch 1 sets "best", epoch 2 does not improve by 50%: halve
    assert lrs(t) == pytest.approx([5e-4, 5e-3])
    assert t.apply_now("lr classifier 0.02").ok
    t.step_now(EPOCH)
    assert lrs(t) == pytest.approx([2.5e-4, 0.01])  # halved from the user's 0.02, not reset


def test_plateau_keeps_a_manual_lr_below_min_lr_and_survives_a_split():
    t = plateau_trainer(min_lr=1e-5)
    t.step_now(EPOCH + 1)
    assert t.apply_now("lr classifier 1e-7").ok
    assert t.apply_now("split fc1 classifier.0 lr=0.03").ok
    assert len(t.scheduler.min_lrs) == 3
    t.step_now(2 * EPOCH)
    got = lrs(t)
    assert got[1] == 1e-7  # below min_lr: never raised back up
    assert got[2] == pytest.approx(0.03 * 0.25)  # the split group is reduced too
    assert got[0] == pytest.approx(1e-3 * 0.25)


def test_plateau_metric_is_the_loss_of_the_epoch_end_step():
    """Deterministic: not whatever loss a snapshot last happened to read."""
    t = plateau_trainer()
    t.step_now(EPOCH + 1)
    assert t.scheduler.best == pytest.approx(t._losses.last)
    assert t._losses.last_step == EPOCH  # the last step of the epoch, read at its end
