import math
import shlex

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

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


# --------------------------------------------------------------------------- round trip

# Tokens a user (or a hostile client) may type: names with quotes, spaces, '=', ','
# and non-ASCII, empty strings, control characters, and numbers at their edges.
_NAMES = st.one_of(
    st.sampled_from(["all", "features", "classifier.0", "group0", "Adam", "SGD", "x.pt"]),
    st.text(alphabet=st.sampled_from("ab.0 '\"=,*/\\#:é\t\n\x00"), max_size=6),
    st.text(max_size=4),
)
_NUMBERS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["1e-3", "0", "-1", "1e308", "1e-320", "abc", "", "007", "1_0", "+5"]),
)
_VALUES = st.one_of(
    _NUMBERS,
    st.sampled_from(["true", "FALSE", "0.9,0.99", "0.9,", ",", "(0.9,0.99)", "1,,2"]),
    st.lists(_NUMBERS, min_size=1, max_size=3).map(",".join),
)
_TOKENS = st.one_of(
    _NAMES,
    _NUMBERS,
    st.tuples(st.sampled_from("*/"), _NUMBERS).map("".join),
    st.tuples(_NAMES, _VALUES).map(lambda kv: f"{kv[0]}={kv[1]}"),
)


@st.composite
def command_lines(draw) -> str:
    name = draw(st.sampled_from(C.COMMAND_NAMES))
    if draw(st.booleans()):
        name = name.upper()
    tokens = draw(st.lists(_TOKENS, max_size=5))
    # quoted as a shell would need, or typed raw (then shlex may refuse it)
    quote = shlex.quote if draw(st.booleans()) else str
    return " ".join([name, *map(quote, tokens)])


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(command_lines())
def test_every_accepted_command_journals_a_text_that_parses_back_to_it(line):
    """The journal stores ``cmd.text``; replay parses it. Whatever the grammar
    accepts must come back as the same command, or be refused when typed."""
    try:
        cmd = C.parse(line)
    except CommandError as exc:
        assert "\n" not in str(exc)
        return
    text = cmd.text
    assert text.isprintable(), text  # one journal/log line, no terminal control
    again = C.parse(text)
    assert again == cmd, (line, text, again)
    assert again.text == text  # canonical: a fixed point


@pytest.mark.parametrize(
    "line",
    [
        'split "a\'b" body.0',
        "split 'my group' features",
        "split g 'module with space'",
        "set all 'odd key=1'",
        "set all betas=0.9,",  # a one-element tuple stays a tuple
        "rebuild 'A b'",
        "lr 'a b' 0.1",
        'checkpoint "it\'s.pt"',
    ],
)
def test_hostile_but_valid_names_round_trip(line):
    cmd = C.parse(line)
    assert C.parse(cmd.text) == cmd


@pytest.mark.parametrize(
    "line, fragment",
    [
        ('lr "" 0.01', "target must not be empty"),
        ("split '' features", "group name must not be empty"),
        ("split g ''", "module must not be empty"),
        ("checkpoint ''", "path must not be empty"),
        ("rebuild ''", "optimizer class must not be empty"),
        ("lr 'a\tb' 0.1", "printable"),
        ("split 'g\x1b[2J' features", "printable"),
        ("set all betas=,", "at least one number"),
    ],
)
def test_names_the_grammar_cannot_round_trip_are_refused(line, fragment):
    with pytest.raises(CommandError) as err:
        C.parse(line)
    assert fragment in str(err.value) and "\n" not in str(err.value)
