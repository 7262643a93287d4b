"""`checkpoint` + `--resume`: model, optimizer (groups made by split, lrs set by
hand, another class after rebuild), scheduler, step/epoch, RNG and the position
in a shuffled epoch come back, and a CPU run continues bit for bit."""

from __future__ import annotations

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.reliability.helpers import (
    assert_same,
    cli_env,
    jsonl,
    loader_spec,
    optimizer_sd,
    scheduler_state,
    sync_trainer,
    weights,
    write_script,
)
from tests.unit.models import ThreadDriver, wait_for
from tuiconsole.cli import main
from tuiconsole.engine.checkpoint import load_checkpoint, rng_state
from tuiconsole.engine.snapshot import RunState
from tuiconsole.engine.trainer import RunConfig, Trainer
from tuiconsole.errors import TuiconsoleError


def assert_same_run(a: Trainer, b: Trainer, rng_after_a: dict | None = None) -> None:
    """``rng_after_a``: the RNG state (``rng_state()``) right after ``a`` took its last
    step; ``b`` took its last step just now, so the global RNGs must be there too."""
    assert (a.step, a.epoch) == (b.step, b.epoch)
    assert_same(weights(a.model), weights(b.model))
    assert type(a.optimizer) is type(b.optimizer)
    assert_same(optimizer_sd(a.optimizer), optimizer_sd(b.optimizer))
    assert_same(scheduler_state(a.scheduler), scheduler_state(b.scheduler))
    if rng_after_a is not None:
        assert_same(rng_state(), rng_after_a)


SCENARIOS = {
    # optimizer, scheduler, interval, commands applied at steps 30 / 60
    "sgd-lambda-split": (
        "sgd",
        "lambda",
        "step",
        ["split fc1 classifier.0 lr=0.02", "lr features 0.003"],
        ["set all weight_decay=0.001", "decay 0.5 fc1"],
    ),
    "adam-onecycle-split": (
        "adam",
        "onecycle",
        "step",
        ["split body features.2 classifier.0", "lr classifier *2"],
        ["set body weight_decay=0.01 max_momentum=0.9"],
    ),
    "sgd-cosine-rebuild-adam": (
        "sgd",
        "cosine",
        "step",
        ["split head classifier.3"],
        ["rebuild Adam lr=0.002", "lr head 0.01"],
    ),
    "sgd-plateau-epoch": (
        "sgd",
        "plateau",
        "epoch",
        ["lr classifier 0.05"],
        ["split fc classifier.0", "decay 0.5 features"],
    ),
}


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_checkpoint_at_100_then_resume_to_200_is_bit_for_bit(tmp_path, name):
    opt, sched, interval, at30, at60 = SCENARIOS[name]

    def spec():
        return loader_spec(opt, sched, interval=interval)

    a = sync_trainer(spec(), tmp_path / "a")
    a.step_now(30)
    for c in at30:
        assert a.apply_now(c).ok, c
    a.step_now(30)
    for c in at60:
        assert a.apply_now(c).ok, c
    a.step_now(40)
    ckpt = tmp_path / "ck100.pt"
    r = a.apply_now(f"checkpoint {ckpt}")
    assert r.ok and r.message == f"checkpoint of step 100 written to {ckpt}"
    assert 0 < a.data_position()["epoch_batches"] < 11  # mid-epoch (11 batches/epoch)
    a.step_now(100)
    rng_a = rng_state()

    b = sync_trainer(spec(), tmp_path / "b", resume=ckpt)
    assert b.step == 100
    assert [g["name"] for g in b.optimizer.param_groups] == [
        g["name"] for g in a.optimizer.param_groups
    ]
    b.step_now(100)
    assert_same_run(a, b, rng_a)
    a.close()
    b.close()
    header = json.loads((tmp_path / "b" / "journal.jsonl").read_text().splitlines()[0])
    assert header["resumed_from"] == str(ckpt) and header["resumed_step"] == 100


@pytest.mark.parametrize("shuffle", ["global", "generator", "python", "numpy"])
@pytest.mark.parametrize("at", [100, 110])  # mid-epoch, and an epoch boundary (11 x 10)
def test_resume_recreates_the_epoch_order_whatever_shuffles_it(tmp_path, shuffle, at):
    """The loader's own generator=, Python's and numpy's RNGs are restored too, both as they
    were when the current epoch's iterator was made and as they are at the checkpoint."""
    a = sync_trainer(loader_spec(shuffle=shuffle), tmp_path / "a")
    a.step_now(at)
    assert a.apply_now(f"checkpoint {tmp_path / 'ck.pt'}").ok
    a.step_now(200 - at)
    rng_a = rng_state()
    b = sync_trainer(loader_spec(shuffle=shuffle), tmp_path / "b", resume=tmp_path / "ck.pt")
    b.step_now(200 - at)
    assert_same_run(a, b, rng_a)


