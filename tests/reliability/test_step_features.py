"""The training step GPU users run, on real runs: mixed precision (bf16; fp16 with its
GradScaler, on torch's CPU autocast), gradient clipping, accumulation. Each is the
step a hand-written loop takes (bit for bit), live-editable (`clip`, `accumulate`),
and resumes and replays bit for bit on CPU."""

from __future__ import annotations

import contextlib
import math

import pytest
import torch
from torch import nn

from tests.reliability.helpers import (
    assert_same,
    jsonl,
    loader_spec,
    optimizer_sd,
    sync_trainer,
    weights,
)
from tests.reliability.test_resume import assert_same_run
from tuiconsole.engine.checkpoint import load_checkpoint, rng_state, write_checkpoint_file
from tuiconsole.engine.snapshot import RunState, StepView
from tuiconsole.engine.trainer import RunConfig, Trainer
from tuiconsole.errors import TuiconsoleError
from tuiconsole.script import TrainingSpec

# loader_spec: 256 samples in batches of 24 = 11 batches an epoch (the last one short);
# SGD with momentum, Dropout in the model (so the RNG is drawn every forward).
FEATURES = {
    "bf16-clip-accumulate3": {"amp": "bf16", "grad_clip": 0.5, "accumulate": 3},
    "fp16-clip-accumulate2": {"amp": "fp16", "grad_clip": 0.3, "accumulate": 2},
    "fp32-accumulate4": {"accumulate": 4},
    "fp32-clip": {"grad_clip": 0.05},
    "bf16": {"amp": "bf16"},
}


def view(t: Trainer) -> StepView:
    """The StepView a snapshot built now shows (read from the device now)."""
    v = t._build_snapshot().step_view
    assert v is not None
    return v


def hand_loop(spec: TrainingSpec, steps: int, amp=None, grad_clip=None, accumulate=1):
    """What a user writes by hand for the same run: zero_grad; N micro-batches under
    autocast, each (loss / N).backward() (scaled under fp16); at an epoch's end a shorter
    step, its gradients brought back to the mean (N / k); unscale, clip, step, update.
    Returns the per-step mean losses, the norms and the scaler."""
    model, opt, crit = spec.model, spec.optimizer, spec.criterion
    model.train()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)
    scaler = torch.amp.GradScaler("cpu") if amp == "fp16" else None
    params = list(model.parameters())
    means, norms = [], []
    it = iter(spec.train_loader)
    while len(means) < steps:
        opt.zero_grad(set_to_none=True)
        micro = []
        while len(micro) < accumulate:
            batch = next(it, None)
            if batch is None:  # the epoch ran out
                it = iter(spec.train_loader)
                if not micro:
                    continue
                break
            x, y = batch
            ctx = torch.autocast("cpu", dtype=dtype) if dtype else contextlib.nullcontext()
            with ctx:
                loss = crit(model(x), y)
            micro.append(loss.detach())
            part = loss / accumulate if accumulate > 1 else loss
            (scaler.scale(part) if scaler else part).backward()
        if len(micro) < accumulate:
            grads = [p.grad for p in params if p.grad is not None]
            torch._foreach_mul_(grads, accumulate / len(micro))
        means.append(micro[0] if len(micro) == 1 else torch.stack(micro).mean())
        if grad_clip is not None:
            if scaler:
                scaler.unscale_(opt)
            norms.append(torch.nn.utils.clip_grad_norm_(params, grad_clip))
        if scaler:
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()
    return [float(m) for m in means], [float(n) for n in norms], scaler


