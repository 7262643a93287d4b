"""The CLI end to end, as a user runs it: real subprocesses, exit codes, files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.subprocess

SCRIPTS = Path(__file__).parent / "scripts"


def tuiconsole(*args: str, stdin: str | None = None, cwd: Path | None = None, timeout: float = 120):
    return subprocess.run(
        [sys.executable, "-m", "tuiconsole", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        stdin=None if stdin is not None else subprocess.DEVNULL,
    )


def journal(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "journal.jsonl").read_text().splitlines()]


def test_headless_run_prints_progress_and_exits_0(tmp_path):
    r = tuiconsole(
        "run",
        str(SCRIPTS / "tiny.py"),
        "--headless",
        "--log-every",
        "16",
        "--run-dir",
        str(tmp_path / "run"),
    )
    assert r.returncode == 0, r.stderr
    progress = [x for x in r.stdout.splitlines() if x.startswith("step ")]
    assert len(progress) == 5  # 80 steps / 16
    assert "loss" in progress[0] and "steps/s" in progress[0] and "lr 0=0.01 2=0.05" in progress[0]
    assert "finished at step 80" in r.stdout
    assert journal(tmp_path / "run")[0]["type"] == "header"
    assert (tmp_path / "run" / "metrics.jsonl").exists()


def test_without_log_every_the_log_gets_at_most_a_line_a_second(tmp_path):
    """A fast model: metrics.jsonl keeps every 50th step, the printed log is throttled."""
    r = tuiconsole(
        "run", str(SCRIPTS / "tiny.py"), "--headless", "--epochs", "100", "--max-steps", "400",
        "--run-dir", str(tmp_path / "run"),
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [x["step"] for x in records if x["type"] == "train"]
    assert steps[:8] == list(range(50, 401, 50))  # (then the final record at the end)
    progress = [x for x in r.stdout.splitlines() if x.startswith("step ")]
    # 400 steps of this model take well under a second: the first line, maybe a second
    assert 1 <= len(progress) < 8, r.stdout
    assert progress[0].startswith("step 50 ")


def test_default_run_dir(tmp_path):
    r = tuiconsole("run", str(SCRIPTS / "tiny.py"), "--headless", "--max-steps", "5", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    (run,) = (tmp_path / "runs").iterdir()
    assert run.name.startswith("tiny-") and (run / "journal.jsonl").exists()


def test_stdin_commands_are_applied_and_journaled(tmp_path):
    r = tuiconsole(
        "run",
        str(SCRIPTS / "tiny.py"),
        "--headless",
        "--paused",
        "--max-steps",
        "30",
        "--run-dir",
        str(tmp_path),
        stdin="decay 0.5\nlr nosuch 1\nsplit head 2 lr=0.2\nstep 3\nresume\n",
    )
    assert r.returncode == 0, r.stderr
    assert "error: lr nosuch 1.0: no module, parameter or group named 'nosuch'" in r.stdout
    cmds = [e for e in journal(tmp_path) if e["type"] == "command"]
    assert [(e["cmd"], e["source"], e["ok"]) for e in cmds[:3]] == [
        ("decay 0.5 all", "stdin", True),
        ("lr nosuch 1.0", "stdin", False),
        ("split head 2 lr=0.2", "stdin", False),  # group "2" already holds exactly module 2
    ]
    assert "already is group" in cmds[2]["result"]
    assert [g["lr"] for g in cmds[0]["groups"]] == [0.005, 0.025]


def test_contract_error_exits_2_with_one_line(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import torch\nmodel = torch.nn.Linear(2, 2)\n")
    r = tuiconsole("run", str(bad), "--headless", "--run-dir", str(tmp_path / "r"))
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0
    assert "must define `optimizer`" in r.stderr
    assert "Traceback" not in r.stderr


def test_float_labels_pitfall_exits_2(tmp_path):
    src = (
        (SCRIPTS / "tiny.py")
        .read_text()
        .replace("y = (X[:, 0] > 0).long()", "y = (X[:, 0] > 0).float()")
    )
    bad = tmp_path / "floaty.py"
    bad.write_text(src)
    r = tuiconsole("run", str(bad), "--headless", "--run-dir", str(tmp_path / "r"))
    assert r.returncode == 2
    assert "targets must be integer class indices (LongTensor)" in r.stderr


def test_training_error_exits_1_with_step(tmp_path):
    r = tuiconsole("run", str(SCRIPTS / "raises.py"), "--headless", "--run-dir", str(tmp_path))
    assert r.returncode == 1
    assert "training failed: ValueError at step 5: bad batch 5" in r.stdout
    errors = [e for e in journal(tmp_path) if e["type"] == "error"]
    assert errors and errors[0]["step"] == 5


def test_run_help_is_fast_path(tmp_path):
    r = tuiconsole("run", "--help")
    assert r.returncode == 0 and "--max-steps" in r.stdout and "--replay" in r.stdout


ONE_GROUP = """
import torch
from torch import nn
g = torch.Generator().manual_seed(1)
X = torch.randn(256, 8, generator=g)
y = (X[:, 0] > 0).long()
model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 2))
optimizer = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
criterion = nn.CrossEntropyLoss()
train_loader = [(X[i : i + 32], y[i : i + 32]) for i in range(0, 256, 32)]
epochs = 100
"""


def test_quoted_names_are_journaled_so_that_replay_runs_them(tmp_path):
    """`split "a'b" 2` was journaled unquoted and --replay then exited 2."""
    import torch

    script = tmp_path / "one_group.py"
    script.write_text(ONE_GROUP)
    commands = 'split "a\'b" 2\nlr "a\'b" /4\nlr "" 0.01\nresume\n'
    first = tuiconsole(
        "run", str(script), "--headless", "--no-listen", "--paused", "--max-steps", "20",
        "--run-dir", str(tmp_path / "a"), stdin=commands,
    )  # fmt: skip
    assert first.returncode == 0, first.stdout + first.stderr
    assert 'error: lr "" 0.01: target must not be empty' in first.stdout
    cmds = [e["cmd"] for e in journal(tmp_path / "a") if e["type"] == "command"]
    assert cmds[:2] == ["split 'a'\"'\"'b' 2", "lr 'a'\"'\"'b' /4.0"]
    again = tuiconsole(
        "run", str(script), "--headless", "--no-listen", "--max-steps", "20",
        "--replay", str(tmp_path / "a" / "journal.jsonl"), "--run-dir", str(tmp_path / "b"),
    )  # fmt: skip
    assert again.returncode == 0, again.stdout + again.stderr
    a = torch.load(tmp_path / "a" / "checkpoint-step20.pt", weights_only=False)
    b = torch.load(tmp_path / "b" / "checkpoint-step20.pt", weights_only=False)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert a["groups"] == b["groups"] and len(a["groups"]) == 2


def test_a_run_that_ended_in_error_replays_to_the_same_error(tmp_path):
    """The closing `stop` journaled after the error used to be applied before the
    failing step: the replay ended STOPPED at step 4, exit 0."""
    script = str(SCRIPTS / "raises.py")
    first = tuiconsole("run", script, "--headless", "--no-listen", "--run-dir", str(tmp_path / "a"))
    assert first.returncode == 1
    kinds = [(e["type"], e.get("cmd")) for e in journal(tmp_path / "a")]
    assert kinds[1:3] == [("error", None), ("command", "stop")]  # the stop came after
    again = tuiconsole(
        "run", script, "--headless", "--no-listen", "--run-dir", str(tmp_path / "b"),
        "--replay", str(tmp_path / "a" / "journal.jsonl"),
    )  # fmt: skip
    assert again.returncode == 1, again.stdout
    assert "training failed: ValueError at step 5: bad batch 5" in again.stdout
    assert "not replayed: 1 command(s) journaled after the run's error" in again.stdout
    end = journal(tmp_path / "b")[-1]
    assert end["type"] == "end" and end["state"] == "ERROR"
