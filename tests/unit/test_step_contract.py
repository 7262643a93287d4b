"""amp / grad_clip / accumulate / compile: the script's names, run's options and the
clip / accumulate commands refuse bad values with one line (exit 2 at load), and the
CLI's options win over the script's."""

from __future__ import annotations

import sys

import pytest

from tests.reliability.helpers import jsonl, write_script
from tests.unit.models import GOOD
from tuiconsole.cli import main
from tuiconsole.engine import commands as C
from tuiconsole.engine.config import ConfigError, RunConfig
from tuiconsole.engine.step import StepSettings
from tuiconsole.errors import CommandError
from tuiconsole.script import load_script


def run_main(monkeypatch, capsys, *args: str) -> tuple[int, str]:
    monkeypatch.setattr(sys, "argv", ["tuiconsole", *args])
    with pytest.raises(SystemExit) as ex:
        main()
    return ex.value.code, capsys.readouterr().err


@pytest.mark.parametrize(
    "body, fragment",
    [
        ('amp = "fp8"', '`amp` must be "bf16" or "fp16" (or None), got \'fp8\''),
        ("amp = 16", '`amp` must be "bf16" or "fp16" (or None), got 16'),
        ("grad_clip = 0", "`grad_clip` must be a finite number > 0, got 0"),
        ("grad_clip = -1.5", "`grad_clip` must be a finite number > 0, got -1.5"),
        ("grad_clip = float('inf')", "`grad_clip` must be a finite number > 0, got inf"),
        ('grad_clip = "1.0"', "`grad_clip` must be a number > 0, got str"),
        ("grad_clip = True", "`grad_clip` must be a number > 0, got bool"),
        ("accumulate = 0", "`accumulate` must be an int >= 1 (micro-batches per step), got 0"),
        ("accumulate = 2.0", "`accumulate` must be an int >= 1 (micro-batches per step), got 2.0"),
        ("accumulate = True", "`accumulate` must be an int >= 1"),
        ('compile = "yes"', "`compile` must be True or False, got str"),
    ],
)
def test_bad_step_names_in_the_script_exit_2_with_one_line(
    tmp_path, monkeypatch, capsys, body, fragment
):
    script = write_script(tmp_path, GOOD + "\n" + body + "\n")
    code, err = run_main(monkeypatch, capsys, "run", str(script), "--headless", "--no-listen")
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith(f"tuiconsole: {script}: "), err
    assert fragment in err and "Traceback" not in err
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--grad-clip", "0"], "--grad-clip must be a finite number > 0, got '0'"),
        (["--grad-clip", "-2"], "--grad-clip must be a finite number > 0, got '-2'"),
        (["--grad-clip", "nan"], "--grad-clip must be a finite number > 0, got 'nan'"),
        (["--grad-clip", "big"], "--grad-clip must be a number > 0 or off, got 'big'"),
    ],
)
def test_bad_grad_clip_option_exits_2_before_anything_runs(
    tmp_path, monkeypatch, capsys, args, fragment
):
    script = write_script(tmp_path, GOOD)
    run_dir = tmp_path / "run"
    code, err = run_main(
        monkeypatch, capsys, "run", str(script), "--headless", "--no-listen",
        "--run-dir", str(run_dir), *args,
    )  # fmt: skip
    assert code == 2 and err == f"tuiconsole: {fragment}\n"
    assert not run_dir.exists()


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--amp", "fp8"], "'fp8' is not one of"),
        (["--accumulate", "0"], "Invalid value for '--accumulate'"),
        (["--accumulate", "two"], "Invalid value for '--accumulate'"),
    ],
)
def test_bad_amp_or_accumulate_options_are_usage_errors(
    tmp_path, monkeypatch, capsys, args, fragment
):
    script = write_script(tmp_path, GOOD)
    code, err = run_main(monkeypatch, capsys, "run", str(script), "--headless", *args)
    assert code == 2 and fragment in " ".join(err.split())


@pytest.mark.parametrize(
    "options, fragment",
    [
        ({"amp": "fp8"}, "--amp must be one of bf16, fp16, off, got 'fp8'"),
        ({"grad_clip": 0.0}, "--grad-clip must be a finite number > 0, got 0.0"),
        ({"grad_clip": "x"}, "--grad-clip must be a number > 0 (or off), got 'x'"),
        ({"grad_clip": True}, "--grad-clip must be a number > 0, got bool"),
        ({"accumulate": 0}, "accumulate must be >= 1, got 0"),
        ({"accumulate": 1.5}, "accumulate must be an integer, got 1.5"),
        ({"compile": "yes"}, "compile must be true or false, got 'yes'"),
    ],
)
def test_run_config_refuses_bad_step_values(options, fragment):
    with pytest.raises(ConfigError) as err:
        RunConfig(**options)
    assert str(err.value) == fragment


