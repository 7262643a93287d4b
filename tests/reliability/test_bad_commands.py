"""Every bad command gets a clear error result and leaves the optimizer and the
scheduler exactly as they were (deep-equal, tensors bit-identical) — whether it
comes from a front-end, headless stdin or a journal on replay."""

from __future__ import annotations

import json

import pytest
import torch

from tests.reliability.helpers import (
    assert_same,
    cli,
    jsonl,
    loader_spec,
    optimizer_sd,
    optimizer_state,
    scheduler_state,
    sync_trainer,
    weights,
)
from tests.unit.models import ThreadDriver
from tuiconsole.engine.snapshot import RunState
from tuiconsole.engine.trainer import RunConfig, Trainer
from tuiconsole.errors import TuiconsoleError

BAD = [
    ("frobnicate all", "unknown command 'frobnicate'"),
    ("", "empty command"),
    ('lr all "1e-3', "cannot parse"),
    ("lr all", "usage: lr TARGET VALUE"),
    ("lr nosuch 1e-3", "no module, parameter or group named 'nosuch'"),
    ("lr features.9 1e-3", "no module, parameter or group named 'features.9'"),
    ("lr classifier.1 1e-3", "has no parameters"),
    ("lr features.0 1e-3", "frozen"),
    ("lr all 0", "lr must be > 0"),
    ("lr all -1e-3", "lr must be > 0"),
    ("lr all nan", "lr must be finite"),
    ("lr all inf", "lr must be finite"),
    ("lr all -inf", "lr must be finite"),
    ("lr all 1e-3x", "lr must be a number"),
    ("lr all *0", "factor must be > 0"),
    ("lr all /nan", "factor must be finite"),
    ("decay 0", "decay factor must be > 0"),
    ("decay nan", "decay factor must be finite"),
    ("decay ten", "decay factor must be a number"),
    ("decay 0.1 nosuch", "no module, parameter or group named 'nosuch'"),
    ("set all momentum=abc", "momentum must be a number"),
    ("set all momentum=nan", "momentum must be finite"),
    ("set all momentum=-0.1", "momentum must be >= 0"),
    ("set all bogus=1", "no hyper-parameter 'bogus'"),
    ("set all lr=0", "must be > 0"),
    ("set all lr=true", "lr must be a number"),
    ("set all nesterov=2", "true/false"),
    ("set nosuch momentum=0.5", "no module, parameter or group named 'nosuch'"),
    ("set all", "usage: set TARGET KEY=VALUE"),
    ("split x features.0", "frozen (requires_grad=False)"),
    ("split x classifier", "already is group 'classifier'"),
    ("split classifier classifier.0", "a group named 'classifier' already exists"),
    ("split all classifier.0", "cannot be a group name"),
    ("split x classifier.1", "has no parameters"),
    ("split x nosuch", "no module, parameter or group named 'nosuch'"),
    ("split x classifier.0 lr=0", "must be > 0"),
    ("split x classifier.0 lr=-1", "must be > 0"),
    ("split x classifier.0 bogus=1", "no hyper-parameter 'bogus'"),
    ("split x", "usage: split NAME MODULE"),
    ("rebuild Nope", "unknown optimizer class 'Nope'"),
    ("rebuild Adam momentum=0.9", "Adam has no hyper-parameter 'momentum'"),
    ("rebuild SGD lr=-1", "must be > 0"),
    ("rebuild Adam lr=0", "must be > 0"),
    ("rebuild SGD momentum=0 nesterov=true", "cannot build SGD"),
    ("step 0", "step count must be >= 1"),
    ("step x", "step count must be a whole number"),
    ("checkpoint /proc/no/such/dir/ck.pt", "cannot write checkpoint"),
]


def frozen_spec(scheduler: str | None = "lambda"):
    """Net with features.0 frozen (left out of the optimizer), SGD + momentum, a scheduler."""
    spec = loader_spec(scheduler=None)
    model = spec.model
    for p in model.features[0].parameters():
        p.requires_grad_(False)
    opt = torch.optim.SGD(
        [
            {"params": [p for p in model.features.parameters() if p.requires_grad]},
            {"params": model.classifier.parameters(), "lr": 1e-2},
        ],
        lr=1e-3,
        momentum=0.9,
    )
    spec.optimizer = opt
    if scheduler == "lambda":
        spec.scheduler = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1 / (1 + 0.01 * s))
    return spec


def state_of(t: Trainer):
    return t.optimizer, optimizer_state(t.optimizer), scheduler_state(t.scheduler)


