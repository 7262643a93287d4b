"""The run's files on a hostile disk: full (a 2 MiB tmpfs), read-only, a run dir
another user controls, planted symlinks, checkpoint paths that name the run's own
files, leftover temp files, and damaged checkpoints (digest, fields, RNG).

The disk tests mount a real tmpfs (they need root, and skip without it)."""

from __future__ import annotations

import os
import random
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.reliability.helpers import ROOT, cli_env, finish, jsonl, loader_spec, sync_trainer
from tests.unit.models import make_spec
from tuiconsole.cli import main
from tuiconsole.engine.checkpoint import (
    DIGEST_MARK,
    TRAILER_LEN,
    load_checkpoint,
    write_checkpoint_file,
)
from tuiconsole.engine.rundir import TEMP_PREFIX
from tuiconsole.engine.snapshot import RunState
from tuiconsole.engine.trainer import RunConfig, Trainer
from tuiconsole.errors import TuiconsoleError

TINY = str(ROOT / "tests" / "e2e" / "scripts" / "tiny.py")
OTHER_UID = 54321


# --------------------------------------------------------------------------- helpers


def _mount(target: Path, options: str) -> None:
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(target)],
        capture_output=True,
        text=True,
    )
    if r.returncode != 0:
        pytest.skip(f"needs root and tmpfs mounts: {r.stderr.strip()}")


@pytest.fixture
def small_disk(tmp_path):
    """A real 2 MiB filesystem."""
    disk = tmp_path / "disk"
    disk.mkdir()
    _mount(disk, "size=2m,mode=0700")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=False)


def fill(disk: Path) -> None:
    """Write a filler file until the disk says ENOSPC."""
    fd = os.open(disk / "filler", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for size in (1 << 16, 4096, 1):
            block = b"\0" * size
            try:
                while True:
                    os.write(fd, block)
            except OSError:
                pass
    finally:
        os.close(fd)


def temp_files(*folders: Path) -> list[str]:
    return [
        p.name
        for f in folders
        if f.is_dir()
        for p in f.iterdir()
        if p.name.endswith(".tmp") or p.name.startswith(TEMP_PREFIX)
    ]


def popen_run(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "tuiconsole", "run", TINY, "--headless", "--no-listen", *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(),
    )


def wait_for_header(proc: subprocess.Popen, journal: Path) -> None:
    """Until the journal has its header (the run is set up), or the process ended."""
    import time

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if journal.exists() and journal.read_bytes().endswith(b"\n"):
            return
        time.sleep(0.02)
    raise AssertionError(f"no journal header in {journal}: {proc.poll()}")


def run_main(monkeypatch, capsys, *args: str) -> tuple[int, str]:
    monkeypatch.setattr(sys, "argv", ["tuiconsole", *args])
    with pytest.raises(SystemExit) as ex:
        main()
    return ex.value.code, capsys.readouterr().err


# --------------------------------------------------------------------------- full disk


@pytest.mark.subprocess
def test_a_disk_full_mid_run_ends_it_cleanly_with_one_line(small_disk):
    """The journal's ENOSPC used to be raised again in the failure and finish
    paths: the trainer thread died, the run never ended, only kill -9 worked."""
    run_dir = small_disk / "run"
    proc = popen_run("--paused", "--run-dir", str(run_dir))
    try:
        wait_for_header(proc, run_dir / "journal.jsonl")
        fill(small_disk)
        proc.stdin.write("lr all *1.01\n" * 60)  # ~30 KB of journal lines: past its page
        proc.stdin.flush()
        code, out, err = finish(proc)
    finally:
        proc.kill()
    last = out.strip().splitlines()[-1]
    assert code == 1, (out, err)
    assert last.startswith("training failed: StorageError at step 0: cannot write the journal")
    assert "disk full" in last and "kept: the journal up to its last whole line" in last, last
    assert "Traceback" not in err and "OSError" not in out + err
    records = jsonl(run_dir / "journal.jsonl")  # whole lines only, header first
    assert records[0]["type"] == "header" and all(r["type"] == "command" for r in records[1:])
    assert temp_files(run_dir) == []


@pytest.mark.subprocess
def test_sigterm_on_a_full_disk_still_stops_and_says_disk_full(small_disk):
    run_dir = small_disk / "run"
    proc = popen_run("--paused", "--run-dir", str(run_dir))
    try:
        wait_for_header(proc, run_dir / "journal.jsonl")
        fill(small_disk)
        proc.send_signal(signal.SIGTERM)
        code, out, err = finish(proc)
    finally:
        proc.kill()
    assert code == 1, (out, err)
    assert "enforce fail" not in out + err
    assert "cannot write checkpoint" in out and "disk full (the partial file was removed)" in out
    last = out.strip().splitlines()[-1]
    assert last.startswith("training failed: StorageError at step 0: disk full: could not write")
    assert "kept: journal through step 0, no checkpoint" in last, last
    assert temp_files(run_dir) == []
    assert jsonl(run_dir / "journal.jsonl")[-1]["type"] == "end"


@pytest.mark.subprocess  # small_disk mounts a tmpfs
def test_a_failed_torch_save_says_disk_full_and_leaves_no_temp_file(tmp_path, small_disk):
    t = sync_trainer(make_spec(), tmp_path / "run")
    t.step_now(3)
    fill(small_disk)
    result = t.apply_now(f"checkpoint {small_disk / 'ck.pt'}")
    assert not result.ok
    assert result.message == (
        f"cannot write checkpoint {small_disk / 'ck.pt'}: disk full (the partial file was removed)"
    )
    assert temp_files(small_disk, tmp_path / "run") == []
    t.step_now(2)  # nothing was lost: the run goes on
    assert t.step == 5 and t.state == RunState.RUNNING
    t.close()


@pytest.mark.subprocess
def test_a_read_only_run_dir_says_so(tmp_path, monkeypatch, capsys):
    disk = tmp_path / "ro"
    disk.mkdir()
    _mount(disk, "size=1m,mode=0700")
    try:
        (disk / "run").mkdir(mode=0o700)
        r = subprocess.run(["mount", "-o", "remount,ro", str(disk)], capture_output=True)
        assert r.returncode == 0, r.stderr
        code, err = run_main(
            monkeypatch, capsys, "run", TINY, "--headless", "--no-listen",
            "--run-dir", str(disk / "run"),
        )  # fmt: skip
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)
    assert code == 2
    assert err == f"tuiconsole: cannot write the journal in {disk / 'run'}: read-only\n"


