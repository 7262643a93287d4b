"""Frames and the Snapshot <-> JSON round trip (no sockets, no subprocesses)."""

from __future__ import annotations

import json
import math

import pytest
from remote_helpers import TINY

from tuiconsole.engine.commands import CommandResult
from tuiconsole.engine.snapshot import (
    EvalPoint,
    GroupView,
    LogEntry,
    ModuleNode,
    RunError,
    RunState,
    RunStatus,
    Series,
    Snapshot,
)
from tuiconsole.remote import protocol as P


def _status(**kw) -> RunStatus:
    base = dict(
        script="s.py", state=RunState.RUNNING, epoch=1, step=10, steps_per_sec=5.0,
        elapsed=2.0, device="cpu",
    )  # fmt: skip
    return RunStatus(**{**base, **kw})


def _snapshot(seq: int = 1, structure: int = 0, log: tuple[LogEntry, ...] = ()) -> Snapshot:
    return Snapshot(
        seq=seq,
        status=_status(
            state=RunState.NAN_PAUSED,
            last_eval=EvalPoint(8, 0.5, None),
            error=RunError("ValueError", "boom", 9),
            max_steps=100,
        ),
        groups=(
            GroupView(0, "body", 1e-3, (("betas", (0.9, 0.999)), ("amsgrad", False)), 2, 30),
            GroupView(1, "head", 0.05, (("momentum", 0.9),), 2, 17),
        ),
        modules=(
            ModuleNode("", "Sequential", 0, 47, (), ("body", "head"), children=("0", "2")),
            ModuleNode("0", "Linear", 30, 30, ("body",), ("body",), frozen=("bias",)),
            ModuleNode("2", "Linear", 17, 17, ("head",), ("head",), shared=(("weight", "0"),)),
        ),
        structure_version=structure,
        loss_recent=Series((1, 2, 3), (0.9, float("nan"), float("inf"))),
        loss_history=Series((1,), (0.9,)),
        loss_min=0.5,
        loss_last=float("nan"),
        evals=(EvalPoint(8, 0.5, 0.75),),
        log=log,
        run_dir="/tmp/run",
        optimizer="Adam",
    )


def _same(a: object, b: object) -> bool:
    """Equality that treats NaN as equal to NaN (a NAN-PAUSED run has them)."""
    return json.dumps(P.to_jsonable(a)) == json.dumps(P.to_jsonable(b))


def test_frame_round_trip_through_the_buffer_in_any_split() -> None:
    data = P.message("command", id=1, text="lr head 1e-3") + P.message("bye")
    for cut in range(len(data) + 1):
        buf = P.FrameBuffer(P.MAX_CLIENT_FRAME)
        got = buf.feed(data[:cut]) + buf.feed(data[cut:])
        assert [m["type"] for m in got] == ["command", "bye"]
        assert got[0]["text"] == "lr head 1e-3" and got[0]["v"] == P.VERSION


@pytest.mark.parametrize(
    ("payload", "match"),
    [
        (b"\xff\xfe", "malformed"),
        (b"not json", "malformed"),
        (b"[1, 2]", "malformed"),
        (b'{"v": 1}', "malformed"),
        (b'{"v": 99, "type": "hello"}', "version 99"),
    ],
    ids=["not-utf8", "not-json", "not-object", "no-type", "wrong-version"],
)
def test_bad_payloads_are_protocol_errors(payload: bytes, match: str) -> None:
    with pytest.raises(P.ProtocolError, match=match):
        P.FrameBuffer(P.MAX_CLIENT_FRAME).feed(P.frame(payload))


def test_oversized_frame_is_refused_from_its_header_alone() -> None:
    buf = P.FrameBuffer(1024)
    with pytest.raises(P.ProtocolError, match="oversized frame: 1025 bytes"):
        buf.feed(P.HEADER.pack(1025))


def test_synthetic_snapshot_round_trip_keeps_types() -> None:
    snap = _snapshot(log=(LogEntry(1, 3, 1.5, "command", "lr head 0.1: ok", True, "remote:7"),))
    back = P.snapshot_from_dict(json.loads(json.dumps(P.snapshot_to_dict(snap))))
    assert _same(back, snap)
    assert back.status.state is RunState.NAN_PAUSED
    assert back.groups[0].get("betas") == (0.9, 0.999)
    assert back.groups[0].get("amsgrad") is False
    assert back.modules[2].shared == (("weight", "0"),)
    assert math.isnan(back.loss_last) and math.isinf(back.loss_recent.values[2])
    assert isinstance(back.groups, tuple) and isinstance(back.status.error, RunError)


