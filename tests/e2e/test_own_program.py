"""`tuiconsole run PROGRAM [ARGS]`: a script with a loop of its own, calling
tuiconsole.steer(), is the training process's main program. Real subprocesses."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.e2e.test_headless_cli import SCRIPTS, journal, tuiconsole

pytestmark = pytest.mark.subprocess

PROGRAM = str(SCRIPTS / "own_program.py")


def run_program(tmp_path: Path, *args: str, stdin: str | None = None, name: str = "run"):
    out = tmp_path / f"{name}.json"
    r = tuiconsole(
        "run", PROGRAM, "--headless", "--run-dir", str(tmp_path / name), *args,
        "--", "--out", str(out), stdin=stdin,
    )  # fmt: skip
    return r, out


def test_it_runs_as_main_with_its_own_arguments_and_stops_at_max_steps(tmp_path):
    out = tmp_path / "o.json"
    r = tuiconsole(
        "run", PROGRAM, "--headless", "--max-steps", "30", "--run-dir", str(tmp_path / "run"),
        "--out", str(out), "--epochs", "9",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    seen = json.loads(out.read_text())
    assert seen["name"] == "__main__"
    # its own option, and --epochs (a loop of its own counts its epochs) passed on to it
    assert seen["argv"] == ["--out", str(out), "--epochs", "9"]
    assert seen["steps"] == 30  # the steer ended the loop at --max-steps
    records = journal(tmp_path / "run")
    assert records[-1]["type"] == "end" and records[-1]["step"] == 30
    assert records[-1]["state"] == "FINISHED"
    assert Path(records[-1]["checkpoint"]).exists()
    assert "Traceback" not in r.stderr


def test_its_loop_running_out_finishes_the_run(tmp_path):
    r, out = run_program(tmp_path, "--epochs", "2")
    assert r.returncode == 0, r.stderr
    assert json.loads(out.read_text())["steps"] == 16
    assert "the training loop ended at step 16" in r.stdout
    assert journal(tmp_path / "run")[-1]["state"] == "FINISHED"


def test_stdin_commands_reach_the_optimizer_the_script_holds(tmp_path):
    """Paused at step 0 (--paused): an lr, a split and a rebuild to Adam, then resume. The
    script's own `optimizer` object is then an Adam, with the groups and the lr asked for."""
    r, out = run_program(
        tmp_path, "--paused", "--epochs", "1",
        stdin="lr all 0.05\nsplit head 2 lr=0.2\nrebuild Adam\nresume\n",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    seen = json.loads(out.read_text())
    assert seen["class"] == "Adam" and seen["groups"] == 2
    commands = [x for x in journal(tmp_path / "run") if x["type"] == "command"]
    by_cmd = {x["cmd"]: x for x in commands}
    assert all(x["ok"] and x["step"] == 0 for x in commands[:4]), commands
    assert [g["name"] for g in by_cmd["rebuild Adam"]["groups"]] == ["group0", "head"]
    assert [g["lr"] for g in by_cmd["rebuild Adam"]["groups"]] == [0.05, 0.2]
    assert seen["lr"] == pytest.approx(0.05)  # 8 steps: the StepLR (25) has not decayed yet


def test_a_replay_of_its_journal_gives_the_same_weights(tmp_path):
    # commands land at steps the stepping decides: the replay applies them where journaled
    stdin = "step 5\nlr all 0.02\nstep 4\nset all momentum=0.5\nresume\n"
    r, out = run_program(tmp_path, "--paused", "--epochs", "3", stdin=stdin, name="a")
    assert r.returncode == 0, r.stderr
    replay = str(tmp_path / "a")  # its run dir: the journal in it
    r2, out2 = run_program(tmp_path, "--epochs", "3", "--replay", replay, name="b")
    assert r2.returncode == 0, r2.stderr
    a = torch.load(str(out) + ".pt")
    b = torch.load(str(out2) + ".pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
    plain, out3 = run_program(tmp_path, "--epochs", "3", name="c")
    c = torch.load(str(out3) + ".pt")
    assert not all(torch.equal(a[k], c[k]) for k in a)  # the commands did change the run


def test_resume_goes_on_from_the_checkpoint_step(tmp_path):
    r, _ = run_program(tmp_path, "--max-steps", "10", "--epochs", "3", name="first")
    assert r.returncode == 0, r.stderr
    ckpt = tmp_path / "first" / "checkpoint-step10.pt"
    r2, out2 = run_program(tmp_path, "--resume", str(ckpt), "--epochs", "3", name="resumed")
    assert r2.returncode == 0, r2.stderr
    r3, out3 = run_program(tmp_path, "--epochs", "3", name="straight")
    assert json.loads(out2.read_text())["steps"] == 24
    a, b = torch.load(str(out2) + ".pt"), torch.load(str(out3) + ".pt")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_script_that_fails_before_its_run_is_one_line_and_exit_2(tmp_path):
    r, _ = run_program(tmp_path, "--fail-early")
    assert r.returncode == 2
    assert "raised ValueError before its run began: no data here" in r.stderr
    assert "Traceback" not in r.stderr


def test_a_script_that_raises_in_its_loop_ends_the_run_as_error(tmp_path):
    r, _ = run_program(tmp_path, "--fail-at", "7")
    assert r.returncode == 1
    assert "training failed: RuntimeError" in r.stdout and "broken batch at step 7" in r.stdout
    records = journal(tmp_path / "run")
    errors = [x for x in records if x["type"] == "error"]
    assert errors and errors[0]["step"] == 7
    assert records[-1]["type"] == "end" and records[-1]["state"] == "ERROR"


def test_a_script_that_never_steers_says_so(tmp_path):
    script = tmp_path / "nosteer.py"
    script.write_text("import tuiconsole\nprint('hello')\n")
    r = tuiconsole("run", str(script), "--headless", "--run-dir", str(tmp_path / "run"))
    assert r.returncode == 2
    assert "never called tuiconsole.steer()" in r.stderr


def test_options_that_cannot_apply_to_its_loop_say_so(tmp_path):
    r, _ = run_program(tmp_path, "--device", "cpu")
    assert r.returncode == 2
    assert "--device does not apply to a loop of its own" in r.stderr
    assert "Traceback" not in r.stderr


def test_a_contract_script_takes_no_arguments(tmp_path):
    r = tuiconsole("run", str(SCRIPTS / "tiny.py"), "--headless", "--", "--lr", "3")
    assert r.returncode == 2
    assert "follows the script contract and takes no arguments (got --lr 3)" in r.stderr
