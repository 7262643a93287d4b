"""RunConfig coerces what it can and refuses the rest when it is made, not at step 1."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.unit.models import make_spec
from tuiconsole.engine.config import ConfigError, RunConfig
from tuiconsole.engine.trainer import Trainer
from tuiconsole.errors import TuiconsoleError


def test_str_paths_become_paths_and_a_run_works_with_them(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = RunConfig(run_dir="some/str", replay=None, resume=None, max_steps=3)
    assert cfg.run_dir == Path("some/str")
    t = Trainer(make_spec(), cfg).prepare()  # used to fail: 'str' object has no attribute 'mkdir'
    assert t.step_now(5) == 3
    t.close()
    assert (tmp_path / "some" / "str" / "journal.jsonl").is_file()
    assert (tmp_path / "some" / "str" / "checkpoint-step3.pt").is_file()


def test_path_like_values_are_coerced(tmp_path):
    class Where(os.PathLike):
        def __fspath__(self) -> str:
            return str(tmp_path / "j.jsonl")

    cfg = RunConfig(replay=Where(), resume=str(tmp_path / "c.pt"))
    assert cfg.replay == tmp_path / "j.jsonl" and cfg.resume == tmp_path / "c.pt"


def test_defaults_are_valid_and_unchanged():
    cfg = RunConfig()
    assert (cfg.run_dir, cfg.max_steps, cfg.epochs, cfg.log_every) == (None, None, None, 50)
    assert (cfg.nan, cfg.nan_check, cfg.snapshot_interval) == ("pause", "auto", 0.1)
    assert RunConfig(log_every=0).log_every == 0  # no periodic metrics record
    assert RunConfig(max_steps=0).max_steps == 0
    assert RunConfig(log_min_interval=2).log_min_interval == 2.0


def test_decay_factor_is_not_the_engines():
    with pytest.raises(TypeError):
        RunConfig(decay_factor=0.5)  # type: ignore[call-arg]


@pytest.mark.parametrize(
    "options, fragment",
    [
        ({"max_steps": -1}, "max_steps must be >= 0, got -1"),
        ({"max_steps": 2.5}, "max_steps must be an integer"),
        ({"max_steps": "10"}, "max_steps must be an integer, got '10'"),
        ({"max_steps": True}, "max_steps must be an integer"),
        ({"epochs": 0}, "epochs must be >= 1, got 0"),
        ({"log_every": -5}, "log_every must be >= 0"),
        ({"seed": None}, "seed must be an integer"),
        ({"nan": "explode"}, "--nan must be one of pause, stop, ignore, got 'explode'"),
        ({"nan_check": "never"}, "nan_check must be one of auto, step, flush"),
        ({"snapshot_interval": -0.1}, "snapshot_interval must be >= 0"),
        ({"snapshot_interval": float("nan")}, "snapshot_interval must be a number of seconds"),
        ({"log_min_interval": "1s"}, "log_min_interval must be a number of seconds"),
        ({"start_paused": "yes"}, "start_paused must be true or false"),
        ({"final_checkpoint": 1}, "final_checkpoint must be true or false"),
        ({"run_dir": 3}, "run_dir must be a path, got 3"),
        ({"run_dir": ""}, "run_dir must be a path"),
        ({"device": 0}, "device must be a string"),
    ],
)
def test_bad_values_are_refused_at_construction(options, fragment):
    with pytest.raises(ConfigError) as info:
        RunConfig(**options)
    assert fragment in str(info.value)
    # one error family for the user (the CLI prints it in one line), and a ValueError
    assert isinstance(info.value, TuiconsoleError) and isinstance(info.value, ValueError)


def test_a_run_dir_given_to_replay_means_its_journal(tmp_path):
    (tmp_path / "run").mkdir()
    assert RunConfig(replay=tmp_path / "run").replay == tmp_path / "run" / "journal.jsonl"
    assert RunConfig(replay=str(tmp_path / "j.jsonl")).replay == tmp_path / "j.jsonl"
