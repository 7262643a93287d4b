import math

import pytest

from tuiconsole.engine import commands as C
from tuiconsole.errors import CommandError


@pytest.mark.parametrize(
    "text, expected",
    [
        ("lr features 1e-4", C.Lr("features", 1e-4)),
        (":lr classifier.0 *0.5", C.Lr("classifier.0", 0.5, "*")),
        ("lr all /10", C.Lr("all", 10.0, "/")),
        ("decay 0.1", C.Decay(0.1, "all")),
        ("decay 0.5 features", C.Decay(0.5, "features")),
        (
            "set all weight_decay=1e-4 momentum=0.8",
            C.Set("all", (("weight_decay", 1e-4), ("momentum", 0.8))),
        ),
        ("set g betas=0.9,0.99", C.Set("g", (("betas", (0.9, 0.99)),))),
        ("set g nesterov=true", C.Set("g", (("nesterov", True),))),
        ("split fc1 classifier.0 lr=1e-3", C.Split("fc1", ("classifier.0",), (("lr", 1e-3),))),
        ("split both features.0 features.2", C.Split("both", ("features.0", "features.2"))),
        ("rebuild", C.Rebuild()),
        ("rebuild Adam lr=3e-4", C.Rebuild("Adam", (("lr", 3e-4),))),
        ("pause", C.Pause()),
        ("resume", C.Resume()),
        ("step", C.Step(1)),
        ("step 7", C.Step(7)),
        ("eval", C.Eval()),
        ("stop", C.Stop()),
        ("checkpoint", C.Checkpoint()),
        ("checkpoint '/tmp/a b.pt'", C.Checkpoint("/tmp/a b.pt")),
    ],
)
def test_parse(text, expected):
    cmd = C.parse(text)
    assert cmd == expected
    # canonical text parses back to the same command (the journal relies on it)
    assert C.parse(cmd.text) == cmd


def test_canonical_text_round_trips_floats_exactly():
    value = 0.1 + 0.2  # not representable as a short decimal
    cmd = C.parse(C.Lr("x", value).text)
    assert cmd.value == value


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("", "empty command"),
        ("frobnicate", "unknown command 'frobnicate'"),
        ("lr features", "usage: lr TARGET VALUE"),
        ("lr features -1", "lr must be > 0"),
        ("lr features 0", "lr must be > 0"),
        ("lr features nan", "must be finite"),
        ("lr features inf", "must be finite"),
        ("lr features abc", "must be a number"),
        ("lr features *0", "factor must be > 0"),
        ("decay -0.1", "decay factor must be > 0"),
        ("set all", "usage: set"),
        ("set all momentum=", "expected KEY=VALUE"),
        ("set all momentum=0.9 x", "must come last"),
        ("set all momentum=1 momentum=2", "given twice"),
        ("split onlyname", "usage: split"),
        ("rebuild Adam SGD", "usage: rebuild"),
        ("step 0", "step count must be >= 1"),
        ("step two", "whole number"),
        ("pause now", "usage: pause"),
        ("lr 'unterminated 1", "cannot parse"),
    ],
)
def test_parse_errors_are_one_line(text, fragment):
    with pytest.raises(CommandError) as err:
        C.parse(text)
    assert fragment in str(err.value)
    assert "\n" not in str(err.value)


def test_number_parsing_rejects_non_finite():
    for bad in ("nan", "inf", "-inf"):
        with pytest.raises(CommandError):
            C.parse_number(bad)
    assert math.isclose(C.parse_number("1e-3"), 1e-3)