@pytest.mark.parametrize("name", list(FEATURES))
def test_the_engines_step_is_the_hand_written_one_bit_for_bit(name):
    features = FEATURES[name]
    steps = 13  # over an epoch's end: a shorter step where accumulation is on
    t = sync_trainer(loader_spec(), **features)
    t.step_now(steps)
    hand = loader_spec()  # the same seed, model, data order
    means, norms, scaler = hand_loop(hand, steps, **features)
    assert t.step == steps
    assert_same(weights(t.model), weights(hand.model))
    assert_same(optimizer_sd(t.optimizer)["state"], optimizer_sd(hand.optimizer)["state"])
    t._flush_losses()
    assert [v for _, v in t._losses.recent] == means  # each step's micro-batch mean, exactly
    v = view(t)
    assert (v.amp, v.accumulate, v.grad_clip) == (
        features.get("amp", ""),
        features.get("accumulate", 1),
        features.get("grad_clip"),
    )
    if norms:
        clip = features["grad_clip"]
        assert v.grad_norm == norms[-1] and v.clip_steps == steps
        assert v.clipped == sum(n > clip for n in norms) > 0
    else:
        assert v.grad_norm is None and v.clipped == v.clip_steps == 0
    if scaler is not None:
        assert v.scale == scaler.get_scale()
    t.close()


def test_accumulation_counts_optimizer_steps_and_takes_n_batches_each():
    t = sync_trainer(loader_spec(), accumulate=3)
    t.step_now(2)
    assert t.step == 2 and t.data_position()["epoch_batches"] == 6
    assert t.apply_now("accumulate 5").ok  # from the next optimizer step
    t.step_now(1)
    assert t.step == 3 and t.data_position()["epoch_batches"] == 11  # 6 + 5: the epoch's last
    assert t.epoch == 0 and t.epoch_shown == 1  # it ends at the next step's first batch
    t.step_now(1)
    assert t.epoch == 1 and t.data_position()["epoch_batches"] == 5
    assert view(t).accumulate == 5
    t.close()


def test_an_epoch_that_ends_inside_a_step_ends_that_step(tmp_path):
    """3 micro-batches a step, 11 batches an epoch: steps of 3, 3, 3 and 2; the epoch's
    scheduler step and its count come at the next step, as without accumulation."""
    spec = loader_spec(scheduler="step", interval="epoch")
    t = sync_trainer(spec, tmp_path / "a", accumulate=3)
    t.step_now(4)
    assert (t.step, t.epoch, t.data_position()["epoch_batches"]) == (4, 0, 11)
    assert t.scheduler.last_epoch == 0
    t.step_now(1)
    assert (t.epoch, t.data_position()["epoch_batches"], t.scheduler.last_epoch) == (1, 3, 1)
    t.close()


def test_clip_and_accumulate_commands_change_the_next_step_and_are_journaled(tmp_path):
    t = sync_trainer(loader_spec(), tmp_path / "a")
    assert t._step_fn == t._one_step  # nothing on: the plain step, no added work
    r = t.apply_now("clip 0.1")
    assert r.ok and r.message == "grad clip off->0.1 from the next optimizer step"
    assert t._step_fn != t._one_step
    t.step_now(3)
    assert view(t).clip_steps == 3 and view(t).grad_clip == 0.1
    r = t.apply_now("accumulate 2")
    assert r.ok and r.message == (
        "accumulate 1->2 micro-batch(es) per optimizer step, from the next step"
    )
    t.step_now(2)
    assert t.data_position()["epoch_batches"] == 3 + 4
    assert t.apply_now("clip off").ok and t.apply_now("accumulate 1").ok
    assert t._step_fn == t._one_step  # all off again: back to the plain step
    bad = t.apply_now("accumulate 0")
    assert not bad.ok and "accumulate must be >= 1" in bad.message
    t.close()
    cmds = [r for r in jsonl(tmp_path / "a" / "journal.jsonl") if r["type"] == "command"]
    assert [(r["step"], r["cmd"], r["ok"]) for r in cmds] == [
        (0, "clip 0.1", True),
        (3, "accumulate 2", True),
        (5, "clip off", True),
        (5, "accumulate 1", True),
    ]  # a parse error is not journaled


SCENARIO = [  # (steps to take, then the commands)
    (5, ["clip 0.2"]),
    (4, ["accumulate 2", "lr classifier 0.05"]),
    (3, ["clip off", "accumulate 3"]),
]


