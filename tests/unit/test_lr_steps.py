"""The lr chart's data: each group's lr by training step, still while paused."""

from __future__ import annotations

import torch
from torch import nn

from tuiconsole.engine.metrics import StepLrHistory
from tuiconsole.engine.trainer import RunConfig, Trainer
from tuiconsole.script import TrainingSpec, seed_everything


def test_a_point_per_new_step_whatever_the_poll_rate():
    h = StepLrHistory()
    for step in range(1, 6):
        for _ in range(3):  # three snapshots per step (a fast console, a paused run)
            view = h.sample(step, [("g", 0.1 * step)])
    assert view[0].name == "g"
    assert view[0].history.steps == (1, 2, 3, 4, 5)
    assert view[0].history.values == (0.1 * 1, 0.1 * 2, 0.1 * 3, 0.1 * 4, 0.1 * 5)


def test_an_edit_while_paused_shows_at_once_and_nothing_else_moves():
    h = StepLrHistory()
    h.sample(10, [("a", 0.1), ("b", 0.01)])
    still = h.sample(10, [("a", 0.1), ("b", 0.01)])
    assert still[0].history.steps == (10,) and still[1].history.values == (0.01,)
    edited = h.sample(10, [("a", 0.1), ("b", 0.001)])  # `lr b 1e-3` while paused
    assert edited[0].history == still[0].history
    assert edited[1].history.steps == (10, 10) and edited[1].history.values == (0.01, 0.001)


def test_a_split_group_starts_at_its_step_and_long_runs_stay_bounded():
    h = StepLrHistory(capacity=16)
    for step in range(1, 1001):
        groups = [("a", 0.1)] + ([("new", 0.5)] if step > 900 else [])
        view = h.sample(step, groups)
    # 16 buckets of 64 steps: a constant lr ends at its last full bucket (< 64 steps ago)
    assert len(view[0].history) <= 17 and view[0].history.steps[-1] > 1000 - 64
    assert set(view[0].history.values) == {0.1}  # the lr it had, not a mean with noise
    assert view[1].history.steps[0] > 900 and set(view[1].history.values) == {0.5}


def test_many_groups_share_a_bounded_budget_and_unchanged_views_are_reused():
    h = StepLrHistory(capacity=256, total=2048)
    groups = [(f"g{i}", 0.01) for i in range(500)]
    for step in range(1, 301):
        view = h.sample(step, groups)
    assert sum(len(g.history) for g in view) <= 2048 + 500
    again = h.sample(300, groups)  # a paused run's next snapshot: nothing rebuilt
    assert all(a is b for a, b in zip(view, again, strict=True))
    two = StepLrHistory(capacity=256, total=2048)
    for step in range(1, 301):
        few = two.sample(step, [("a", 0.1), ("b", 0.01)])
    assert len(few[0].history) > 128  # two groups keep their full resolution


def test_a_real_run_publishes_each_groups_lr_by_step(tmp_path):
    seed_everything(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    opt = torch.optim.SGD(
        [{"params": model[0].parameters()}, {"params": model[2].parameters(), "lr": 0.1}],
        lr=0.01,
    )
    data = [(torch.randn(8, 4), torch.randint(0, 2, (8,))) for _ in range(4)]
    spec = TrainingSpec(
        model=model, optimizer=opt, criterion=nn.CrossEntropyLoss(), train_loader=data, epochs=100
    )
    trainer = Trainer(
        spec, RunConfig(run_dir=tmp_path / "run", log_every=0, snapshot_interval=0.0)
    ).prepare()
    try:
        trainer.step_now(5)
        names = [g.name for g in trainer.latest_snapshot().groups]
        assert trainer.apply_now(f"lr {names[1]} 0.05", source="ui").ok
        trainer.step_now(5)
        trainer.latest_snapshot()  # a reader asks: the next step publishes
        trainer.step_now(1)
        snap = trainer.latest_snapshot()
    finally:
        trainer.close()
    assert [g.name for g in snap.lr_steps] == [g.name for g in snap.groups]
    second = snap.lr_steps[1].history
    assert second.steps[-1] == 11 and second.values[-1] == 0.05
    assert 0.1 in second.values  # before the edit
    assert set(snap.lr_steps[0].history.values) == {0.01}