def test_options_win_over_the_scripts_names(tmp_path):
    body = GOOD + '\namp = "bf16"\ngrad_clip = 2\naccumulate = 3\ncompile = True\n'
    spec = load_script(write_script(tmp_path, body))
    assert StepSettings.of(spec, RunConfig()) == StepSettings("bf16", 2.0, 3, True)
    assert isinstance(spec.grad_clip, float)
    override = RunConfig(amp="off", grad_clip="off", accumulate=1, compile=False)
    assert StepSettings.of(spec, override) == StepSettings()
    assert StepSettings.of(spec, override).plain
    other = RunConfig(amp="fp16", grad_clip="0.5", accumulate=4)
    assert StepSettings.of(spec, other) == StepSettings("fp16", 0.5, 4, True)


def test_cli_options_reach_the_run_and_its_journal(tmp_path, monkeypatch, capsys):
    """`--amp bf16 --grad-clip 0.5 --accumulate 2 --no-compile` over a script that sets
    other values: the journal's header says what the session ran with."""
    body = GOOD + '\namp = "fp16"\ngrad_clip = 3.0\naccumulate = 4\ncompile = True\n'
    script = write_script(tmp_path, body)
    run_dir = tmp_path / "run"
    code, _ = run_main(
        monkeypatch, capsys, "run", str(script), "--headless", "--no-listen",
        "--run-dir", str(run_dir), "--max-steps", "3", "--amp", "bf16",
        "--grad-clip", "0.5", "--accumulate", "2", "--no-compile",
    )  # fmt: skip
    assert code == 0
    header = jsonl(run_dir / "journal.jsonl")[0]
    assert header["step"] == {"amp": "bf16", "grad_clip": 0.5, "accumulate": 2, "compile": False}
    metrics = [r for r in jsonl(run_dir / "metrics.jsonl") if r["type"] == "train"]
    assert metrics[-1]["step"] == 3  # 3 optimizer steps of 2 micro-batches (4 per epoch)


@pytest.mark.parametrize("every", [1, 0])
def test_signal_every_reaches_the_run_and_its_metrics(tmp_path, monkeypatch, capsys, every):
    """`--signal-every 1`: the per-group signals in every metrics line; `0`: none."""
    script = write_script(tmp_path, GOOD)
    run_dir = tmp_path / "run"
    code, _ = run_main(
        monkeypatch, capsys, "run", str(script), "--headless", "--no-listen",
        "--run-dir", str(run_dir), "--max-steps", "4", "--log-every", "2",
        "--signal-every", str(every),
    )  # fmt: skip
    assert code == 0
    metrics = [r for r in jsonl(run_dir / "metrics.jsonl") if r["type"] == "train"]
    assert [r["step"] for r in metrics][:2] == [2, 4]
    if every:
        assert all(set(r["grad_norm"]) == set(r["lr"]) for r in metrics)
        assert all(v is not None for r in metrics for v in r["update_ratio"].values())
    else:
        assert all("grad_norm" not in r and "update_ratio" not in r for r in metrics)
    from tuiconsole.cli import _child_args

    assert _child_args(signal_every=every) == ["--signal-every", str(every)]


@pytest.mark.parametrize(
    "line, cmd",
    [
        ("clip 1.0", C.Clip(1.0)),
        ("clip 0.25", C.Clip(0.25)),
        ("clip OFF", C.Clip(None)),
        (":clip off", C.Clip(None)),
        ("accumulate 4", C.Accumulate(4)),
    ],
)
def test_clip_and_accumulate_parse_and_round_trip(line, cmd):
    assert C.parse(line) == cmd
    assert C.parse(cmd.text) == cmd


@pytest.mark.parametrize(
    "line, fragment",
    [
        ("clip", "usage: clip MAX_NORM | clip off"),
        ("clip 1 2", "usage: clip MAX_NORM | clip off"),
        ("clip 0", "max norm must be > 0, got '0'"),
        ("clip -1", "max norm must be > 0"),
        ("clip inf", "max norm must be finite"),
        ("clip nan", "max norm must be finite"),
        ("clip on", "max norm must be a number, got 'on'"),
        ("accumulate", "usage: accumulate N"),
        ("accumulate 0", "accumulate must be >= 1 (micro-batches per step), got 0"),
        ("accumulate 2.5", "accumulate must be a whole number, got '2.5'"),
    ],
)
def test_bad_clip_and_accumulate_commands_are_one_line(line, fragment):
    with pytest.raises(CommandError) as err:
        C.parse(line)
    assert fragment in str(err.value) and "\n" not in str(err.value)


def test_the_training_process_gets_the_step_options_as_given():
    """The console's training process (and torchrun's ranks) are started with run's
    options again: --no-compile must reach them, or a script's compile=True would win."""
    from tuiconsole.cli import _child_args

    args = _child_args(amp="bf16", grad_clip="off", accumulate=4, compile=False, paused=False)
    assert args == ["--amp", "bf16", "--grad-clip", "off", "--accumulate", "4", "--no-compile"]
    assert _child_args(compile=True, amp=None, grad_clip=None) == ["--compile"]