def assert_untouched(t: Trainer, before) -> None:
    opt, groups_state, sched = before
    assert t.optimizer is opt
    assert_same(optimizer_state(t.optimizer), groups_state)
    assert_same(scheduler_state(t.scheduler), sched)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One trainer with momentum buffers, reused by every bad command (none may change it)."""
    t = sync_trainer(frozen_spec(), tmp_path_factory.mktemp("bad") / "run")
    t.step_now(3)
    assert t.optimizer.state
    yield t
    t.close()


@pytest.mark.parametrize("text, fragment", BAD, ids=[b[0] or "<empty>" for b in BAD])
def test_bad_command_is_an_error_and_changes_nothing(trained, text, fragment):
    before = state_of(trained)
    r = trained.apply_now(text, source="test")
    assert not r.ok and fragment in r.message, r.message
    assert "\n" not in r.message and "Traceback" not in r.message
    assert_untouched(trained, before)


@pytest.mark.parametrize(
    "text",
    ["lr classifier 1e300", "lr all 1e39", "lr classifier /1e-100", "decay 1e53", "lr all 1e-320"],
)
def test_lr_beyond_what_float32_holds_is_refused(trained, text):
    # Accepted before: the next optimizer.step() raised (alpha overflows float32)
    # or rounded the lr to 0, and the run ended in ERROR.
    before = state_of(trained)
    r = trained.apply_now(text)
    assert not r.ok and "torch.float32 parameters hold lrs in" in r.message, r.message
    assert_untouched(trained, before)
    trained.step_now(1)
    assert trained.state != RunState.ERROR


def test_lr_that_would_overflow_or_underflow_is_refused(trained):
    before = state_of(trained)
    r = trained.apply_now("lr classifier *1e400")
    assert not r.ok and "must be finite" in r.message, r.message
    assert_untouched(trained, before)
    assert trained.apply_now("lr classifier 3e38").ok
    r = trained.apply_now("lr classifier *10")
    assert not r.ok and "hold lrs in" in r.message
    assert trained.apply_now("lr classifier 1e-2").ok


def test_failed_commands_are_journaled_as_errors_with_unchanged_groups(trained):
    trained.apply_now("lr nosuch 1")
    recs = [r for r in jsonl(trained.run_dir / "journal.jsonl") if r["type"] == "command"]
    bad = recs[-1]
    assert bad["cmd"] == "lr nosuch 1.0" and bad["ok"] is False
    assert bad["groups"] == recs[-2]["groups"]


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("set all momentum=0.5", "OneCycleLR cycles momentum every step"),
        ("split x classifier.0 momentum=0.5", "OneCycleLR cycles momentum"),
        ("rebuild SGD momentum=0.5", "OneCycleLR cycles momentum"),
    ],
)
def test_momentum_edit_a_cycling_scheduler_would_undo_is_refused(text, fragment):
    t = sync_trainer(loader_spec(scheduler="onecycle"))
    t.step_now(2)
    before = state_of(t)
    r = t.apply_now(text)
    assert not r.ok and fragment in r.message and "base_momentum" in r.message
    assert_untouched(t, before)
    # what the message suggests works, and the schedule keeps it
    assert t.apply_now("set all max_momentum=0.9 base_momentum=0.8").ok


def test_bad_commands_through_the_running_trainer(tmp_path):
    """The threaded path (submit -> Future) gives the same results."""
    t = Trainer(frozen_spec(), RunConfig(run_dir=tmp_path, start_paused=True)).start()
    d = ThreadDriver(t)
    try:
        d.steps(2)
        before = state_of(t)
        for text, fragment in BAD[:12] + BAD[29:34]:
            r = d.cmd(text)
            assert not r.ok and fragment in r.message, (text, r.message)
        assert_untouched(t, before)
        assert t.alive and t.state == RunState.PAUSED
    finally:
        t.close()


@pytest.mark.subprocess
def test_headless_stdin_bad_lines(tmp_path):
    """Garbage on stdin: an error line each, the run goes on, exit 0, journal consistent."""
    from tests.reliability.helpers import ROOT

    lines = [
        "lr nosuch 1e-3",
        "lr all nan",
        "lr all inf",
        "lr all -1",
        "lr all abc",
        "rebuild Nope",
        "set all bogus=1",
        "split 0 2",
        "\x00\x01 binary junk",
        "lr 2 *0.5",
        "resume",
    ]
    r = cli(
        "run",
        str(ROOT / "tests" / "e2e" / "scripts" / "tiny.py"),
        "--headless",
        "--paused",
        "--max-steps",
        "20",
        "--run-dir",
        str(tmp_path),
        stdin="\n".join(lines) + "\n",
    )
    assert r.returncode == 0, r.stderr
    out = r.stdout
    for fragment in [
        "error: lr nosuch 0.001: no module, parameter or group named 'nosuch'",
        "error: lr all nan: lr must be finite",
        "error: lr all inf: lr must be finite",
        "error: lr all -1: lr must be > 0",
        "error: lr all abc: lr must be a number",
        "unknown optimizer class 'Nope'",
        "no hyper-parameter 'bogus'",
        "a group named '0' already exists",
        "error: '\\x00\\x01 binary junk': unknown command '\\x00\\x01'",
    ]:
        assert fragment in out, (fragment, out)
    assert "finished at step 20" in out
    recs = jsonl(tmp_path / "journal.jsonl")
    cmds = [x for x in recs if x["type"] == "command"]
    header_groups = recs[0]["groups"]
    # every failed command left the groups as the header had them; the good one halved lr
    # (parse errors are not journaled: the 4 engine refusals are)
    assert sum(not c["ok"] for c in cmds) == 4, [c["cmd"] for c in cmds]
    for c in cmds:
        if not c["ok"]:
            assert c["groups"] == header_groups
    good = next(c for c in cmds if c["cmd"] == "lr 2 *0.5")
    assert good["ok"] and good["groups"][1]["lr"] == 0.025


# --------------------------------------------------------------------------- journal on replay


def header_line(**extra) -> str:
    return json.dumps({"type": "header", "version": 1, "groups": [], **extra})


def command_line(step, cmd, ok=True, **extra) -> str:
    return json.dumps(
        {"type": "command", "step": step, "cmd": cmd, "ok": ok, "source": "t"} | extra
    )


@pytest.mark.parametrize(
    "lines, fragment",
    [
        ([command_line(0, "decay 0.5")], "no journal header line"),
        ([header_line(), "{not json", command_line(1, "decay 0.5")], ":2: not valid JSON"),
        ([header_line(), "[1, 2]"], ":2: expected a JSON object"),
        ([header_line(), command_line("3", "decay 0.5")], ":2: malformed command entry (step"),
        ([header_line(), command_line(-1, "decay 0.5")], ":2: malformed command entry (step"),
        ([header_line(), command_line(1, "")], ":2: malformed command entry (no cmd"),
        ([header_line(), command_line(1, "decay 0.5", ok="yes")], "(ok must be true/false)"),
        ([header_line(), command_line(1, "lr all nan")], ":2: cannot replay 'lr all nan'"),
        ([header_line(), command_line(1, "frobnicate")], "unknown command 'frobnicate'"),
        (
            [header_line(), command_line(5, "decay 0.5"), command_line(2, "decay 0.5")],
            "steps go backwards",
        ),
        ([header_line(resumed_from="x.pt", resumed_step=9)], "replay it together with --resume"),
    ],
)
def test_damaged_journal_is_refused_before_the_run(tmp_path, lines, fragment):
    journal = tmp_path / "journal.jsonl"
    journal.write_text("\n".join(lines) + "\n")
    with pytest.raises(TuiconsoleError) as err:
        Trainer(loader_spec(), RunConfig(replay=journal))
    assert fragment in str(err.value) and "\n" not in str(err.value)


def test_damaged_journal_via_cli_exits_2(tmp_path, monkeypatch, capsys):
    """The CLI's own path (in-process: it ends before any training starts)."""
    import sys

    from tests.reliability.helpers import ROOT
    from tuiconsole.cli import main

    journal = tmp_path / "j.jsonl"
    journal.write_text(header_line() + "\n" + command_line(1, "lr all -5") + "\n")
    tiny = str(ROOT / "tests" / "e2e" / "scripts" / "tiny.py")
    argv = ["tuiconsole", "run", tiny, "--headless", "--no-listen", "--replay", str(journal)]
    monkeypatch.setattr(sys, "argv", argv + ["--run-dir", str(tmp_path / "r")])
    with pytest.raises(SystemExit) as ex:
        main()
    assert ex.value.code == 2
    assert capsys.readouterr().err.strip() == (
        f"tuiconsole: {journal}:2: cannot replay 'lr all -5': lr must be > 0, got '-5'"
    )
    assert not (tmp_path / "r").exists()


