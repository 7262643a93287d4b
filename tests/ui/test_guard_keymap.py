"""The pure parts of the guard rails and the keymap loader (fast, no app)."""

from __future__ import annotations

import math

from tuiconsole.engine.snapshot import GroupView
from tuiconsole.ui.app import ConsoleApp
from tuiconsole.ui.guard import LrJump, big_jumps, lr_jumps
from tuiconsole.ui.keymap import binding_ids, default_path, load_keymap


def groups() -> list[GroupView]:
    def group(index: int, name: str, lr: float) -> GroupView:
        return GroupView(index, name, lr, hparams=(), n_tensors=2, n_params=10)

    return [group(0, "features", 0.01), group(1, "head", 0.1)]


def test_jumps_per_command_and_target() -> None:
    assert [(j.group, j.new) for j in lr_jumps("lr head 1e-3", groups())] == [("head", 1e-3)]
    assert {j.group for j in lr_jumps("decay 0.5", groups())} == {"features", "head"}
    jumps = lr_jumps("lr body.0 *100", groups(), lambda path: ("features",))
    assert [(j.group, round(j.new, 9), j.factor) for j in jumps] == [("features", 1.0, 100.0)]
    assert lr_jumps("pause", groups()) == [] and lr_jumps("lr nonsense", groups()) == []
    assert lr_jumps("lr nosuch 1", groups()) == []  # the engine answers that one


def test_ten_x_or_more_is_big_either_way() -> None:
    assert big_jumps(lr_jumps("decay 0.1 head", groups()))  # 0.1 is exactly 10x
    assert big_jumps(lr_jumps("lr features 0.1", groups()))
    assert not big_jumps(lr_jumps("lr features 0.09", groups()))
    assert not big_jumps(lr_jumps("lr head /9.99", groups()))
    assert lr_jumps("lr head 0", groups()) == []  # the grammar refuses a zero lr
    zero = LrJump("head", 0.1, 0.0)  # a group at lr 0 (set in the script) is big, too
    assert math.isinf(zero.factor) and big_jumps([zero])
    assert "head: 0.1 → 1e-3 (100x down)" in lr_jumps("lr head 1e-3", groups())[0].describe()


def test_keymap_file(tmp_path, monkeypatch) -> None:
    known = binding_ids(ConsoleApp.BINDINGS)
    assert {"pause", "resume", "undo", "filter", "zoom", "log_filter"} <= known
    path = tmp_path / "keymap.toml"
    assert load_keymap(path, known).keys == {}  # absent: defaults, no warning
    path.write_text('pause = "p"\nundo = 3\nnope = "x"\n')
    km = load_keymap(path, known)
    assert km.keys == {"pause": "p"}
    assert len(km.warnings) == 2 and "'nope'" in km.warnings[0] and "undo" in km.warnings[1]
    path.write_text("[[[")
    km = load_keymap(path, known)
    assert km.keys == {} and "not valid TOML" in km.warnings[0]
    monkeypatch.delenv("TUICONSOLE_KEYMAP", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    assert default_path() == tmp_path / "tuiconsole" / "keymap.toml"
    monkeypatch.delenv("XDG_CONFIG_HOME")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_path() == tmp_path / ".config" / "tuiconsole" / "keymap.toml"
