"""A manual lr change survives the scheduler's next step (the known trap)."""

import warnings

import pytest

from tests.unit.models import make_spec


def shadow_lrs(kind: str, steps: int) -> list[list[float]]:
    """The schedule alone: lrs of each group after 0..steps scheduler steps."""
    spec = make_spec(scheduler=kind)
    out = [[g["lr"] for g in spec.optimizer.param_groups]]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(steps):
            spec.optimizer.step()
            spec.scheduler.step()
            out.append([g["lr"] for g in spec.optimizer.param_groups])
    return out


@pytest.mark.parametrize("kind", ["lambda", "cosine", "onecycle", "step"])
def test_manual_lr_is_kept_and_schedule_continues_from_it(drive, kind):
    d = drive(make_spec(scheduler=kind))
    d.steps(7)
    shadow = shadow_lrs(kind, 12)
    assert d.opt.param_groups[1]["lr"] == pytest.approx(shadow[7][1])
    manual = shadow[7][1] * 3.0
    assert d.cmd(f"lr classifier {manual!r}").ok
    d.steps(5)
    got = d.opt.param_groups[1]["lr"]
    # the schedule continues from the user's value: same shape, scaled by 3x
    assert got == pytest.approx(shadow[12][1] * 3.0, rel=1e-6)
    # the other group follows the untouched schedule
    assert d.opt.param_groups[0]["lr"] == pytest.approx(shadow[12][0], rel=1e-6)


@pytest.mark.parametrize("kind", ["lambda", "onecycle"])
def test_split_group_follows_its_schedule(drive, kind):
    d = drive(make_spec(scheduler=kind))
    d.steps(3)
    shadow = shadow_lrs(kind, 8)
    src_lr = d.opt.param_groups[1]["lr"]
    assert d.cmd(f"split fc1 classifier.0 lr={src_lr * 0.5!r}").ok
    d.steps(5)
    lrs = [g["lr"] for g in d.opt.param_groups]
    assert lrs[1] == pytest.approx(shadow[8][1], rel=1e-6)
    assert lrs[2] == pytest.approx(shadow[8][1] * 0.5, rel=1e-6)
    assert lrs[0] == pytest.approx(shadow[8][0], rel=1e-6)


def test_rebuild_keeps_scheduler_step_count(drive):
    d = drive(make_spec(scheduler="lambda"))
    d.steps(4)
    sched = d.trainer.scheduler
    assert sched.last_epoch == 4
    assert d.cmd("rebuild Adam").ok
    assert sched.optimizer is d.opt
    d.steps(2)
    assert sched.last_epoch == 6
    shadow = shadow_lrs("lambda", 6)
    assert d.opt.param_groups[1]["lr"] == pytest.approx(shadow[6][1], rel=1e-6)