def test_checkpoint_command_on_the_running_trainer(tmp_path):
    """The real thing: `checkpoint` sent to the loop thread while it trains."""
    t = Trainer(loader_spec("sgd", "step"), RunConfig(run_dir=tmp_path / "a", start_paused=True))
    d = ThreadDriver(t.start())
    try:
        d.steps(40)
        assert d.cmd("split fc1 classifier.0 lr=0.03").ok
        d.steps(60)
        assert d.cmd(f"checkpoint {tmp_path / 'ck.pt'}").ok
        d.steps(100)
        b = sync_trainer(loader_spec("sgd", "step"), resume=tmp_path / "ck.pt")
        b.step_now(100)
        d.cmd("pause")
        assert_same_run(t, b)
        # the status line names the newest checkpoint (it shows once a snapshot is read)
        wait_for(lambda: t.latest_snapshot().status.checkpoint == str(tmp_path / "ck.pt"))
    finally:
        t.close()


def test_split_groups_keep_their_own_schedule_function_after_resume(tmp_path):
    """LambdaLR's per-group functions cannot be saved; resume rebuilds them by lineage."""
    a = sync_trainer(loader_spec("sgd", "lambda"), tmp_path / "a")
    a.step_now(5)
    # one new group per source group: each keeps its own lambda
    assert a.apply_now("split everything features classifier").ok
    assert a.apply_now("split f features.0").ok  # from 'everything': group 0's lambda
    assert a.apply_now(f"checkpoint {tmp_path / 'ck.pt'}").ok
    a.step_now(20)
    b = sync_trainer(loader_spec("sgd", "lambda"), resume=tmp_path / "ck.pt")
    lambdas = a.scheduler.lr_lambdas
    assert b.group_origin == a.group_origin == [0, 1, 0]
    assert len(b.scheduler.lr_lambdas) == len(lambdas) == 3
    assert lambdas[0] is lambdas[2] is not lambdas[1]
    b.step_now(20)
    assert_same_run(a, b)


@pytest.mark.subprocess
def test_headless_resume_cli_is_bit_for_bit(tmp_path):
    """tuiconsole run --max-steps 100, then --resume to 200 == one run to 200 (subprocesses)."""
    script = write_script(
        tmp_path,
        """
        import torch
        from torch import nn
        g = torch.Generator().manual_seed(3)
        X = torch.randn(280, 8, generator=g)  # 9 batches/epoch: step 100 is mid-epoch
        y = (X[:, 0] + X[:, 1] > 0).long()
        model = nn.Sequential(
            nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Dropout(0.2),
            nn.Linear(32, 2))
        optimizer = torch.optim.SGD(
            [{"params": [*model[0].parameters(), *model[2].parameters()]},
             {"params": model[5].parameters(), "lr": 0.05}],
            lr=0.01, momentum=0.9)
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=30, gamma=0.7)
        scheduler_interval = "step"
        criterion = nn.CrossEntropyLoss()
        train_loader = torch.utils.data.DataLoader(
            torch.utils.data.TensorDataset(X, y), batch_size=32, shuffle=True)
        epochs = 1000
        """,
    )
    journal = tmp_path / "commands.jsonl"
    journal.write_text(
        "\n".join(
            json.dumps(r)
            for r in [
                {"type": "header", "version": 1},
                {"type": "command", "step": 30, "cmd": "split mid 2 lr=0.02", "ok": True},
                {"type": "command", "step": 50, "cmd": "lr group0 *3", "ok": True},
            ]
        )
        + "\n"
    )

    def run(*args):
        return subprocess.Popen(
            [sys.executable, "-m", "tuiconsole", "run", str(script), "--headless", "--no-listen"]
            + list(args),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=cli_env(),
        )

    full = run("--max-steps", "200", "--replay", str(journal), "--run-dir", str(tmp_path / "full"))
    half = run("--max-steps", "100", "--replay", str(journal), "--run-dir", str(tmp_path / "half"))
    assert half.wait(120) == 0, half.stdout.read()
    rest = run(
        "--resume",
        str(tmp_path / "half" / "checkpoint-step100.pt"),
        "--max-steps",
        "200",
        "--run-dir",
        str(tmp_path / "rest"),
    )
    assert full.wait(120) == 0, full.stdout.read()
    out = rest.stdout.read()
    assert rest.wait(120) == 0, out
    assert "resumed from" in out and "at step 100, 1 batch(es) into epoch 12" in out
    a = load_checkpoint(tmp_path / "full" / "checkpoint-step200.pt")
    b = load_checkpoint(tmp_path / "rest" / "checkpoint-step200.pt")
    assert_same(a["model"], b["model"])
    assert_same(a["optimizer"], b["optimizer"])
    assert_same(a["scheduler"], b["scheduler"])
    assert a["groups"] == b["groups"] and len(a["groups"]) == 3


