"""Per-group signals (engine/signals.py) against the real optimizer: the grad norm of the
real ``.grad``, the real weight change, Adam's step from its real state."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from tests.unit.models import make_spec
from tuiconsole.engine.ownloop import OwnLoop
from tuiconsole.engine.signals import MAX_EVERY, SHOWN_POINTS
from tuiconsole.engine.snapshot import GroupSignals
from tuiconsole.engine.trainer import RunConfig, Trainer


def norm(tensors) -> float:
    return math.sqrt(sum(float(t.detach().double().pow(2).sum()) for t in tensors))


def weights(trainer: Trainer) -> list[list[torch.Tensor]]:
    return [[p.detach().clone() for p in g["params"]] for g in trainer.optimizer.param_groups]


def by_name(signals: tuple[GroupSignals, ...]) -> dict[str, GroupSignals]:
    return {s.name: s for s in signals}


def hand_signals(trainer: Trainer, before: list[list[torch.Tensor]]) -> dict[str, tuple]:
    """(grad norm, param norm, update ratio) per group, from the real .grad and weights."""
    out = {}
    for g, old in zip(trainer.optimizer.param_groups, before, strict=True):
        if any(p.grad is None for p in g["params"]):
            continue
        grads = [p.grad for p in g["params"]]
        new = [p.detach() for p in g["params"]]
        update = norm([a - b for a, b in zip(new, old, strict=True)])
        out[g["name"]] = (norm(grads), norm(new), update / norm(new))
    return out


def hand_adam_step(trainer: Trainer) -> dict[str, float]:
    """||lr * m_hat / (sqrt(v_hat) + eps)|| per group, from the optimizer's state."""
    out = {}
    opt = trainer.optimizer
    for g in opt.param_groups:
        b1, b2 = g["betas"]
        parts = []
        for p in g["params"]:
            s = opt.state[p]
            t = float(s["step"])
            m_hat = s["exp_avg"] / (1 - b1**t)
            v_hat = s["exp_avg_sq"] / (1 - b2**t)
            parts.append(g["lr"] * m_hat / (v_hat.sqrt() + g["eps"]))
        out[g["name"]] = norm(parts)
    return out


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_signals_are_the_real_gradients_and_weight_change(optimizer):
    t = Trainer(make_spec(optimizer), RunConfig(max_steps=50, log_every=0, signal_every=1))
    t.step_now(3)
    before = weights(t)
    t.step_now(1)
    snap = t._build_snapshot()
    assert snap.signal_every == 1
    assert [s.name for s in snap.signals] == [g.name for g in snap.groups]
    hand = hand_signals(t, before)
    for name, (grad, param, ratio) in hand.items():
        s = by_name(snap.signals)[name]
        assert s.step == 4
        assert s.grad_norm == pytest.approx(grad, rel=1e-5)
        assert s.param_norm == pytest.approx(param, rel=1e-5)
        assert s.update_ratio == pytest.approx(ratio, rel=1e-4)
        assert len(s.grad_norm_history) == 4 and s.grad_norm_history.steps[-1] == 4
        assert s.update_ratio_history.values[-1] == pytest.approx(ratio, rel=1e-4)
    if optimizer == "adam":
        for name, step in hand_adam_step(t).items():
            assert by_name(snap.signals)[name].adam_step == pytest.approx(step, rel=1e-4)
    else:  # SGD: no Adam moments
        assert all(s.adam_step is None for s in snap.signals)
    t.close()


def test_signals_follow_a_split_and_skip_params_without_gradients():
    t = Trainer(make_spec("sgd"), RunConfig(max_steps=50, log_every=0, signal_every=2))
    t.step_now(2)
    assert t.apply_now("split head classifier.3 lr=0.05").ok
    snap = t._build_snapshot()
    assert [s.name for s in snap.signals] == ["features", "classifier", "head"]
    head = by_name(snap.signals)["head"]
    assert (head.step, head.grad_norm, head.update_ratio) == (0, None, None)  # not yet measured
    for p in t.model.features.parameters():  # frozen: no gradient from now on
        p.requires_grad_(False)
        p.grad = None
    before = weights(t)
    t.step_now(1)  # K=2: steps 1, 3, 5... are measured
    got = by_name(t._build_snapshot().signals)
    frozen = got["features"]  # no gradients: measured at step 3, nothing to show
    assert frozen.step == 3
    assert (frozen.grad_norm, frozen.param_norm, frozen.update_ratio) == (None, None, None)
    assert frozen.adam_step is None
    hand = hand_signals(t, before)
    for name in ("classifier", "head"):
        assert got[name].step == 3
        assert got[name].grad_norm == pytest.approx(hand[name][0], rel=1e-5)
        assert got[name].update_ratio == pytest.approx(hand[name][2], rel=1e-4)
    t.step_now(1)  # step 4: not measured
    assert by_name(t._build_snapshot().signals)["head"].step == 3
    assert len(got["head"].grad_norm_history) == 1  # its history starts at the split
    t.close()