def test_truncated_last_line_is_tolerated(tmp_path):
    """kill -9 mid-write leaves half a line: replay uses everything before it."""
    journal = tmp_path / "journal.jsonl"
    journal.write_text(header_line() + "\n" + command_line(2, "decay 0.5") + '\n{"type": "comm')
    t = Trainer(loader_spec(), RunConfig(replay=journal, log_every=0)).prepare()
    t.step_now(3)
    assert [g["lr"] for g in t.optimizer.param_groups] == [5e-4, 5e-3]


def test_replayed_command_that_now_fails_stops_the_replay_with_error(tmp_path):
    journal = tmp_path / "journal.jsonl"
    journal.write_text(
        header_line()
        + "\n"
        + command_line(2, "decay 0.5")
        + "\n"
        + command_line(4, "lr nosuch 1e-3")
        + "\n"
    )
    t = Trainer(loader_spec(), RunConfig(replay=journal, log_every=0, run_dir=tmp_path / "r"))
    t.prepare()
    t.step_now(10)
    assert t.state == RunState.ERROR and t.step == 4
    assert t.error.type == "ReplayError"
    assert "journal line 3 `lr nosuch 1e-3` (step 4)" in t.error.message
    assert "no module, parameter or group named 'nosuch'" in t.error.message
    # the run stopped exactly where the original applied the failing line: the same
    # state as a run that did the good command and its steps, and nothing after
    ref = Trainer(loader_spec(), RunConfig(log_every=0)).prepare()
    ref.step_now(2)
    assert ref.apply_now("decay 0.5").ok
    ref.step_now(2)
    assert_same(optimizer_sd(t.optimizer), optimizer_sd(ref.optimizer))
    assert_same(weights(t.model), weights(ref.model))
    t.close()
    ref.close()