def run_main(monkeypatch, capsys, *args):
    monkeypatch.setattr(sys, "argv", ["tuiconsole", *args])
    with pytest.raises(SystemExit) as ex:
        main()
    return ex.value.code, capsys.readouterr().err


def test_bad_resume_exits_2_with_one_line(tmp_path, monkeypatch, capsys):
    from tests.reliability.helpers import ROOT

    tiny = str(ROOT / "tests" / "e2e" / "scripts" / "tiny.py")
    junk = tmp_path / "junk.pt"
    junk.write_text("not a checkpoint")
    foreign = tmp_path / "foreign.pt"
    t = sync_trainer(loader_spec(), tmp_path / "x")
    t.apply_now(f"checkpoint {foreign}")
    t.close()
    cases = [
        (tmp_path / "missing.pt", "no such checkpoint file"),
        (junk, "not a readable tuiconsole checkpoint"),
        (foreign, "the checkpoint does not fit the script's model"),
    ]
    for path, fragment in cases:
        code, err = run_main(
            monkeypatch, capsys, "run", tiny, "--headless", "--no-listen", "--resume", str(path)
        )
        assert code == 2 and fragment in err and err.count("\n") == 1, err


def test_resume_refuses_what_does_not_fit(tmp_path):
    a = sync_trainer(loader_spec("sgd", "lambda"), tmp_path / "a")
    a.step_now(3)
    a.apply_now(f"checkpoint {tmp_path / 'ck.pt'}")
    a.close()
    with pytest.raises(TuiconsoleError, match="has scheduler but the script does not"):
        Trainer(loader_spec("sgd", None), RunConfig(resume=tmp_path / "ck.pt"))
    with pytest.raises(TuiconsoleError, match="scheduler is LambdaLR, the script's is StepLR"):
        Trainer(loader_spec("sgd", "step"), RunConfig(resume=tmp_path / "ck.pt"))
    with pytest.raises(TuiconsoleError, match="the journal starts at step 0 but the checkpoint"):
        Trainer(
            loader_spec("sgd", "lambda"),
            RunConfig(resume=tmp_path / "ck.pt", replay=tmp_path / "a" / "journal.jsonl"),
        )


def test_resumed_run_journal_replays_with_its_checkpoint(tmp_path):
    a = sync_trainer(loader_spec("sgd", "step"), tmp_path / "a")
    a.step_now(10)
    a.apply_now(f"checkpoint {tmp_path / 'ck.pt'}")
    a.close()
    b = sync_trainer(loader_spec("sgd", "step"), tmp_path / "b", resume=tmp_path / "ck.pt")
    b.step_now(5)
    assert b.apply_now("lr classifier 0.004").ok
    b.step_now(5)
    b.close()
    c = sync_trainer(
        loader_spec("sgd", "step"),
        resume=tmp_path / "ck.pt",
        replay=tmp_path / "b" / "journal.jsonl",
    )
    c.step_now(10)
    assert c.state == RunState.RUNNING
    assert_same(weights(b.model), weights(c.model))


def test_resuming_a_finished_run_trains_only_the_epochs_asked_for(tmp_path):
    a = sync_trainer(loader_spec(), tmp_path / "a", epochs=2)
    a.step_now(1000)
    assert a.state == RunState.FINISHED and (a.epoch, a.step) == (2, 22)
    a.close()
    final = tmp_path / "a" / "checkpoint-step22.pt"
    same = sync_trainer(loader_spec(), resume=final, epochs=2)
    same.step_now(1000)
    assert same.state == RunState.FINISHED and same.step == 22
    more = sync_trainer(loader_spec(), resume=final, epochs=3)
    more.step_now(1000)
    assert more.state == RunState.FINISHED and (more.epoch, more.step) == (3, 33)
    straight = sync_trainer(loader_spec(), epochs=3)
    straight.step_now(1000)
    assert_same_run(straight, more)