@pytest.mark.parametrize("name", ["bf16-clip-accumulate3", "fp16-clip-accumulate2"])
@pytest.mark.parametrize("at", [16, 18])
def test_checkpoint_then_resume_is_bit_for_bit(tmp_path, name, at):
    """Commands change clip and accumulate live; a checkpoint at ``at`` resumes with them
    (and the GradScaler's scale and the counts) and goes on bit for bit. With 3 batches a
    step from step 12, step 16 ends right as the epoch ran out inside it."""
    features = FEATURES[name]
    a = sync_trainer(loader_spec(), tmp_path / "a", **features)
    for n, commands in SCENARIO:
        a.step_now(n)
        for c in commands:
            assert a.apply_now(c).ok, c
    a.step_now(at - a.step)
    ck = tmp_path / "ck.pt"
    assert a.apply_now(f"checkpoint {ck}").ok
    a.step_now(12)
    rng_a = rng_state()
    saved = load_checkpoint(ck)["step_features"]
    assert saved["accumulate"] == 3 and saved["grad_clip"] is None
    assert (saved["scaler"] is not None) == (features["amp"] == "fp16")

    b = sync_trainer(loader_spec(), tmp_path / "b", resume=ck, **features)
    assert b.step == at and b._stepping.accumulate == 3 and b._stepping.clip is None
    b.step_now(12)
    assert_same_run(a, b, rng_a)
    assert view(a) == view(b)  # the scale, the counts, the last norm
    if features["amp"] == "fp16":
        assert a._stepping.scaler.state_dict() == b._stepping.scaler.state_dict()
    a.close()
    b.close()


def test_an_epoch_end_held_in_a_checkpoint_is_not_an_epoch_redone(tmp_path):
    a = sync_trainer(loader_spec(), tmp_path / "a", accumulate=3)
    a.step_now(4)  # 3 + 3 + 3 + 2: the epoch's batches are all taken
    assert a.apply_now(f"checkpoint {tmp_path / 'ck.pt'}").ok
    assert load_checkpoint(tmp_path / "ck.pt")["data"]["epoch_batches"] == 11
    a.step_now(6)
    b = sync_trainer(loader_spec(), tmp_path / "b", resume=tmp_path / "ck.pt", accumulate=3)
    b.step_now(6)
    assert (b.step, b.epoch) == (10, 2)
    assert_same_run(a, b)
    a.close()
    b.close()


@pytest.mark.parametrize("name", ["bf16-clip-accumulate3", "fp16-clip-accumulate2"])
def test_a_replay_of_live_clip_and_accumulate_is_bit_for_bit(tmp_path, name):
    features = FEATURES[name]
    a = sync_trainer(loader_spec(), tmp_path / "a", **features)
    for n, commands in SCENARIO:
        a.step_now(n)
        for c in commands:
            assert a.apply_now(c).ok, c
    a.step_now(10)
    assert a.apply_now("stop").ok
    a.close()
    b = Trainer(
        loader_spec(),
        RunConfig(
            run_dir=tmp_path / "b", replay=tmp_path / "a" / "journal.jsonl", log_every=0, **features
        ),
    ).prepare()
    b.step_now(1000)  # the journaled stop ends it where the original stopped
    b.close()
    assert b.step == a.step == 22 and b.state == RunState.STOPPED
    assert_same(weights(a.model), weights(b.model))
    assert_same(optimizer_sd(a.optimizer), optimizer_sd(b.optimizer))
    assert view(a) == view(b)
    replayed = [r for r in jsonl(tmp_path / "b" / "journal.jsonl") if r["type"] == "command"]
    assert [r["cmd"] for r in replayed][:3] == ["clip 0.2", "accumulate 2", "lr classifier 0.05"]


def test_a_checkpoints_live_values_win_over_the_options(tmp_path):
    a = sync_trainer(loader_spec(), tmp_path / "a", grad_clip=0.5, accumulate=2)
    a.step_now(3)
    assert a.apply_now("clip 0.1").ok
    assert a.apply_now(f"checkpoint {tmp_path / 'ck.pt'}").ok
    a.close()
    b = sync_trainer(loader_spec(), None, resume=tmp_path / "ck.pt", grad_clip=0.5)
    assert b._stepping.clip == 0.1 and b._stepping.accumulate == 2
    notes = [e.text for e in b.latest_snapshot().log]
    assert "resumed: grad_clip 0.1 as in the checkpoint (the options say 0.5)" in notes
    assert "resumed: accumulate 2 as in the checkpoint (the options say 1)" in notes
    b.close()