# --------------------------------------------------------------------------- checkpoint paths


@pytest.mark.parametrize(
    "arg, fragment",
    [
        ("journal.jsonl", "is the run's own journal.jsonl"),
        ("metrics.jsonl", "is the run's own metrics.jsonl"),
        ("./journal.jsonl", "is the run's own journal.jsonl"),
        (".", "names a directory"),
        ("somedir/", "names a directory"),
        ("somedir", "is a directory"),
        ("../outside.pt", "leaves the run dir"),
        ("sub/../../outside.pt", "leaves the run dir"),
    ],
)
def test_checkpoint_refuses_the_runs_own_files_directories_and_outside(tmp_path, arg, fragment):
    run_dir = tmp_path / "run"
    t = sync_trainer(make_spec(), run_dir)
    (run_dir / "somedir").mkdir()
    t.step_now(2)
    before = (run_dir / "journal.jsonl").read_bytes()
    result = t.apply_now(f"checkpoint {arg}")
    assert not result.ok and fragment in result.message, result.message
    t.apply_now("lr all *0.5")
    t.close()
    records = jsonl(run_dir / "journal.jsonl")  # still the journal, and still appended to
    assert (run_dir / "journal.jsonl").read_bytes().startswith(before)
    assert [r["cmd"] for r in records if r["type"] == "command"][-2:] == [
        f"checkpoint {arg}",
        "lr all *0.5",
    ]
    assert records[-1]["type"] == "end"
    assert jsonl(run_dir / "metrics.jsonl")
    assert temp_files(tmp_path, run_dir, run_dir / "somedir") == []
    assert not (tmp_path / "outside.pt").exists()


def test_checkpoint_to_an_absolute_path_only_in_a_directory_of_yours(tmp_path):
    t = sync_trainer(make_spec(), tmp_path / "run")
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    os.chown(theirs, OTHER_UID, OTHER_UID)
    result = t.apply_now(f"checkpoint {theirs / 'ck.pt'}")
    assert not result.ok and f"uid {OTHER_UID}" in result.message, result.message
    assert list(theirs.iterdir()) == []
    mine = tmp_path / "mine" / "new"
    assert t.apply_now(f"checkpoint {mine / 'ck.pt'}").ok  # missing folders made, 0700
    assert stat.S_IMODE((mine / "ck.pt").stat().st_mode) == 0o600
    t.close()


