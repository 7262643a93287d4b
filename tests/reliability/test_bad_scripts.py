"""A broken script: one clear message naming the problem and where, exit 2 before
training (the CLI's own path, in-process), or ERROR with type/message/step during."""

from __future__ import annotations

import sys

import pytest

from tests.reliability.helpers import cli, jsonl, sync_trainer, write_script
from tests.unit.models import GOOD
from tuiconsole.cli import main
from tuiconsole.engine.snapshot import RunState
from tuiconsole.script import load_script


def run_main(monkeypatch, capsys, *args: str) -> tuple[int, str]:
    monkeypatch.setattr(sys, "argv", ["tuiconsole", *args])
    with pytest.raises(SystemExit) as ex:
        main()
    return ex.value.code, capsys.readouterr().err


@pytest.mark.parametrize(
    "body, fragment",
    [
        (GOOD + "\ndef broken(:\n", "syntax error"),
        (GOOD + "\ndel optimizer\n", "must define `optimizer`"),
        (GOOD + "\nmodel = 'resnet'\n", "`model` must be an nn.Module, got str"),
        (GOOD + "\ncriterion = None\n", "`criterion` must be callable"),
        (
            GOOD + "\noptimizer = torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1)\n",
            "not `model`'s",
        ),
        (GOOD + "\ntrain_loader = []\n", "`train_loader` is empty"),
        (GOOD + "\ntrain_loader = [(X, y.float())]\n", "targets must be integer class indices"),
        (GOOD + "\ntrain_loader = [X[:8]]\n", "must yield (inputs, targets) pairs"),
        (GOOD + "\nimport json\njson.loads('{')\n", "the script raised JSONDecodeError"),
    ],
    ids=[
        "syntax",
        "missing",
        "model-type",
        "criterion-type",
        "foreign-params",
        "empty-loader",
        "float-labels",
        "wrong-batch-shape",
        "raises",
    ],
)
def test_contract_errors_exit_2_with_one_line(tmp_path, monkeypatch, capsys, body, fragment):
    script = write_script(tmp_path, body)
    code, err = run_main(monkeypatch, capsys, "run", str(script), "--headless", "--no-listen")
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("tuiconsole: "), err
    assert fragment in err and "Traceback" not in err
    assert str(script) in err  # names where
    assert not (tmp_path / "runs").exists()  # nothing started


def test_raise_while_loading_names_the_line(tmp_path, monkeypatch, capsys):
    body = GOOD + "\n\nx = 1 / 0\n"
    script = write_script(tmp_path, body)
    code, err = run_main(monkeypatch, capsys, "run", str(script), "--headless", "--no-listen")
    line = body.splitlines().index("x = 1 / 0") + 1
    assert code == 2 and f"(line {line})" in err and "ZeroDivisionError" in err


def train_error(tmp_path, body: str, steps: int = 10):
    spec = load_script(write_script(tmp_path, body))
    t = sync_trainer(spec, tmp_path / "run")
    t.step_now(steps)
    t.close()
    assert t.state == RunState.ERROR
    return t


def test_loader_with_wrong_tensor_shape_is_an_error_at_step_1(tmp_path):
    t = train_error(tmp_path, GOOD + "\ntrain_loader = [(torch.randn(16, 5), y[:16])]\n")
    assert (t.error.type, t.error.step) == ("RuntimeError", 1)
    assert "mat1 and mat2 shapes cannot be multiplied (16x5 and 4x3)" in t.error.message
    err = [r for r in jsonl(tmp_path / "run" / "journal.jsonl") if r["type"] == "error"]
    assert err[0]["step"] == 1 and err[0]["checkpoint"].endswith("checkpoint-step0.pt")


def test_float_labels_from_a_generator_loader_get_the_hint_during_training(tmp_path):
    # A one-shot generator is not peeked at load time, so this is caught at step 1.
    body = GOOD + "\ntrain_loader = ((X[i:i+16], y[i:i+16].float()) for i in range(0, 64, 16))\n"
    t = train_error(tmp_path, body)
    assert t.error.step == 1
    assert "targets must be integer class indices (LongTensor)" in t.error.message


def test_training_step_returning_a_float_says_so(tmp_path):
    body = GOOD + "\ndef training_step(model, batch, criterion):\n    return 0.5\n"
    t = train_error(tmp_path, body)
    assert t.error.type == "TypeError"
    assert "training_step must return the loss as a tensor, got float" in t.error.message


def test_generator_loader_used_up_after_one_epoch(tmp_path):
    body = GOOD + (
        "\ntrain_loader = ((X[i:i+16], y[i:i+16]) for i in range(0, 64, 16))\nepochs = 2\n"
    )
    t = train_error(tmp_path, body)
    assert t.error.type == "EmptyEpoch" and t.error.step == 5
    assert "yielded no batches in epoch 2" in t.error.message
    assert "use a list or a DataLoader" in t.error.message


@pytest.mark.subprocess
def test_headless_wrong_shape_exits_1_with_the_step(tmp_path):
    script = write_script(tmp_path, GOOD + "\ntrain_loader = [(torch.randn(16, 5), y[:16])]\n")
    r = cli("run", str(script), "--headless", "--run-dir", str(tmp_path / "r"))
    assert r.returncode == 1, r.stderr
    assert "training failed: RuntimeError at step 1: mat1 and mat2 shapes" in r.stdout
    assert "checkpoint of the last good step 0 written to" in r.stdout
    assert "Traceback" not in r.stdout + r.stderr
