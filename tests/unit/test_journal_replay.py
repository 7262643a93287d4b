"""The journal records every command; replaying it reproduces the run bit for bit."""

from __future__ import annotations

import json
import struct

import torch

from tests.unit.models import make_spec
from tuiconsole.engine.journal import read_journal
from tuiconsole.engine.snapshot import RunState
from tuiconsole.engine.trainer import RunConfig, Trainer


def lines(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_journal_header_and_command_lines(drive):
    d = drive()
    d.steps(3)
    d.cmd("decay 0.5 features")
    d.cmd("lr nosuch 1")
    journal = d.trainer.run_dir / "journal.jsonl"
    recs = lines(journal)
    header = recs[0]
    assert header["type"] == "header" and header["seed"] == 0 and header["device"] == "cpu"
    assert header["torch"] == torch.__version__
    assert [g["name"] for g in header["groups"]] == ["features", "classifier"]
    cmds = [r for r in recs if r["type"] == "command"]
    decay = next(r for r in cmds if r["cmd"].startswith("decay"))
    assert decay["step"] == 3 and decay["ok"] and decay["source"] == "test"
    assert decay["cmd"] == "decay 0.5 features"
    assert decay["groups"][0]["lr"] == 5e-4 and decay["groups"][1]["lr"] == 1e-2
    assert {"step", "time", "source", "cmd", "result", "groups"} <= decay.keys()
    bad = next(r for r in cmds if r["cmd"].startswith("lr nosuch"))
    assert not bad["ok"] and "nosuch" in bad["result"]
    _, entries = read_journal(journal)
    assert [e.cmd for e in entries][-2:] == ["decay 0.5 features", "lr nosuch 1.0"]


def test_metrics_file_has_loss_and_lr_per_group(tmp_path):
    t = Trainer(make_spec(), RunConfig(run_dir=tmp_path, max_steps=40, log_every=10))
    assert t.step_now(41) == 40 and t.state == RunState.FINISHED
    t.close()
    recs = lines(tmp_path / "metrics.jsonl")
    train = [r for r in recs if r["type"] == "train"]
    assert [r["step"] for r in train][:4] == [10, 20, 30, 40]
    assert set(train[0]["lr"]) == {"features", "classifier"}
    assert all(isinstance(r["loss"], float) for r in train)


def bits(x: float) -> bytes:
    return struct.pack("<d", x)


def test_replay_is_bit_for_bit(drive, tmp_path):
    d = drive()
    d.steps(10)
    d.cmd("decay 0.5")
    d.steps(7)
    d.cmd("eval")
    d.cmd("split fc1 classifier.0 lr=0.02")
    d.steps(9)
    d.cmd("set all weight_decay=0.001")
    d.cmd("rebuild Adam lr=0.003")
    d.steps(11)
    d.cmd("lr fc1 *2")
    d.steps(3)
    assert d.cmd("stop").ok
    original = d.trainer
    original.close()
    final_loss = original._losses.last
    weights = {k: v.clone() for k, v in original.model.state_dict().items()}

    replay = Trainer(
        make_spec(),
        RunConfig(run_dir=tmp_path / "replay", replay=original.run_dir / "journal.jsonl"),
    ).prepare()
    replay.step_now(1000)  # the journaled stop ends it at step 40
    replay.close()
    assert replay.step == original.step == 40
    assert replay.state == RunState.STOPPED
    assert bits(replay._losses.last) == bits(final_loss)
    for k, v in replay.model.state_dict().items():
        assert torch.equal(v, weights[k]), k
    assert [g["name"] for g in replay.optimizer.param_groups] == ["features", "classifier", "fc1"]
    assert type(replay.optimizer) is torch.optim.Adam
    # the replayed commands are themselves journaled, tagged as replay
    recs = lines(tmp_path / "replay" / "journal.jsonl")[1:]
    sources = {r["source"] for r in recs if r["type"] == "command"}
    assert sources == {"replay:test"}