def test_clipped_and_accumulated_steps_measure_the_gradients_the_step_used():
    """engine/step.py's step: 2 micro-batches, clipped to 0.01: the grad norm is the
    clipped one, measured once per optimizer step."""
    cfg = RunConfig(max_steps=50, log_every=0, signal_every=1, grad_clip=0.01, accumulate=2)
    t = Trainer(make_spec("sgd"), cfg)
    before = weights(t)
    t.step_now(1)
    snap = t._build_snapshot()
    total = math.sqrt(sum(s.grad_norm**2 for s in snap.signals if s.grad_norm is not None))
    assert total == pytest.approx(0.01, rel=1e-4)
    hand = hand_signals(t, before)
    for s in snap.signals:
        assert s.grad_norm == pytest.approx(hand[s.name][0], rel=1e-5)
        assert s.update_ratio == pytest.approx(hand[s.name][2], rel=1e-4)
    assert t._record.signals.measured == 1
    t.close()


def test_k_comes_from_the_budget_and_zero_turns_them_off(tmp_path):
    t = Trainer(make_spec("adam"), RunConfig(max_steps=400, log_every=0))
    t.step_now(400)
    snap = t._build_snapshot()
    sig = t._record.signals
    assert 1 <= snap.signal_every <= MAX_EVERY
    assert sig.measured >= 400 // (2 * snap.signal_every + 2)  # about one step in K
    assert all(s.grad_norm is not None for s in snap.signals)
    t.close()
    off = Trainer(
        make_spec(),
        RunConfig(run_dir=tmp_path / "off", max_steps=20, log_every=10, signal_every=0),
    )
    off.step_now(20)
    assert off._build_snapshot().signals == () and off._build_snapshot().signal_every == 0
    off.close()
    lines = [json.loads(x) for x in (tmp_path / "off" / "metrics.jsonl").read_text().splitlines()]
    assert all("grad_norm" not in r for r in lines) and any(r["type"] == "train" for r in lines)


def test_metrics_lines_carry_each_groups_grad_norm_and_update_ratio(tmp_path):
    cfg = RunConfig(run_dir=tmp_path / "run", max_steps=20, log_every=5, signal_every=1)
    t = Trainer(make_spec("adam"), cfg)
    t.step_now(10)
    snap = t._build_snapshot()
    t.step_now(10)
    t.close()
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train = {r["step"]: r for r in lines if r["type"] == "train"}
    assert {5, 10, 15, 20} <= set(train)
    at10 = train[10]
    assert set(at10["grad_norm"]) == set(at10["lr"]) == {"features", "classifier"}
    for s in snap.signals:
        assert at10["grad_norm"][s.name] == s.grad_norm
        assert at10["update_ratio"][s.name] == s.update_ratio


def test_an_own_loop_is_measured_from_its_optimizer_hooks_with_a_closure_too():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    opt = torch.optim.SGD(
        [{"params": model[0].parameters()}, {"params": model[2].parameters(), "lr": 0.05}],
        lr=0.01,
        momentum=0.9,
    )
    run = OwnLoop(model, opt, config=RunConfig(log_every=0, signal_every=1))
    run.open()
    run.begin()
    x, y = torch.randn(16, 4), torch.randn(16, 1)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        return loss

    for step in range(3):
        before = [[p.detach().clone() for p in g["params"]] for g in opt.param_groups]
        loss = opt.step(closure) if step == 2 else (closure(), opt.step())[0]  # Lightning's way
        run.boundary(loss)
    snap = run._build_snapshot()
    assert [s.step for s in snap.signals] == [3, 3]
    for s, g, old in zip(snap.signals, opt.param_groups, before, strict=True):
        assert s.grad_norm == pytest.approx(norm([p.grad for p in g["params"]]), rel=1e-5)
        update = norm([p.detach() - o for p, o in zip(g["params"], old, strict=True)])
        assert s.update_ratio == pytest.approx(update / norm(g["params"]), rel=1e-4)
    run.close()


