"""Whole-process training rate: what a user gets from `tuiconsole run`, vs a bare loop.

    python -m benchmarks.process [--model mlp|vgg|both] [--rounds 5] [--threads both|default|1]

Every variant is a process of its own, started as a user starts it, and they are
interleaved (bare, variant, bare, variant, ...); the figure is the variant's steps/s
over the mean of the bare runs just before and after it:

- bare loop: ``python benchmarks/bare_loop.py SCRIPT`` runs the script (same seed) and
  then the plain loop ``zero_grad; criterion(model(x), y).backward(); step`` in its
  main thread;
- headless: ``tuiconsole run SCRIPT --headless --max-steps N`` (attachable, as by default);
- console: ``tuiconsole run SCRIPT --max-steps N`` in a 120x40 pseudo-terminal: the
  Textual console in its own process, a client of the training process's socket.

The rate of each is taken over the same steps, from step 50 to step N: the bare loop
times them itself, the engine's from the ``time`` of its metrics.jsonl records (one every
50 steps), so start-up (imports, building the dataset) is not in it. "default" leaves
torch's thread count alone (what a user gets: one OpenMP thread per core); "1" sets
OMP_NUM_THREADS=1 for every process.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pty
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from benchmarks.common import Row, interleaved_ratios, print_table, save, summarize

ROOT = Path(__file__).resolve().parent.parent
FIRST = 50  # the first metrics record: the window starts there (warm, past start-up)
TIMEOUT = 600.0


def env_for(threads: str) -> dict[str, str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("OMP_NUM_THREADS", None)
    if threads == "1":
        env["OMP_NUM_THREADS"] = "1"
    runtime = tempfile.mkdtemp(prefix="tcbench-", dir="/tmp")  # its own: no stale runs
    env["TUICONSOLE_RUNTIME_DIR"] = runtime
    return env


def bare(script: Path, steps: int, threads: str) -> float:
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bare_loop.py"), str(script), str(steps)],
        env=env_for(threads),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=True,
    )
    return float(json.loads(out.stdout.strip().splitlines()[-1])["rate"])


def metrics_rate(run_dir: Path, steps: int) -> float:
    """steps/s from the first metrics record at step FIRST to the first at ``steps``."""
    times: dict[int, float] = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if rec.get("type") == "train" and rec["step"] not in times:
            times[rec["step"]] = rec["time"]
    return (steps - FIRST) / (times[steps] - times[FIRST])


def has_step(run_dir: Path, steps: int) -> bool:
    with contextlib.suppress(OSError):
        text = (run_dir / "metrics.jsonl").read_text()
        return f'"step": {steps},' in text
    return False


def headless(script: Path, steps: int, threads: str) -> float:
    with tempfile.TemporaryDirectory() as d:
        run_dir = Path(d) / "run"
        subprocess.run(
            [sys.executable, "-m", "tuiconsole", "run", str(script), "--headless"]
            + ["--max-steps", str(steps), "--run-dir", str(run_dir)],
            env=env_for(threads),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=TIMEOUT,
            check=True,
        )
        return metrics_rate(run_dir, steps)


def console(script: Path, steps: int, threads: str) -> float:
    """The real console in a pty; the run's rate while the console draws it."""
    import fcntl
    import struct
    import termios

    with tempfile.TemporaryDirectory() as d:
        run_dir = Path(d) / "run"
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
        proc = subprocess.Popen(
            [sys.executable, "-m", "tuiconsole", "run", str(script)]
            + ["--max-steps", str(steps), "--run-dir", str(run_dir)],
            env={**env_for(threads), "TERM": "xterm-256color"},
            stdin=slave,
            stdout=slave,
            stderr=slave,
            start_new_session=True,
        )
        os.close(slave)

        def drain() -> None:  # a terminal reads what the console draws
            with contextlib.suppress(OSError):
                while os.read(master, 65536):
                    pass

        threading.Thread(target=drain, daemon=True).start()
        try:
            deadline = time.monotonic() + TIMEOUT
            while not has_step(run_dir, steps):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the console run ended early ({proc.returncode})")
                time.sleep(0.2)
            proc.terminate()  # SIGTERM: stops cleanly, as a user's Ctrl+C would
            proc.wait(60)
        finally:
            if proc.poll() is None:
                proc.kill()
            with contextlib.suppress(OSError):
                os.close(master)
        return metrics_rate(run_dir, steps)


def measure(script: Path, steps: int, rounds: int, threads: str) -> list[Row]:
    variants = {
        "headless": lambda: headless(script, steps, threads),
        "console attached": lambda: console(script, steps, threads),
    }
    ratios = interleaved_ratios(lambda: bare(script, steps, threads), variants, rounds, warmup=0)
    rows = []
    for name, rs in ratios.items():
        median, spread = summarize(rs)
        limit = 0.99 if name == "headless" else 0.98
        target = f">= {limit:.3f} (<= {round((1 - limit) * 100)}% slower)"
        label = f"{script.stem}, {threads} thread{'s' if threads != '1' else ''}: {name}"
        rows.append(Row(label, median, "x bare", spread, target, median >= limit))
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", choices=["mlp", "vgg", "both"], default="both")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", choices=["both", "default", "1"], default="both")
    args = ap.parse_args(argv)
    models = ["mlp", "vgg"] if args.model == "both" else [args.model]
    settings = ["default", "1"] if args.threads == "both" else [args.threads]
    rows: list[Row] = []
    for model in models:
        steps = 3000 if model == "mlp" else 200
        for threads in settings:
            rows += measure(ROOT / "sample_models" / f"{model}.py", steps, args.rounds, threads)
    print_table(f"Whole process vs a bare loop (median of {args.rounds} interleaved rounds)", rows)
    save("process", rows, {"rounds": args.rounds, "cores": os.cpu_count()})
    return 0 if all(r.passed is not False for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