def test_a_damaged_step_features_entry_is_one_line(tmp_path):
    a = sync_trainer(loader_spec(), tmp_path / "a", accumulate=2)
    a.step_now(2)
    assert a.apply_now(f"checkpoint {tmp_path / 'ck.pt'}").ok
    a.close()
    ckpt = torch.load(tmp_path / "ck.pt", weights_only=True)
    ckpt["step_features"]["accumulate"] = 0
    write_checkpoint_file(tmp_path / "bad.pt", ckpt)  # a valid digest: only the content is bad
    with pytest.raises(TuiconsoleError) as err:
        load_checkpoint(tmp_path / "bad.pt")
    assert "damaged checkpoint: 'step_features'" in str(err.value)


class LargeLoss(nn.Module):
    """A loss 100 times cross-entropy (the lrs 100 times smaller): under fp16 autocast its
    scaled gradients overflow float16 until the GradScaler has backed off far enough; the
    loss itself stays finite."""

    def forward(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(out.float(), y) * 100


def test_a_step_the_scaler_skips_is_counted_not_a_nan_pause(tmp_path):
    spec = loader_spec()
    spec.criterion = LargeLoss()
    for group in spec.optimizer.param_groups:
        group["lr"] /= 100
    t = sync_trainer(spec, tmp_path / "a", amp="fp16")
    t.step_now(3)
    first = weights(t.model)
    assert view(t).scaler_skipped == 3  # 65536 and its halvings: every gradient inf
    t.step_now(17)
    assert t.state == RunState.RUNNING and t.nan_event is None and t.step == 20
    v = view(t)
    assert v.scaler_skipped > 3 and v.scale == 65536.0 / 2**v.scaler_skipped
    changed = [k for k, w in weights(t.model).items() if not torch.equal(w, first[k])]
    assert changed  # the steps after it found its scale did train
    assert all(math.isfinite(x) for _, x in t._losses.recent)
    t.close()
    assert not [r for r in jsonl(tmp_path / "a" / "journal.jsonl") if r["type"] == "nan"]


class NanAt:
    """A loader whose batch ``at`` (0-based, each epoch) has a NaN input."""

    def __init__(self, spec: TrainingSpec, at: int) -> None:
        self.batches = list(spec.train_loader)
        self.at = at

    def __iter__(self):
        for i, (x, y) in enumerate(self.batches):
            yield (torch.full_like(x, math.nan), y) if i == self.at else (x, y)


@pytest.mark.parametrize(
    "features", [{"amp": "fp16", "accumulate": 2}, {"amp": "bf16", "grad_clip": 0.5}]
)
def test_a_nan_loss_still_nan_pauses_with_its_update_skipped(tmp_path, features):
    spec = loader_spec()
    spec.train_loader = NanAt(spec, at=5)
    t = sync_trainer(spec, tmp_path / "a", **features)
    n = features.get("accumulate", 1)
    good_steps = 5 // n  # the steps before the one holding batch 5
    t.step_now(good_steps)
    before = weights(t.model)
    t.step_now(3)
    assert t.state == RunState.NAN_PAUSED and t.step == good_steps + 1
    assert t.nan_event is not None and t.nan_event.step == good_steps + 1
    assert t.nan_event.skipped and math.isnan(t.nan_event.loss)
    assert_same(weights(t.model), before)  # that step's update was skipped
    t.close()


def test_features_on_from_the_script_and_a_step_every_time_the_view_is_shown():
    spec = loader_spec()
    spec.amp, spec.accumulate = "bf16", 2
    t = sync_trainer(spec)
    assert t.latest_snapshot().step_view == StepView(amp="bf16", accumulate=2)
    t.step_now(2)
    assert t.data_position()["epoch_batches"] == 4
    t.close()
    plain = sync_trainer(loader_spec())
    assert plain.latest_snapshot().step_view is None  # nothing asked for: nothing shown
    plain.close()
