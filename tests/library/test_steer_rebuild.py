"""``rebuild`` while the user's code holds the optimizer (and its scheduler holds it too):
the same object becomes the new optimizer, so the user's own ``optimizer.step()`` and
``sched.step()`` drive it; hooks the user registered still fire; state is dropped; the
lr schedule goes on where it was."""

from __future__ import annotations

import copy

import pytest
import torch

from tests.library.steerloop import SCHEDULERS, batch, commands, make, train

REBUILD_AT = 10  # submitted after step 9: applied at the boundary of step 10
STEPS = 24


def _schedule(new_steer, scheduler: str, command: str | None) -> list[dict[str, object]]:
    """Each step's lrs (and momentum / beta1) as the user's optimizer holds them."""
    parts = make(scheduler)
    steer = new_steer(parts)
    seen: list[dict[str, object]] = []

    def at(step: int) -> None:
        if command is not None and step == REBUILD_AT - 1:
            steer.session.submit(command)

    def record(step: int, loss: torch.Tensor) -> torch.Tensor:
        return loss

    real_take = parts.take

    def take(step: int) -> torch.Tensor:
        loss = real_take(step)
        groups = parts.optimizer.param_groups
        seen.append(
            {
                "lr": [g["lr"] for g in groups],
                "momentum": [g["betas"][0] if "betas" in g else g["momentum"] for g in groups],
            }
        )
        return loss

    parts.take = take  # type: ignore[method-assign]
    train(steer, parts, STEPS, before_boundary=at, loss_of=record)
    steer.close()
    assert parts.scheduler.optimizer is parts.optimizer
    if command is not None:
        assert (REBUILD_AT, command, True) in commands(steer.run_dir)
        assert type(parts.optimizer) is torch.optim.Adam
    return seen


def _flat(seen: list[dict[str, object]], key: str) -> list[float]:
    return [float(v) for s in seen for v in s[key]]  # type: ignore[attr-defined]


@pytest.mark.parametrize("scheduler", sorted(SCHEDULERS))
def test_the_lr_schedule_goes_on_through_a_rebuild_to_adam(new_steer, scheduler):
    plain = _schedule(new_steer, scheduler, None)
    rebuilt = _schedule(new_steer, scheduler, "rebuild Adam")
    assert _flat(rebuilt, "lr") == pytest.approx(_flat(plain, "lr"), rel=1e-12)
    if scheduler == "onecycle":  # it cycled SGD's momentum; now Adam's beta1, in step
        assert _flat(rebuilt[REBUILD_AT:], "momentum") == pytest.approx(
            _flat(plain[REBUILD_AT:], "momentum"), rel=1e-12
        )


def test_a_rebuild_with_a_new_lr_scales_a_lambda_schedule(new_steer):
    plain = _schedule(new_steer, "lambdalr", None)
    rebuilt = _schedule(new_steer, "lambdalr", "rebuild Adam lr=0.001")
    # From the rebuild on, every group's lr is 0.001 times the schedule's factor since then
    for step in range(REBUILD_AT, STEPS):
        factor = [
            p / q for p, q in zip(plain[step]["lr"], plain[REBUILD_AT - 1]["lr"], strict=True)
        ]
        assert rebuilt[step]["lr"] == pytest.approx([0.001 * f for f in factor], rel=1e-9)


def test_the_users_optimizer_object_is_adam_and_steps_as_adam_does(new_steer):
    """After the rebuild, the user's ``optimizer.step()`` is Adam's: the same update a
    fresh torch Adam makes from the same gradients; the user's hooks still fire."""
    parts = make("steplr", dropout=0.0)
    opt = parts.optimizer
    fired: list[tuple[str, str]] = []
    opt.register_step_pre_hook(lambda o, a, k: fired.append(("pre", type(o).__name__)))
    opt.register_step_post_hook(lambda o, a, k: fired.append(("post", type(o).__name__)))
    steer = new_steer(parts)
    held = (opt, parts.scheduler)
    train(
        steer, parts, 3, before_boundary=lambda s: s == 2 and steer.session.submit("rebuild Adam")
    )
    assert steer.optimizer is opt and parts.scheduler.optimizer is opt and held[0] is opt
    assert isinstance(opt, torch.optim.Adam) and type(opt) is torch.optim.Adam
    assert len(opt.state) == 0  # SGD's momentum buffers are gone
    assert [g["name"] for g in opt.param_groups] == ["body", "head"]

    # The reference: a fresh Adam over a copy of the model, with the same groups.
    twin = copy.deepcopy(parts.model)
    ref = torch.optim.Adam(
        [
            {"params": twin.body.parameters(), "lr": opt.param_groups[0]["lr"]},
            {"params": twin.head.parameters(), "lr": opt.param_groups[1]["lr"]},
        ]
    )
    fired.clear()
    loss = parts.take(3)  # the user's own step: zero_grad, backward, opt.step, sched.step
    inputs, targets = batch(3)
    ref.zero_grad()
    parts.criterion(twin(inputs), targets).backward()
    ref.step()
    steer.step(loss)
    for mine, theirs in zip(parts.model.parameters(), twin.parameters(), strict=True):
        assert torch.equal(mine, theirs)
    assert fired == [("pre", "Adam"), ("post", "Adam")]
    assert all("exp_avg" in opt.state[p] for p in parts.model.parameters())
    assert parts.scheduler.last_epoch == 4  # the user's sched.step() went on stepping it


def test_rebuilds_back_and_forth_keep_the_users_object_and_containers(new_steer):
    parts = make("onecycle")
    steer = new_steer(parts)
    ids = (id(parts.optimizer), id(parts.optimizer.param_groups), id(parts.optimizer.state))
    train(
        steer,
        parts,
        6,
        before_boundary=lambda s: (
            s in (1, 3) and steer.session.submit("rebuild AdamW" if s == 1 else "rebuild SGD")
        ),
    )
    assert (id(parts.optimizer), id(parts.optimizer.param_groups), id(parts.optimizer.state)) == ids
    assert type(parts.optimizer) is torch.optim.SGD
    assert [c for c in commands(steer.run_dir) if c[1].startswith("rebuild")] == [
        (2, "rebuild AdamW", True),
        (4, "rebuild SGD", True),
    ]
    assert parts.scheduler.optimizer is parts.optimizer
    assert parts.scheduler.use_beta1 is False  # cycles SGD's momentum again


def test_a_rebuild_that_cannot_be_done_in_place_is_refused_and_changes_nothing(new_steer):
    """A class whose instances cannot take another optimizer's layout (__slots__)."""

    class Slotted(torch.optim.SGD):
        __slots__ = ("extra",)

    parts = make()
    model = parts.model
    parts.optimizer = Slotted(
        [
            {"params": model.body.parameters(), "name": "body"},
            {"params": model.head.parameters(), "name": "head"},
        ],
        lr=0.02,
        momentum=0.9,
    )
    steer = new_steer(parts)
    fut = steer.session.submit("rebuild Adam")
    train(steer, parts, 3)
    result = fut.result()
    assert not result.ok and "cannot become one in place" in result.message, result
    assert type(parts.optimizer) is Slotted
    assert len(parts.optimizer.state) == 6  # momentum kept: nothing was changed