def test_a_symlink_at_the_checkpoint_path_is_replaced_not_followed(tmp_path):
    run_dir = tmp_path / "run"
    t = sync_trainer(make_spec(), run_dir)
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (run_dir / "ck.pt").symlink_to(victim)
    (run_dir / "checkpoint-step0.pt.tmp").symlink_to(victim)  # the old predictable temp name
    assert t.apply_now("checkpoint ck.pt").ok
    assert t.apply_now("checkpoint").ok
    t.close()
    assert victim.read_text() == "precious"
    assert not (run_dir / "ck.pt").is_symlink()
    assert load_checkpoint(run_dir / "ck.pt")["step"] == 0


def test_leftover_temp_files_are_removed_at_the_next_start(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir(mode=0o700)
    stale = ["checkpoint-step40.pt.tmp", f"{TEMP_PREFIX}checkpoint-step7.pt.k2j4l9x"]
    kept = ["checkpoint-step40.pt", "notes.tmp", "mine.pt.tmp"]
    for name in stale + kept:
        (run_dir / name).write_bytes(b"x" * 1000)
    t = sync_trainer(make_spec(), run_dir)
    t.close()
    names = {p.name for p in run_dir.iterdir()}
    assert not names & set(stale)
    assert set(kept) <= names


# --------------------------------------------------------------------------- other users


def test_a_run_dir_of_another_user_is_refused_and_its_planted_links_untouched(
    tmp_path, monkeypatch, capsys
):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    run_dir = tmp_path / "shared-run"
    run_dir.mkdir()
    (run_dir / "journal.jsonl").symlink_to(victim)
    os.chown(run_dir, OTHER_UID, OTHER_UID)
    code, err = run_main(
        monkeypatch, capsys, "run", TINY, "--headless", "--no-listen", "--run-dir", str(run_dir)
    )
    assert code == 2 and err.count("\n") == 1
    assert f"refusing run dir {run_dir}: it is owned by uid {OTHER_UID}" in err
    assert victim.read_text() == "precious"


def test_a_run_dir_others_can_write_in_is_refused(tmp_path):
    run_dir = tmp_path / "open"
    run_dir.mkdir()
    run_dir.chmod(0o777)
    with pytest.raises(TuiconsoleError, match=r"other users can write in it \(mode 0777\)"):
        Trainer(make_spec(), RunConfig(run_dir=run_dir)).start()
    assert list(run_dir.iterdir()) == []


def test_a_symlink_planted_as_the_journal_is_not_followed(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir(mode=0o700)
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (run_dir / "journal.jsonl").symlink_to(victim)
    with pytest.raises(TuiconsoleError, match="refusing to write the journal .* not a regular"):
        Trainer(make_spec(), RunConfig(run_dir=run_dir)).start()
    assert victim.read_text() == "precious"


def test_run_dirs_are_0700_and_their_files_0600(tmp_path):
    os.umask(0o022)
    run_dir = tmp_path / "runs" / "r"
    t = sync_trainer(make_spec(), run_dir)
    t.step_now(2)
    assert t.apply_now("checkpoint sub/ck.pt").ok
    t.close()
    assert stat.S_IMODE(run_dir.stat().st_mode) == 0o700
    files = [p for p in run_dir.rglob("*") if p.is_file()]
    assert {p.name for p in files} == {
        "journal.jsonl", "metrics.jsonl", "ck.pt", "checkpoint-step2.pt",
    }  # fmt: skip
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in files)


# --------------------------------------------------------------------------- damaged checkpoints


def _checkpoint(tmp_path: Path) -> Path:
    t = sync_trainer(loader_spec(), tmp_path / "a")
    t.step_now(30)
    assert t.apply_now(f"checkpoint {tmp_path / 'ck.pt'}").ok
    t.close()
    return tmp_path / "ck.pt"


def test_a_checkpoint_with_100_flipped_bytes_is_refused(tmp_path, monkeypatch, capsys):
    ckpt = _checkpoint(tmp_path)
    data = bytearray(ckpt.read_bytes())
    rnd = random.Random(0)
    for i in rnd.sample(range(len(data) - TRAILER_LEN), 100):
        data[i] ^= 0xFF
    ckpt.write_bytes(bytes(data))
    run_dir = tmp_path / "resumed"
    code, err = run_main(
        monkeypatch, capsys, "run", TINY, "--headless", "--no-listen",
        "--resume", str(ckpt), "--run-dir", str(run_dir),
    )  # fmt: skip
    assert code == 2 and err.count("\n") == 1, err
    assert f"{ckpt}: damaged checkpoint: its sha256 does not match" in err
    assert not run_dir.exists()


def test_one_flipped_byte_in_the_tensors_is_refused(tmp_path):
    ckpt = _checkpoint(tmp_path)
    data = bytearray(ckpt.read_bytes())
    data[len(data) // 2] ^= 0x01
    ckpt.write_bytes(bytes(data))
    with pytest.raises(TuiconsoleError, match="sha256 does not match"):
        load_checkpoint(ckpt)


def test_a_checkpoint_that_lost_its_digest_is_refused(tmp_path):
    ckpt = _checkpoint(tmp_path)
    ckpt.write_bytes(ckpt.read_bytes()[:-TRAILER_LEN])
    with pytest.raises(TuiconsoleError, match="its sha256 digest is missing"):
        load_checkpoint(ckpt)


def test_an_old_checkpoint_without_a_digest_loads_with_a_warning(tmp_path):
    ckpt = _checkpoint(tmp_path)
    payload = torch.load(ckpt, weights_only=True)
    del payload["digest"]
    torch.save(payload, ckpt)  # as tuiconsole wrote them before digests
    assert not ckpt.read_bytes().endswith(b"\n") or DIGEST_MARK not in ckpt.read_bytes()
    t = sync_trainer(loader_spec(), tmp_path / "b", resume=ckpt)
    assert t.step == 30
    log = [e.text for e in t._build_snapshot().log]
    assert any("has no digest" in x and "loaded anyway" in x for x in log), log
    t.step_now(3)
    assert t.step == 33
    t.close()


def _edit(ckpt: Path, edit) -> None:
    payload = torch.load(ckpt, weights_only=True)
    edit(payload)
    write_checkpoint_file(ckpt, payload)  # a valid digest: only the content is wrong


def _pop(key):
    return lambda p: p.pop(key)


def _set(key, value):
    return lambda p: p.__setitem__(key, value)


@pytest.mark.parametrize(
    "edit, fragment",
    [
        (_pop("step"), "'step' is missing, expected an int >= 0"),
        (_set("step", "30"), "'step' is str, expected an int >= 0"),
        (_set("epoch", -1), "'epoch' is int, expected an int >= 0"),
        (_pop("groups"), "'groups' is missing"),
        (_set("groups", [[1, 2]]), "'groups' is list, expected lists of parameter names"),
        (_set("model", {"w": 3}), "'model' is dict, expected a dict of tensors"),
        (_pop("rng"), "'rng' is missing"),
        (_set("optimizer_class", None), "'optimizer_class' is NoneType"),
        (_set("data", {"epoch_batches": "x"}), "'data' is dict"),
        (lambda p: p["optimizer"].pop("param_groups"), "'optimizer' is dict"),
        (
            lambda p: p["rng"].__setitem__("torch", torch.zeros(3, dtype=torch.uint8)),
            "bad RNG state in 'rng'",
        ),
        (lambda p: p["rng"].__setitem__("python", (3, (1, 2), None)), "bad RNG state in 'rng'"),
        (
            lambda p: p["data"]["epoch_rng"].__setitem__("torch", torch.zeros(2)),
            "bad RNG state in 'data.epoch_rng'",
        ),
        (lambda p: p["groups"].append(["net.0.weight"]), "group lists disagree"),
    ],
)
def test_bad_fields_in_a_checkpoint_are_one_line_before_the_run_dir_exists(
    tmp_path, edit, fragment
):
    ckpt = _checkpoint(tmp_path)
    _edit(ckpt, edit)
    run_dir = tmp_path / "resumed"
    with pytest.raises(TuiconsoleError) as info:
        Trainer(loader_spec(), RunConfig(run_dir=run_dir, resume=ckpt))
    message = str(info.value)
    assert message.startswith(f"{ckpt}: ") and fragment in message, message
    assert "\n" not in message
    assert not run_dir.exists()


def test_a_bad_checkpoint_field_exits_2_without_a_traceback(tmp_path, monkeypatch, capsys):
    t = sync_trainer(make_spec(), tmp_path / "a")  # any checkpoint: it fails before the model
    assert t.apply_now(f"checkpoint {tmp_path / 'ck.pt'}").ok
    t.close()
    _edit(tmp_path / "ck.pt", _set("step", 1.5))
    code, err = run_main(
        monkeypatch, capsys, "run", TINY, "--headless", "--no-listen",
        "--resume", str(tmp_path / "ck.pt"), "--run-dir", str(tmp_path / "r"),
    )  # fmt: skip
    assert code == 2 and err.count("\n") == 1 and "'step' is float" in err, err
