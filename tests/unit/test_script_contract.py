"""A broken script gets ONE clear message naming the problem."""

from __future__ import annotations

import textwrap

import pytest

from tests.unit.models import GOOD
from tuiconsole.errors import ScriptError
from tuiconsole.script import load_script


def write(tmp_path, body: str, name: str = "train.py"):
    p = tmp_path / name
    p.write_text(textwrap.dedent(body))
    return p


def error_of(path) -> str:
    with pytest.raises(ScriptError) as err:
        load_script(path)
    msg = str(err.value)
    assert "\n" not in msg and "Traceback" not in msg
    return msg


def test_good_script_loads(tmp_path):
    spec = load_script(write(tmp_path, GOOD))
    assert spec.epochs is None and spec.scheduler_interval == "epoch"
    assert len(spec.sha256) == 64


@pytest.mark.parametrize("name", ["model", "optimizer", "criterion", "train_loader"])
def test_missing_name(tmp_path, name):
    body = GOOD + f"\ndel {name}\n"
    assert f"must define `{name}`" in error_of(write(tmp_path, body))


@pytest.mark.parametrize(
    "extra, fragment",
    [
        ("model = 3", "`model` must be an nn.Module, got int"),
        ("optimizer = 'sgd'", "`optimizer` must be a torch.optim.Optimizer, got str"),
        ("criterion = 5", "`criterion` must be callable"),
        ("train_loader = 7", "`train_loader` must be an iterable"),
        ("epochs = 0", "`epochs` must be a positive int"),
        ("scheduler_interval = 'batch'", "`scheduler_interval` must be"),
        ("train_loader = []", "`train_loader` is empty"),
        ("train_loader = [(X, y, y)]", "must yield (inputs, targets) pairs"),
        (
            "scheduler = torch.optim.lr_scheduler.StepLR(torch.optim.SGD(model.parameters(), lr=1), 1)",
            "attached to `optimizer`",
        ),
    ],
)
def test_wrong_types(tmp_path, extra, fragment):
    assert fragment in error_of(write(tmp_path, GOOD + "\n" + extra + "\n"))


def test_raise_while_loading_names_the_line(tmp_path):
    body = GOOD + "\n\nraise RuntimeError('no data here')\n"
    msg = error_of(write(tmp_path, body))
    n = body.splitlines().index("raise RuntimeError('no data here')") + 1
    assert f"(line {n})" in msg and "RuntimeError: no data here" in msg


def test_syntax_error(tmp_path):
    msg = error_of(write(tmp_path, GOOD + "\ndef broken(:\n"))
    assert "syntax error" in msg


def test_missing_file(tmp_path):
    assert "no such file" in error_of(tmp_path / "nope.py")


def test_optimizer_over_foreign_parameters(tmp_path):
    body = (
        GOOD
        + "\nother = nn.Linear(2, 2)\noptimizer = torch.optim.SGD(other.parameters(), lr=0.1)\n"
    )
    assert "not `model`'s" in error_of(write(tmp_path, body))


def test_seed_pitfall_float_labels(tmp_path):
    body = GOOD + "\ntrain_loader = [(X[:16], y[:16].float())]\n"
    msg = error_of(write(tmp_path, body))
    assert "targets must be integer class indices (LongTensor)" in msg


def test_script_folder_is_importable(tmp_path):
    (tmp_path / "helper_mod.py").write_text("SIZE = 4\n")
    body = "from helper_mod import SIZE\n" + GOOD.replace("nn.Linear(4, 3)", "nn.Linear(SIZE, 3)")
    assert load_script(write(tmp_path, body)).model.in_features == 4


def test_main_guard_does_not_run(tmp_path):
    body = GOOD + "\nif __name__ == '__main__':\n    raise SystemExit('should not run')\n"
    load_script(write(tmp_path, body))


def test_seed_makes_scripts_deterministic(tmp_path):
    p = write(tmp_path, GOOD)
    a, b = load_script(p, seed=3), load_script(p, seed=3)
    c = load_script(p, seed=4)
    assert (a.model.weight == b.model.weight).all()
    assert not (a.model.weight == c.model.weight).all()
