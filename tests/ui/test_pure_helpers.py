"""The console's pure helpers: formatting, completion, validation (no app, no torch)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tuiconsole.errors import CommandError
from tuiconsole.ui.app import _common_path
from tuiconsole.ui.completion import Vocabulary, complete
from tuiconsole.ui.fmt import fmt_count, fmt_elapsed, fmt_hparam, fmt_lr, spark_text
from tuiconsole.ui.screens.confirm import rebuild_command
from tuiconsole.ui.screens.edit_lr import check_lr_value, preview_lr
from tuiconsole.ui.screens.split_name import check_group_name
from tuiconsole.ui.widgets.block_chart import bar_rows, resample


@pytest.mark.parametrize(
    "value, text",
    [(0.1, "0.1"), (0.01, "0.01"), (1e-3, "1e-3"), (5e-4, "5e-4"), (3.162e-4, "3.16e-4"), (0, "0")],
)
def test_fmt_lr(value, text) -> None:
    assert fmt_lr(value) == text


def test_other_formats() -> None:
    assert fmt_count(812) == "812"
    assert fmt_count(23_808) == "23.8k"
    assert fmt_count(1_234_567) == "1.2M"
    assert fmt_elapsed(83) == "1:23"
    assert fmt_elapsed(3723) == "1:02:03"
    assert fmt_hparam((0.9, 0.999)) == "0.9,0.999"
    assert fmt_hparam(False) == "no"


@given(st.lists(st.floats(allow_nan=True, allow_infinity=True), max_size=300), st.integers(1, 40))
def test_spark_text_never_fails(values, width) -> None:
    assert len(spark_text(values, width)) <= width


def test_spark_text_flat_and_rising() -> None:
    assert spark_text([1.0] * 5, 5) == "▁▁▁▁▁"
    assert spark_text([0, 1, 2, 3, 4, 5, 6, 7], 8) == "▁▂▃▄▅▆▇█"
    assert len(spark_text(list(range(100)), 12)) == 12


@given(st.lists(st.floats(allow_nan=True, allow_infinity=True), max_size=300), st.integers(1, 120))
def test_resample_and_bars_never_fail(values, width) -> None:
    pts = resample(values, width)
    assert len(pts) in (0, width)
    rows = bar_rows(values, width, 3)
    assert len(rows) == 3 and all(len(r) == width for r in rows)


def test_bars_scale_min_to_max() -> None:
    rows = bar_rows([0.0, 1.0], 2, 2)
    assert rows == [" █", "▁█"]


def test_completion_of_names_targets_and_classes() -> None:
    vocab = Vocabulary(groups=["features", "classifier"], modules=["features", "features.0"])
    assert complete("l", vocab).matches == ("lr", "lrfind")
    assert complete("lrf", vocab).line == "lrfind "
    assert complete("lrfind fe", vocab).matches == ("features", "features.0")
    assert complete("lrfind all st", vocab).line == "lrfind all steps="
    assert complete("lr ", vocab).matches[0] == "all"
    assert complete("lr cl", vocab).line == "lr classifier "
    assert complete("lr fe", vocab).matches == ("features", "features.0")
    assert complete("rebuild AdamW", vocab).line == "rebuild AdamW "
    assert complete("set features mom", vocab).line == "set features momentum="
    assert complete("pause x", vocab).matches == ()


def test_lr_value_validation() -> None:
    assert check_lr_value("1e-3") is None
    assert check_lr_value("*0.5") is None and check_lr_value("/10") is None
    assert "> 0" in (check_lr_value("-1") or "")
    assert "number" in (check_lr_value("fast") or "")
    assert "finite" in (check_lr_value("inf") or "")
    assert check_lr_value("1 2") is not None and check_lr_value("") is not None
    assert preview_lr(0.01, "*0.5") == 0.005
    assert preview_lr(0.01, "/10") == 0.001
    assert preview_lr(None, "1e-3") is None


def test_rebuild_command_text() -> None:
    assert rebuild_command("Adam", "1e-3", "") == "rebuild Adam lr=0.001"
    assert rebuild_command("SGD", "", "momentum=0.9") == "rebuild SGD momentum=0.9"
    for lr, extra in [("-1", ""), ("", "momentum"), ("", "lr=3")]:
        with pytest.raises(CommandError):
            rebuild_command("SGD", lr, extra)


def test_group_names_and_common_paths() -> None:
    assert check_group_name("head", ["features"]) is None
    assert check_group_name("features", ["features"]) is not None
    assert check_group_name("a b", []) is not None and check_group_name("all", []) is not None
    assert _common_path(["a.b.c", "a.b.d"]) == "a.b"
    assert _common_path(["x.1", "y.2"]) == ""