def test_relative_checkpoint_path_goes_into_the_run_dir(tmp_path):
    t = sync_trainer(loader_spec(), tmp_path / "run")
    t.step_now(2)
    r = t.apply_now("checkpoint best.pt")
    assert r.ok and (tmp_path / "run" / "best.pt").is_file()
    assert t._build_snapshot().status.checkpoint == str(tmp_path / "run" / "best.pt")
    t.close()


@pytest.mark.subprocess
def test_resume_into_the_same_run_dir_replays_each_session_exactly(tmp_path):
    """`--resume` into the run dir appends a second session to journal.jsonl. The
    replay used to re-apply the first session's commands and its stop too (the lr
    halved once too often, the run ended at step 40, exit 0)."""
    from tests.e2e.test_headless_cli import ONE_GROUP
    from tests.reliability.helpers import cli

    script = write_script(tmp_path, ONE_GROUP)
    run = tmp_path / "run"

    def tui(*args: str, stdin: str | None = None) -> str:
        r = cli("run", str(script), "--headless", *args, stdin=stdin)
        assert r.returncode == 0, r.stdout + r.stderr
        return r.stdout

    first = ["--max-steps", "40", "--run-dir", str(run)]
    tui(*first, "--paused", stdin="decay 0.5\nresume\n")
    ck40 = run / "checkpoint-step40.pt"
    second = ["--resume", str(ck40), "--max-steps", "80", "--run-dir", str(run)]
    tui(*second, "--paused", stdin="lr all /2\nresume\n")
    headers = [r for r in jsonl(run / "journal.jsonl") if r["type"] == "header"]
    assert [h.get("resumed_step") for h in headers] == [None, 40]
    journal = str(run / "journal.jsonl")

    with ThreadPoolExecutor(2) as pool:  # the two replays are independent: side by side
        second_replay = pool.submit(tui, "--replay", journal, "--resume", str(ck40),
                                    "--max-steps", "80", "--run-dir", str(tmp_path / "r2"))  # fmt: skip
        first_replay = pool.submit(tui, "--replay", journal, "--max-steps", "40",
                                   "--run-dir", str(tmp_path / "r1"))  # fmt: skip
        out = second_replay.result()
        first_replay.result()
    assert "(session 2, journal line 6)" in out
    assert "finished at step 80" in out  # not "stopped": the closing stop is not replayed
    assert_same_checkpoint(run / "checkpoint-step80.pt", tmp_path / "r2" / "checkpoint-step80.pt")
    lr = load_checkpoint(tmp_path / "r2" / "checkpoint-step80.pt")["optimizer"]["param_groups"][0][
        "lr"
    ]
    assert lr == 0.02 * 0.5 / 2  # halved twice, not three times
    assert_same_checkpoint(ck40, tmp_path / "r1" / "checkpoint-step40.pt")


def assert_same_checkpoint(a_path, b_path) -> None:
    a, b = load_checkpoint(a_path), load_checkpoint(b_path)
    assert a["step"] == b["step"]
    assert_same(a["model"], b["model"])
    assert_same(a["optimizer"], b["optimizer"])
    assert a["groups"] == b["groups"]


def test_a_session_resumed_from_an_earlier_checkpoint_replays_with_it(tmp_path):
    """Sessions in one journal may go back in steps (resume from an earlier
    checkpoint): each one replays on its own, picked by the checkpoint's step."""
    run = tmp_path / "run"
    a = sync_trainer(loader_spec("sgd", "step"), run)
    a.step_now(10)
    assert a.apply_now(f"checkpoint {tmp_path / 'ck10.pt'}").ok
    a.apply_now("lr classifier 0.5")
    a.step_now(20)
    a.close()
    b = sync_trainer(loader_spec("sgd", "step"), run, resume=tmp_path / "ck10.pt")
    b.step_now(3)
    assert b.apply_now("decay 0.1 features").ok
    b.step_now(5)
    b.close()
    c = sync_trainer(
        loader_spec("sgd", "step"), resume=tmp_path / "ck10.pt", replay=run / "journal.jsonl"
    )
    c.step_now(8)
    assert c.step == b.step == 18 and c.state == RunState.RUNNING
    assert_same(weights(b.model), weights(c.model))
    assert_same(optimizer_sd(b.optimizer), optimizer_sd(c.optimizer))
    d = sync_trainer(loader_spec("sgd", "step"), replay=run / "journal.jsonl")
    d.step_now(30)
    assert d.step == a.step == 30
    assert_same(weights(a.model), weights(d.model))
    with pytest.raises(TuiconsoleError, match="no session of this journal starts at step 30"):
        Trainer(
            loader_spec("sgd", "step"),
            RunConfig(resume=run / "checkpoint-step30.pt", replay=run / "journal.jsonl"),
        )