def test_sparse_gradients_are_left_out():
    torch.manual_seed(0)
    emb = nn.Embedding(10, 4, sparse=True)
    head = nn.Linear(4, 1)
    opt = torch.optim.SGD(
        [{"params": emb.parameters(), "name": "emb"}, {"params": head.parameters(), "name": "h"}],
        lr=0.1,
    )
    run = OwnLoop(nn.ModuleList([emb, head]), opt, config=RunConfig(log_every=0, signal_every=1))
    run.open()
    run.begin()
    opt.zero_grad()
    loss = head(emb(torch.tensor([1, 2, 3]))).sum()
    loss.backward()
    opt.step()
    run.boundary(loss)
    got = by_name(run._build_snapshot().signals)
    assert got["emb"].grad_norm is None and got["emb"].step == 1
    assert got["h"].grad_norm == pytest.approx(norm([p.grad for p in head.parameters()]), rel=1e-5)
    run.close()


def test_steps_taken_while_suspended_are_not_measured_and_a_reset_forgets():
    """Steps that are not the run's (an lr range test's sweep): none measured; a reset
    (a rollback to an earlier step) forgets what was."""
    t = Trainer(make_spec("sgd"), RunConfig(max_steps=50, log_every=0, signal_every=1))
    t.step_now(2)
    with t._record.signals.suspended():
        t.step_now(3)
    assert t._record.signals.measured == 2
    assert all(s.step == 2 for s in t._build_snapshot().signals)
    t.step_now(1)
    assert all(s.step == 6 for s in t._build_snapshot().signals)
    t._record.signals.reset()  # e.g. a rollback to an earlier step: nothing measured yet
    assert all(s.step == 0 and not s.grad_norm_history for s in t._build_snapshot().signals)
    t.step_now(1)
    assert [len(s.grad_norm_history) for s in t._build_snapshot().signals] == [1, 1]
    t.close()


def test_many_groups_share_a_bounded_number_of_history_points():
    """A snapshot carries at most SHOWN_POINTS history points of each kind over all groups
    (each group's own history keeps HISTORY buckets): frames stay small with 500 groups."""
    groups = 100  # SHOWN_POINTS // 100: 40 points a group
    model = nn.Sequential(*[nn.Linear(2, 2) for _ in range(groups)])
    opt = torch.optim.SGD(
        [{"params": m.parameters(), "name": f"g{i}"} for i, m in enumerate(model)], lr=0.01
    )
    run = OwnLoop(model, opt, config=RunConfig(log_every=0, signal_every=1))
    run.open()
    run.begin()
    x = torch.randn(4, 2)
    for _ in range(48):
        opt.zero_grad()
        loss = model(x).pow(2).mean()
        loss.backward()
        opt.step()
        run.boundary(loss)
    snap = run._build_snapshot()
    assert len(snap.signals) == groups
    assert run._record.signals._grad_history["g0"].count == 48
    sizes = [len(s.grad_norm_history) for s in snap.signals]
    assert max(sizes) == 24 and sum(sizes) <= SHOWN_POINTS  # 48 in buckets of 2
    full = run._record.signals._grad_history["g0"].series()
    thinned = snap.signals[0].grad_norm_history
    assert thinned.steps[-1] == full.steps[-1] == 48
    assert sum(thinned.values) / len(thinned) == pytest.approx(sum(full.values) / len(full))
    run.close()


def test_fp16_steps_measure_the_unscaled_gradients():
    """Under fp16 the GradScaler's step unscales the gradients: the norm is of those the
    optimizer used, not of the scaled ones (x 65536)."""
    cfg = RunConfig(max_steps=50, log_every=0, signal_every=1, amp="fp16")
    t = Trainer(make_spec("adam"), cfg)
    before = weights(t)
    t.step_now(1)
    snap = t._build_snapshot()
    assert snap.step_view is not None and snap.step_view.scale == 65536.0
    hand = hand_signals(t, before)
    for s in snap.signals:
        assert s.grad_norm == pytest.approx(hand[s.name][0], rel=1e-5)
        assert 0 < s.grad_norm < 10  # unscaled
        assert s.update_ratio == pytest.approx(hand[s.name][2], rel=1e-4)
    t.close()


def test_measuring_changes_nothing_in_the_training():
    """The signals only read: a run measured at every step is bit for bit the run without."""
    runs = {}
    for every in (0, 1):
        t = Trainer(make_spec("adam"), RunConfig(max_steps=30, log_every=0, signal_every=every))
        t.step_now(30)
        runs[every] = (t.model.state_dict(), t.optimizer.state_dict()["state"])
        t.close()
    (m0, s0), (m1, s1) = runs[0], runs[1]
    assert all(torch.equal(m0[k], m1[k]) for k in m0)
    assert all(torch.equal(s0[i][k], s1[i][k]) for i in s0 for k in s0[i])
