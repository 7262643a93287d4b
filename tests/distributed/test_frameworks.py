"""The framework callbacks under torchrun: 2-rank gloo jobs of a Lightning fit
(strategy="ddp") and of a Hugging Face Trainer (accelerate's DDP), each started with
``tuiconsole run --nproc-per-node 2 SCRIPT --detach --paused`` (see conftest.py).

Commands go to rank 0's socket; each rank's dump (its real optimizer, a digest of its
weights and optimizer state, the commands it applied and at which step) shows that every
rank applied them at the same step, and each script's own record, written after
``fit()`` / ``train()`` returned, that the framework's loop ended on every rank at the
step of the stop.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from tests.distributed.conftest import HERE, Job
from tests.distributed.test_torchrun import same_run

pytestmark = [pytest.mark.subprocess, pytest.mark.slow]

LIGHTNING_DDP = HERE / "scripts" / "lightning_ddp.py"
HF_DDP = HERE / "scripts" / "hf_ddp.py"


def fits_ended(job: Job, timeout: float = 60.0) -> list[dict]:
    """What each rank's script wrote after the framework's loop returned, once both
    did; then, this client gone, the job's processes all exit (nothing hangs)."""
    deadline = time.monotonic() + timeout
    paths = []
    while time.monotonic() < deadline:
        paths = sorted(job.dump_dir.glob("fit-rank*.json"))
        if len(paths) == 2:
            break
        time.sleep(0.1)
    assert len(paths) == 2, f"the fit did not end on both ranks: {paths}\n{job.log()}"
    assert job.session is not None
    job.session.close()  # a stopped run leaves once no client is left
    while time.monotonic() < deadline and job.pids():
        time.sleep(0.1)
    assert not job.pids(), f"the job's processes did not exit: {job.pids()}\n{job.log()}"
    time.sleep(0.1)  # written whole by now
    return [json.loads(p.read_text()) for p in paths]


def metrics(job: Job) -> list[dict]:
    path = job.run_dir / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def applied_as_journaled(job: Job, end: dict) -> list[tuple[int, str]]:
    """The commands the ranks applied, each journaled once by rank 0 at that step."""
    journaled = [(r["step"], r["cmd"]) for r in job.journal() if r["type"] == "command"]
    applied = [(step, cmd) for step, cmd in end["applied"]]
    assert journaled == applied
    return [(step, cmd.split()[0]) for step, cmd in applied]


def test_a_lightning_ddp_fit_is_steered_on_every_rank(jobs):
    job = jobs("lightning")
    session = job.detach(LIGHTNING_DDP, "--paused")
    assert session.snapshot().status.world_size == 2
    job.do("lr group0 0.02")
    job.do("step 7")
    job.wait_step(7, "PAUSED")
    job.do("split head classifier lr=0.01")
    job.do("rebuild Adam lr=1e-3")
    job.do("eval")  # validation_step on each rank's shard, the mean over the ranks
    saved = job.do("checkpoint").rsplit(" written to ", 1)[1]
    job.do("resume")
    job.wait_step(30)
    job.do("stop")
    end = same_run(job.wait_ranks())
    assert end["state"] == "STOPPED" and end["optimizer"] == "Adam"
    assert [g["name"] for g in end["groups"]] == ["group0", "head"]
    assert [g["lr"] for g in end["groups"]] == [1e-3, 1e-3]
    assert applied_as_journaled(job, end) == [
        (0, "lr"),
        (0, "step"),
        (7, "split"),
        (7, "rebuild"),
        (7, "eval"),
        (7, "checkpoint"),
        (7, "resume"),
        (end["step"], "stop"),
    ]
    fits = fits_ended(job)
    # Lightning's loop ended at the stop's step on both ranks (should_stop)
    assert fits[0] == fits[1] == {"global_step": end["step"], "should_stop": True}
    assert job.journal()[-1]["type"] == "end" and job.journal()[-1]["state"] == "STOPPED"

    # the eval is the whole val set's (both ranks' shards), not rank 0's half of it
    (point,) = [m for m in metrics(job) if m["type"] == "eval"]
    loss, accuracy = lightning_val(torch.load(saved, weights_only=False)["model"])
    assert point["step"] == 7
    assert point["loss"] == pytest.approx(loss, rel=1e-5)
    assert point["accuracy"] == pytest.approx(accuracy, abs=1e-6)


