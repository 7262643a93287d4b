"""Checkpoint / resume and replay of an own loop, bit for bit on CPU.

The loop is deterministic and its data indexed by the step, so run B (``replay=``
run A's journal) must end with A's very parameters, and a run resumed from a
checkpoint (``steer.start_step`` says where to go on) must end as the run that was
never interrupted: model, optimizer (class, groups, state), scheduler, RNG.
"""

from __future__ import annotations

import pytest
import torch

from tests.library.steerloop import commands, end_record, make, train
from tests.reliability.helpers import assert_same, optimizer_sd, scheduler_state, weights
from tuiconsole.engine.checkpoint import load_checkpoint, rng_state
from tuiconsole.errors import StopTraining, TuiconsoleError

STEPS = 30
# Submitted after the step named: applied (and journaled) at the next step's boundary.
COMMANDS = {
    3: ["lr head 0.02"],
    6: ["split first body.0 lr=0.005"],
    9: ["set body weight_decay=0.001 dampening=0.1"],
    10: ["checkpoint"],  # an SGD with the split group
    12: ["rebuild Adam lr=0.003"],
    15: ["checkpoint"],
    18: ["decay 0.5 head"],
}


def _run(new_steer, scheduler, commands_at=None, **kw):
    parts = make(scheduler)
    steer = new_steer(parts, **kw)

    def at(step: int) -> None:
        for text in (commands_at or {}).get(step, []):
            steer.session.submit(text)

    train(steer, parts, STEPS, before_boundary=at)
    steer.close()
    return parts, steer, rng_state()


def _assert_same_run(a, b) -> None:
    assert_same(weights(a.model), weights(b.model))
    assert type(a.optimizer) is type(b.optimizer)
    assert [g["name"] for g in a.optimizer.param_groups] == [
        g["name"] for g in b.optimizer.param_groups
    ]
    assert_same(optimizer_sd(a.optimizer), optimizer_sd(b.optimizer))
    assert_same(scheduler_state(a.scheduler), scheduler_state(b.scheduler))


@pytest.mark.parametrize("scheduler", ["steplr", "lambdalr", "onecycle"])
def test_a_replay_of_the_journal_ends_with_the_very_same_parameters(new_steer, scheduler):
    a, steer_a, _ = _run(new_steer, scheduler, COMMANDS)
    applied = commands(steer_a.run_dir)
    assert [(s, ok) for s, _, ok in applied] == [(s + 1, True) for s in sorted(COMMANDS)]
    b, steer_b, _ = _run(new_steer, scheduler, replay=steer_a.run_dir / "journal.jsonl")
    _assert_same_run(a, b)
    assert type(b.optimizer) is torch.optim.Adam
    replayed = [c for c in commands(steer_b.run_dir) if c[1] != "checkpoint"]
    assert replayed == [c for c in applied if c[1] != "checkpoint"]
    plain, _, _ = _run(new_steer, scheduler)  # and the commands did change the run
    assert not torch.equal(plain.model.head[1].weight, a.model.head[1].weight)


@pytest.mark.parametrize("at, cls", [(11, torch.optim.SGD), (16, torch.optim.Adam)])
@pytest.mark.parametrize("scheduler", ["steplr", "lambdalr", "onecycle"])
def test_a_resumed_run_continues_bit_for_bit(new_steer, scheduler, at, cls):
    """The checkpoint of step 11 holds the SGD with its split group; that of step 16 an
    Adam (rebuilt from SGD at step 13): the resumed script builds its plain SGD again,
    and steer() turns that very object into the checkpoint's optimizer."""
    whole, steer_a, rng_after = _run(new_steer, scheduler, COMMANDS)
    ckpt = steer_a.run_dir / f"checkpoint-step{at}.pt"
    assert load_checkpoint(ckpt)["optimizer_class"] == cls.__name__
    later = {s: c for s, c in COMMANDS.items() if s >= at}
    parts = make(scheduler)
    held = parts.optimizer
    steer = new_steer(parts, resume=ckpt)
    assert steer.start_step == at
    assert parts.optimizer is held and type(held) is cls  # the object the script holds
    assert parts.scheduler.optimizer is held
    assert [g["name"] for g in held.param_groups] == ["body", "head", "first"]
    taken = train(
        steer,
        parts,
        STEPS,
        before_boundary=lambda s: [steer.session.submit(c) for c in later.get(s, [])],
    )
    steer.close()
    assert taken == list(range(at, STEPS))
    _assert_same_run(whole, parts)
    assert_same(rng_state(), rng_after)


def test_a_run_stopped_and_resumed_from_its_final_checkpoint_is_the_uninterrupted_run(
    new_steer,
):
    whole, _, _ = _run(new_steer, "onecycle")
    parts = make("onecycle")
    steer = new_steer(parts)
    with pytest.raises(StopTraining):
        train(
            steer, parts, STEPS, before_boundary=lambda s: s == 10 and steer.session.submit("stop")
        )
    final = end_record(steer.run_dir)["checkpoint"]
    again = make("onecycle")
    resumed = new_steer(again, resume=final)
    assert resumed.start_step == 11
    train(resumed, again, STEPS)
    resumed.close()
    _assert_same_run(whole, again)
    assert end_record(resumed.run_dir)["step"] == STEPS


def test_resuming_into_another_model_is_one_clear_error(new_steer, tmp_path):
    _, steer_a, _ = _run(new_steer, None)
    other = make()
    other.model.head[1] = torch.nn.Linear(16, 4)
    other.optimizer = torch.optim.SGD(other.model.parameters(), lr=0.1)
    with pytest.raises(TuiconsoleError, match="does not fit the script's model"):
        new_steer(other, resume=end_record(steer_a.run_dir)["checkpoint"])