def test_real_trainer_snapshot_round_trips_exactly(tmp_path) -> None:
    from tuiconsole.session import LocalSession

    session = LocalSession.from_script(TINY, run_dir=tmp_path / "run")
    snap = session.snapshot()
    back = P.snapshot_from_dict(json.loads(json.dumps(P.snapshot_to_dict(snap))))
    assert back == snap


def test_a_step_view_crosses_the_socket(tmp_path) -> None:
    """A run with amp, clipping and accumulation: its StepView (read on the trainer's
    side) arrives as it was, through a delta frame too."""
    from tests.reliability.helpers import loader_spec, sync_trainer

    t = sync_trainer(loader_spec(), tmp_path / "run", amp="bf16", grad_clip=0.1, accumulate=2)
    t.step_now(3)
    snap = t._build_snapshot()
    assert snap.step_view is not None and snap.step_view.grad_norm is not None
    back = P.snapshot_from_dict(json.loads(json.dumps(P.snapshot_to_dict(snap))))
    assert back.step_view == snap.step_view and back == snap
    enc, asm = P.SnapshotEncoder(), P.SnapshotAssembler()
    frame = json.loads(enc.frame(snap, with_modules=True, log=snap.log, sent_groups=[])[4:])
    assert asm.apply(frame) == snap
    t.close()


def test_unknown_keys_are_ignored_and_missing_optional_ones_defaulted() -> None:
    data = P.snapshot_to_dict(_snapshot())
    data["from_the_future"] = {"x": 1}
    data["status"]["also_new"] = 3
    del data["optimizer"], data["evals"]
    back = P.snapshot_from_dict(data)
    assert back.optimizer == "" and back.evals == ()


def test_assembler_applies_module_and_log_deltas() -> None:
    enc, asm = P.SnapshotEncoder(), P.SnapshotAssembler(log_keep=3)
    entries = tuple(LogEntry(i, i, float(i), "info", f"line {i}") for i in range(1, 6))
    first = _snapshot(seq=1, log=entries[:2])
    got = asm.apply(json.loads(enc.frame(first, with_modules=True, log=first.log)[4:]))
    assert _same(got, first)
    second = _snapshot(seq=2, log=entries)
    msg = json.loads(enc.frame(second, with_modules=False, log=entries[2:])[4:])
    assert msg["modules"] is None
    got = asm.apply(msg)
    assert got.modules == first.modules  # reused, not resent
    assert [e.seq for e in got.log] == [3, 4, 5]  # bounded like the trainer's log


def test_results_round_trip() -> None:
    r = CommandResult(False, "unknown group 'x'", "lr x 1")
    assert P.result_from_dict(json.loads(json.dumps(P.result_to_dict(r)))) == r


def test_only_the_groups_that_changed_are_sent_again(tmp_path) -> None:
    """A real two-group optimizer: after the first frame, a frame carries only the groups
    whose values changed since the one before; the client's snapshot equals the server's."""
    import dataclasses

    from tests.unit.models import make_spec
    from tuiconsole.engine.trainer import RunConfig, Trainer

    trainer = Trainer(make_spec(), RunConfig(run_dir=tmp_path / "run")).prepare()
    enc, asm, sent = P.SnapshotEncoder(), P.SnapshotAssembler(), []
    snap = trainer.latest_snapshot()
    first = json.loads(enc.frame(snap, with_modules=True, log=snap.log, sent_groups=sent)[4:])
    assert len(first["groups"]) == 2 and "groups_changed" not in first
    assert asm.apply(first).groups == snap.groups
    assert trainer.apply_now("lr classifier 0.5").ok
    snap = trainer.latest_snapshot()
    msg = json.loads(enc.frame(snap, with_modules=False, log=(), sent_groups=sent)[4:])
    assert "groups" not in msg
    assert [i for i, _ in msg["groups_changed"]] == [1], msg
    got = asm.apply(msg)
    assert got.groups == snap.groups and got.group("classifier").lr == 0.5
    same = dataclasses.replace(snap, seq=snap.seq + 1)
    msg = json.loads(enc.frame(same, with_modules=False, log=(), sent_groups=sent)[4:])
    assert msg["groups_changed"] == []
    assert asm.apply(msg).groups == snap.groups
    bad = {**msg, "groups_changed": [[7, msg["snapshot"]]]}
    with pytest.raises(P.ProtocolError, match="out of range"):
        asm.apply(bad)
    trainer.close()
