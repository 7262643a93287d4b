"""Signals at random moments: real `tuiconsole run --headless` subprocesses get
SIGINT/SIGTERM (sometimes two) while starting, loading, training, finishing or
writing the final checkpoint; the journal and checkpoints must stay intact.

    python -m tests.reliability.test_random_signals 100   # the README's figure

A run "survives" when the process exits by itself with a documented code, every
journal line is whole JSON starting with a header, an `end` record names a
checkpoint that loads at that step (or says which step did not finish), and no
traceback is printed. The only documented way to end without an `end` record
is the second Ctrl+C ("exits at once").
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.reliability.helpers import SLOW_SCRIPT, cli_env

pytestmark = pytest.mark.subprocess

EXPECTED_CODES = {0, 130, 143}


@dataclass
class Outcome:
    seed: int
    plan: str
    code: int | None
    problems: list[str]

    @property
    def survived(self) -> bool:
        return not self.problems


def _signals(rng: random.Random) -> list[tuple[float, int]]:
    """When (seconds after the moment picked) and which signals to send."""
    first = rng.choice([signal.SIGINT, signal.SIGTERM])
    sends = [(0.0, first)]
    if rng.random() < 0.3:
        sends.append((rng.uniform(0.0, 0.3), rng.choice([signal.SIGINT, signal.SIGTERM])))
    return sends


def one_run(seed: int, folder: Path) -> Outcome:
    rng = random.Random(seed)
    run_dir = folder / f"run{seed}"
    script = folder / "slow.py"
    phase = rng.choice(["startup", "training", "training"])
    delay = rng.uniform(0.0, 2.5 if phase == "startup" else 1.2)
    sends = _signals(rng)
    plan = f"{phase}+{delay:.2f}s " + ",".join(
        f"{signal.Signals(s).name}@{t:.2f}" for t, s in sends
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "tuiconsole", "run", str(script), "--headless", "--no-listen"]
        + ["--max-steps", "60", "--log-every", "10", "--run-dir", str(run_dir)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env() | {"TUICONSOLE_STOP_GRACE": "5"},
    )
    problems: list[str] = []
    try:
        assert proc.stdin is not None
        proc.stdin.write("decay 0.9\nlr all *1.1\n")
        proc.stdin.flush()
        if phase == "training":  # from the first journal line on
            deadline = time.monotonic() + 120
            while not (run_dir / "journal.jsonl").exists() and proc.poll() is None:
                if time.monotonic() > deadline:
                    problems.append("no journal after 120 s")
                    break
                time.sleep(0.01)
        time.sleep(delay)  # the random moment (this is the experiment, not a wait)
        start = time.monotonic()
        for at, sig in sends:
            time.sleep(max(0.0, start + at - time.monotonic()))
            if proc.poll() is None:
                proc.send_signal(sig)
        try:
            out, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            problems.append("hung: still running 60 s after the signal")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    code = proc.returncode
    second_ctrl_c = "second Ctrl+C, exiting now" in err
    early = code in (-signal.SIGINT, -signal.SIGTERM) or (
        code == 130 and "interrupted while loading" in err
    )
    if code not in EXPECTED_CODES and not early:
        problems.append(f"exit code {code}")
    if "Traceback" in out + err and not (early and not run_dir.exists()):
        problems.append("traceback: " + (out + err)[-300:])
    problems += check_run_dir(run_dir, allow_no_end=second_ctrl_c or early)
    return Outcome(seed, plan, code, problems)


def check_run_dir(run_dir: Path, allow_no_end: bool) -> list[str]:
    from tuiconsole.engine.checkpoint import load_checkpoint

    journal = run_dir / "journal.jsonl"
    if not journal.exists():
        return []  # stopped before the run dir was made: nothing to lose
    problems = []
    try:
        recs = [json.loads(x) for x in journal.read_text().splitlines()]
    except json.JSONDecodeError as exc:
        return [f"journal line is not whole JSON: {exc}"]
    if not recs or recs[0].get("type") != "header":
        problems.append("journal does not start with a header")
    ends = [r for r in recs if r.get("type") == "end"]
    if not ends and not allow_no_end:
        problems.append("no end record")
    for end in ends:
        ckpt = end.get("checkpoint")
        if ckpt:
            try:
                got = load_checkpoint(Path(ckpt))
            except Exception as exc:  # noqa: BLE001 - any failure to load is the finding
                problems.append(f"final checkpoint does not load: {exc}")
            else:
                if got["step"] != end["step"]:
                    problems.append(f"checkpoint step {got['step']} != end step {end['step']}")
        elif end.get("state") != "ERROR" and "unfinished" not in end:
            problems.append(f"end record without checkpoint: {end}")
    if not allow_no_end:
        leftovers = [p.name for p in run_dir.glob("*.tmp")]
        if leftovers:
            problems.append(f"temp files left: {leftovers}")
    return problems


def survey(n: int, folder: Path, first_seed: int = 0, workers: int = 3) -> list[Outcome]:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "slow.py").write_text(SLOW_SCRIPT)
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(lambda s: one_run(s, folder), range(first_seed, first_seed + n)))


def test_signals_at_random_moments_leave_journal_and_checkpoint_intact(tmp_path):
    outcomes = survey(4, tmp_path)
    lost = [o for o in outcomes if not o.survived]
    assert not lost, lost


if __name__ == "__main__":
    import tempfile

    n = int(sys.argv[1]) if len(sys.argv) > 1 else 50
    with tempfile.TemporaryDirectory() as tmp:
        results = survey(n, Path(tmp), first_seed=int(sys.argv[2]) if len(sys.argv) > 2 else 0)
    by_code: dict[int | None, int] = {}
    for o in results:
        by_code[o.code] = by_code.get(o.code, 0) + 1
        if not o.survived:
            print(f"LOST seed {o.seed} ({o.plan}) exit {o.code}: {o.problems}")
    ok = sum(o.survived for o in results)
    print(f"signals at random moments: {ok}/{len(results)} runs survived; exit codes {by_code}")