def lightning_val(weights: dict) -> tuple[float, float]:
    """lightning_ddp.py's model with ``weights`` over all of its val data, in one."""
    model = nn.Module()
    model.features = nn.Sequential(nn.Linear(8, 16), nn.ReLU())
    model.classifier = nn.Linear(16, 2)
    model.load_state_dict(weights)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(320, 8, generator=g)[256:]
    y = (x.sum(dim=1) > 0).long()
    with torch.no_grad():
        out = model.classifier(model.features(x))
    loss = nn.functional.cross_entropy(out, y).item()
    return loss, (out.argmax(1) == y).float().mean().item()


def test_a_hugging_face_trainer_on_two_ranks_is_steered_on_every_rank(jobs):
    job = jobs("hf")
    job.env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    session = job.detach(HF_DDP, "--paused")
    assert session.snapshot().status.world_size == 2
    job.do("lr all 5e-4")
    job.do("step 5")
    job.wait_step(5, "PAUSED")
    job.do("split blocks transformer.h")
    job.do("rebuild SGD lr=0.01 momentum=0.9")
    job.do("eval")  # the Trainer's evaluate(): it gathers the ranks' losses itself
    saved = job.do("checkpoint").rsplit(" written to ", 1)[1]
    job.do("resume")
    job.wait_step(20)
    job.do("stop")
    end = same_run(job.wait_ranks())
    assert end["state"] == "STOPPED" and end["optimizer"] == "SGD"
    # both of the Trainer's groups have weight_decay 0 here: their blocks share one group
    assert [g["name"] for g in end["groups"]] == ["transformer", "transformer-2", "blocks"]
    assert {g["momentum"] for g in end["groups"]} == {0.9}
    assert applied_as_journaled(job, end) == [
        (0, "lr"),
        (0, "step"),
        (5, "split"),
        (5, "rebuild"),
        (5, "eval"),
        (5, "checkpoint"),
        (5, "resume"),
        (end["step"], "stop"),
    ]
    fits = fits_ended(job)
    # the Trainer's loop ended at the stop's step on both ranks (should_training_stop)
    assert fits[0] == fits[1] and fits[0]["global_step"] == end["step"]
    assert job.journal()[-1]["type"] == "end" and job.journal()[-1]["state"] == "STOPPED"
    # the eval is the whole eval set's, as evaluate() in one process gives it
    (point,) = [m for m in metrics(job) if m["type"] == "eval"]
    assert point["step"] == 5
    assert point["loss"] == pytest.approx(hf_eval_loss(saved, job.dump_dir), rel=1e-5)


def hf_eval_loss(checkpoint: str, tmp: Path) -> float:
    """The Trainer's evaluate() in this one process, over all of hf_ddp.py's eval data,
    of its GPT-2 with the checkpoint's weights."""
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

    config = GPT2Config(
        vocab_size=16,
        n_positions=8,
        n_embd=16,
        n_layer=1,
        n_head=2,
        bos_token_id=0,
        eos_token_id=0,
    )
    model = GPT2LMHeadModel(config)
    model.load_state_dict(torch.load(checkpoint, weights_only=False)["model"])
    g = torch.Generator().manual_seed(2)
    ids = (torch.randint(0, 16, (32, 1), generator=g) + torch.arange(8)) % 16
    data = [{"input_ids": row, "labels": row} for row in ids]
    args = TrainingArguments(
        output_dir=str(tmp), report_to="none", use_cpu=True, per_device_eval_batch_size=8
    )
    return float(Trainer(model=model, args=args, eval_dataset=data).evaluate()["eval_loss"])
