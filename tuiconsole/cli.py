"""The command line. Thin: parse options, build a Session, pick a front-end.

Nothing here imports torch at module level, so ``tuiconsole --help`` stays fast.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from tuiconsole.errors import TuiconsoleError
from tuiconsole.session import CatchSignals  # no torch: the seam's types only

if TYPE_CHECKING:
    from tuiconsole.remote.registry import RunInfo
    from tuiconsole.session import Session

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="A keyboard-driven terminal console for a live PyTorch training run.",
    pretty_exceptions_enable=False,
)


class NanMode(StrEnum):
    """What a NaN/Inf training loss does (see the README's "Failure behaviour")."""

    pause = "pause"
    stop = "stop"
    ignore = "ignore"


class AmpMode(StrEnum):
    """Mixed precision of the training step (engine/step.py)."""

    bf16 = "bf16"
    fp16 = "fp16"
    off = "off"


# Boolean options whose False is said too (--no-compile overrides a script's compile=True)
NEGATABLE = ("compile",)


@app.callback()
def _root() -> None:
    """tuiconsole: watch and steer a PyTorch training run from the terminal."""


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def run(
    ctx: typer.Context,
    script: Annotated[
        Path,
        typer.Argument(
            help="Training script: one following the script contract, or a program of its "
            "own calling tuiconsole.steer() (ARGS after it are its own)."
        ),
    ],
    headless: Annotated[
        bool, typer.Option(help="Plain progress lines instead of the console.")
    ] = False,
    max_steps: Annotated[int | None, typer.Option(min=1, help="Stop after N steps.")] = None,
    epochs: Annotated[int | None, typer.Option(min=1, help="Override the script's epochs.")] = None,
    device: Annotated[
        str | None, typer.Option(help="cpu, cuda, cuda:1 or auto (default: script's, else auto).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed set before the script runs.")] = 0,
    run_dir: Annotated[
        Path | None, typer.Option(help="Where journal/metrics go (default runs/<stem>-<time>).")
    ] = None,
    replay: Annotated[
        Path | None,
        typer.Option(
            help="Re-apply a journal's commands at the same steps (its file, or its run dir)."
        ),
    ] = None,
    log_every: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Log a metrics line every N steps (default: every 50 steps, at most one "
            "line a second in the log; metrics.jsonl gets every 50th).",
        ),
    ] = None,
    decay_factor: Annotated[float, typer.Option(help="Factor of the d/D decay keys.")] = 0.1,
    refresh_hz: Annotated[float, typer.Option(help="Console refresh rate.")] = 10.0,
    paused: Annotated[bool, typer.Option(help="Start paused (step 0).")] = False,
    resume: Annotated[
        Path | None,
        typer.Option(help="Continue from a checkpoint (model, optimizer groups, step, data)."),
    ] = None,
    nan: Annotated[
        NanMode | None,
        typer.Option(
            help="On a NaN/Inf loss: pause (NAN-PAUSED), stop (exit 1) or ignore. Default: "
            "pause; stop for --headless with stdin not a terminal (nobody to resume it)."
        ),
    ] = None,
    detach: Annotated[
        bool,
        typer.Option(
            help="Run in the background (survives the terminal); print its id and return."
        ),
    ] = False,
    listen: Annotated[
        bool,
        typer.Option(help="Serve the run on a private Unix socket so `tuiconsole attach` works."),
    ] = True,
    linger: Annotated[
        float,
        typer.Option(
            min=0, help="Seconds a finished background run stays attachable after the last client."
        ),
    ] = 300.0,
    amp: Annotated[
        AmpMode | None,
        typer.Option(
            help="Mixed precision: bf16, fp16 (with a GradScaler) or off (default: the "
            "script's `amp`, else off)."
        ),
    ] = None,
    grad_clip: Annotated[
        str | None,
        typer.Option(
            metavar="MAX_NORM",
            help="Clip the gradients' total norm to MAX_NORM, or off (default: the script's "
            "`grad_clip`); live: `clip MAX_NORM` / `clip off`.",
        ),
    ] = None,
    accumulate: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Micro-batches per optimizer step (default: the script's `accumulate`, "
            "else 1); live: `accumulate N`.",
        ),
    ] = None,
    compile_model: Annotated[
        bool | None,
        typer.Option(
            "--compile/--no-compile",
            help="torch.compile the model (default: the script's `compile`, else no).",
        ),
    ] = None,
    signal_every: Annotated[
        int | None,
        typer.Option(
            min=0,
            metavar="N",
            help="Measure the per-group signals (grad norm, update ratio, Adam step) every N "
            "optimizer steps; 0: off (default: K from a time budget, <= 0.5% of the steps).",
        ),
    ] = None,
    nproc_per_node: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Train on N ranks of this node through torchrun (DDP; gloo on the CPU, nccl "
            "on CUDA); rank 0 is the run the console shows.",
        ),
    ] = None,
    detached_child: Annotated[bool, typer.Option(hidden=True)] = False,
    run_id: Annotated[str | None, typer.Option(hidden=True)] = None,
    owner_fd: Annotated[int | None, typer.Option(hidden=True)] = None,
    owner_fifo: Annotated[Path | None, typer.Option(hidden=True)] = None,
) -> None:
    """Train SCRIPT and open the console on it (or --headless).

    The console runs in this process and imports no torch; SCRIPT loads and trains
    in the main thread of a training process beside it, which serves the run on a
    private Unix socket: the console is a client of it, as `tuiconsole attach` is.
    A SCRIPT that imports tuiconsole is that process's main program, with ARGS.
    """
    from tuiconsole.hosting import uses_library

    program = uses_library(script)
    script_args = list(ctx.args)
    if script_args and not program:
        raise TuiconsoleError(
            f"{script} follows the script contract and takes no arguments "
            f"(got {' '.join(script_args)}); run options go before or after it: "
            "tuiconsole run --help"
        )
    if program and epochs is not None:
        # a loop of its own counts its epochs: the option is the script's
        script_args += ["--epochs", str(epochs)]
        epochs = None
    from tuiconsole.engine.rundir import default_run_dir  # no torch

    run_dir = run_dir or default_run_dir(script.stem)
    options: dict[str, object] = {
        "max_steps": max_steps,
        "epochs": epochs,
        "device": device,
        "seed": seed,
        "replay": replay,
        "log_every": log_every,
        "decay_factor": decay_factor,
        "paused": paused,
        "resume": resume,
        "linger": linger,
        "amp": amp.value if amp is not None else None,
        "grad_clip": _grad_clip(grad_clip),
        "accumulate": accumulate,
        "compile": compile_model,
        "signal_every": signal_every,
    }
    rank = _torchrun_rank()
    if nproc_per_node is not None and rank is not None:
        raise TuiconsoleError("--nproc-per-node: this process is already a rank of torchrun")
    if detach and not detached_child:
        # nobody watches a background run's stdin; one attaches to resume it
        _start_detached(
            script,
            run_dir,
            script_args,
            **options,
            nan=nan.value if nan else "pause",
            nproc=nproc_per_node,
        )
        return
    use_console = (
        not detached_child
        and not headless
        and rank is None
        and sys.stdout.isatty()
        and sys.stdin.isatty()
    )
    if use_console:
        args = _child_args(**options, nan=nan.value if nan else "pause")  # a terminal: pause
        raise typer.Exit(
            _run_console(
                script, run_dir, args, decay_factor, refresh_hz, script_args, nproc_per_node
            )
        )
    if nproc_per_node is not None:  # --headless on N ranks: torchrun in this process's place
        _exec_torchrun(
            nproc_per_node,
            script,
            [*_child_args(**options, nan=nan.value if nan else None), "--headless"]
            + ([] if listen else ["--no-listen"])
            + ["--run-dir", str(run_dir.resolve())],
            script_args,
        )
    if not headless and not detached_child and not rank:
        why = "a rank of torchrun" if rank == 0 else "not a terminal"
        print(f"tuiconsole: {why}; running --headless", file=sys.stderr)
    owner = None
    owner_token = None
    if owner_fifo is not None and not rank:  # torchrun's ranks inherit no pipe: a FIFO
        owner_fd = _open_owner_fifo(owner_fifo)
    if owner_fd is not None:
        import os

        from tuiconsole.remote.detach import OwnerLink
        from tuiconsole.remote.launch import OWNER_TOKEN_ENV

        owner_token = os.environ.pop(OWNER_TOKEN_ENV, None)  # not for the script's children
        owner = OwnerLink(owner_fd).start()  # first: a console gone while loading ends us
    from tuiconsole.engine.trainer import DEFAULT_LOG_EVERY, DEFAULT_LOG_MIN_INTERVAL, RunConfig
    from tuiconsole.session import LocalSession

    config = RunConfig(
        run_dir=run_dir,
        max_steps=max_steps,
        epochs=epochs,
        device=device,
        seed=seed,
        log_every=log_every or DEFAULT_LOG_EVERY,
        log_min_interval=0.0 if log_every else DEFAULT_LOG_MIN_INTERVAL,
        replay=replay,
        start_paused=paused,
        resume=resume,
        nan=_nan_mode(nan, attachable=detached_child),
        amp=amp.value if amp is not None else None,
        grad_clip=_grad_clip(grad_clip),
        accumulate=accumulate,
        compile=compile_model,
        signal_every=signal_every,
    )
    from tuiconsole.hosting import ChildFront, Front, HeadlessFront, RankFront, leave_script_threads

    front: Front
    if rank:  # a rank of torchrun other than 0: it trains, rank 0 is the run
        front = RankFront()
    elif detached_child:
        front = ChildFront(
            script,
            run_dir,
            run_id,
            decay_factor=decay_factor,
            linger=linger,
            owner=owner,
            owner_token=owner_token,
        )
    else:
        front = HeadlessFront(script, run_dir, decay_factor=decay_factor, listen=listen)
    try:
        if program:
            from tuiconsole.hosting import run_program

            code = run_program(script, script_args, config, front)
        else:
            if rank is not None:  # before the script: it may ask torch.distributed its rank
                from tuiconsole.engine.distributed import join_from_env

                join_from_env(device)
            session = LocalSession.from_script(script, config)
            front.start(session)
            code = front.run(session.run)
    except KeyboardInterrupt:  # here, not in main(): Typer turns it into "Aborted!"
        print(
            f"tuiconsole: {script}: interrupted while loading the script; nothing written",
            file=sys.stderr,
        )
        raise typer.Exit(130) from None
    finally:
        if isinstance(front, HeadlessFront):
            front.abort()  # a run that never started: undo what its front did
    leave_script_threads(code)
    raise typer.Exit(code)


def _torchrun_rank() -> int | None:
    """This process's RANK when it is one of several torchrun started, else None."""
    import os

    try:
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            return int(os.environ["RANK"])
    except (KeyError, ValueError):
        raise TuiconsoleError("WORLD_SIZE is set but RANK is not a number: use torchrun") from None
    return None


def _exec_torchrun(nproc: int, script: Path, options: list[str], script_args: list[str]) -> None:
    """``run --nproc-per-node N --headless``: this process becomes torchrun's launcher
    (its signals and exit code are torchrun's), each rank ``tuiconsole run --headless``."""
    import os

    from tuiconsole.remote.launch import torchrun_command

    cmd = torchrun_command(nproc, [str(script.resolve()), *options], script_args)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(cmd[0], cmd)


def _open_owner_fifo(path: Path) -> int:
    """Rank 0's end of the console's owner FIFO (remote/launch.py), opened and unlinked."""
    import os

    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as exc:
        raise TuiconsoleError(f"cannot open the console's owner FIFO {path}: {exc}") from None
    os.set_blocking(fd, True)
    with contextlib.suppress(OSError):
        path.unlink()
    return fd


def _grad_clip(text: str | None) -> str | None:
    """--grad-clip: a finite max norm > 0, or off; checked here, before any process starts."""
    if text is None or text.lower() == "off":
        return None if text is None else "off"
    try:
        value = float(text)
    except ValueError:
        raise TuiconsoleError(f"--grad-clip must be a number > 0 or off, got {text!r}") from None
    if not 0 < value < float("inf"):
        raise TuiconsoleError(f"--grad-clip must be a finite number > 0, got {text!r}")
    return text


def _nan_mode(nan: NanMode | None, attachable: bool) -> str:
    """Pause on NaN where someone can resume: a terminal, or a detached run one attaches to."""
    if nan is not None:
        return nan.value
    interactive = sys.stdin is not None and not sys.stdin.closed and sys.stdin.isatty()
    return "pause" if interactive or attachable else "stop"


def _child_args(**options: object) -> list[str]:
    """The training process's command-line options (see remote/launch.py)."""
    args: list[str] = []
    for name, value in options.items():
        flag = "--" + name.replace("_", "-")
        if value is False and name in NEGATABLE:
            args.append("--no-" + flag[2:])
            continue
        if value is None or value is False:
            continue
        if value is True:
            args.append(flag)
        else:
            args += [flag, str(Path(value).resolve()) if isinstance(value, Path) else str(value)]
    return args


def _start_detached(
    script: Path, run_dir: Path, script_args: list[str], nproc: int | None, **options: object
) -> None:
    """The parent of `run --detach`: start the background process, report, return."""
    from tuiconsole.remote.detach import spawn_detached
    from tuiconsole.remote.registry import new_run_id

    info = spawn_detached(
        script.resolve(),
        run_dir.resolve(),
        new_run_id(),
        _child_args(**options),
        script_args,
        nproc=nproc,
    )
    print(info.id)
    print(
        f"tuiconsole: run {info.id} started in the background (pid {info.pid}); "
        f"attach: tuiconsole attach {info.id}; list: tuiconsole ls; output: {info.log}",
        file=sys.stderr,
    )


class ConsoleSignals(CatchSignals):
    """SIGINT, SIGTERM and SIGHUP of the console process (the run trains elsewhere).

    The handler only remembers the signal and asks the app to leave (Textual then
    restores the terminal); the stop itself goes to the run after the app is gone,
    with the signal as its source. A second SIGINT leaves at once: the training
    process, whose owner pipe closes with us, still stops cleanly.
    """

    second_ctrl_c = b"tuiconsole: second Ctrl+C, leaving now (the run stops itself)\n"

    def __init__(self, leave: Callable[[int], None]) -> None:
        super().__init__(leave)
        self.stuck: str | None = None  # what the training process gave up on, if anything

    @property
    def unfinished(self) -> str | None:
        return self.stuck


def _run_console(
    script: Path,
    run_dir: Path,
    args: list[str],
    decay_factor: float,
    refresh_hz: float,
    script_args: list[str],
    nproc: int | None = None,
) -> int:
    """The console in this process, the run in a training process it starts beside it
    (``nproc``: torchrun's launcher, whose rank 0 serves the run)."""
    import asyncio

    from tuiconsole.headless import final_line
    from tuiconsole.hosting import signal_exit
    from tuiconsole.remote.launch import LaunchSession, TrainingProcess, exit_code
    from tuiconsole.remote.registry import new_run_id
    from tuiconsole.session import DETACHED
    from tuiconsole.ui.app import ConsoleApp

    if refresh_hz <= 0:
        raise TuiconsoleError("--refresh-hz must be > 0")
    training = TrainingProcess.start(
        script.resolve(),
        run_dir.resolve(),
        new_run_id(),
        args,
        script_args,
        owner=True,
        nproc=nproc,
    )
    session = LaunchSession(training, script=str(script), rate=refresh_hz)
    console = ConsoleApp(
        session, refresh_hz=refresh_hz, decay_factor=decay_factor, script_name=script.name
    )

    def leave_console(signum: int) -> None:
        # Runs in the main thread, inside the app's event loop: hand the exit to
        # the loop (call_soon_threadsafe is the signal-safe way in) so Textual
        # restores the terminal on its own schedule.
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        loop.call_soon_threadsafe(console.exit, None, 128 + signum)

    signals = ConsoleSignals(leave_console)
    try:
        with signals:
            result = console.run()
    except BaseException:
        session.finish()
        raise
    if result == DETACHED and signals.signum is None and not session.disconnected:
        session.detach()
        with contextlib.suppress(OSError):
            print(
                f"detached: run {training.run_id} goes on in the background "
                f"(pid {training.pid}).\n"
                f"  attach:  tuiconsole attach {training.run_id}\n"
                f"  output:  {training.log_path}\n"
                "You can close this terminal: the run has none. Stop it with "
                f"`tuiconsole attach {training.run_id}` then `:stop`, or `kill {training.pid}` "
                "(both write a final checkpoint).",
                flush=True,
            )
        return 0
    if signals.signum is not None:
        session.submit("stop", source=f"signal:{signals.name}")
    code = session.finish()
    snap = session.snapshot()
    signals.stuck = snap.status.unfinished or None
    if session.start_failed is not None:
        training.forget_failed_start()
        print(f"tuiconsole: {session.start_failed}", file=sys.stderr)
        return exit_code(session.start_code) if session.start_code else 1
    with contextlib.suppress(OSError):  # the terminal may be gone (SIGHUP)
        if session.disconnected and not snap.status.state.is_terminal:
            print(f"tuiconsole: {session.disconnect_reason}", file=sys.stderr, flush=True)
            return exit_code(code) if code else 1
        # The console is gone: say how the run ended, as a headless run does.
        print(final_line(snap), flush=True)
        if snap.status.unfinished and signals.signum is None:
            print(f"{snap.status.unfinished}: no final checkpoint was written", flush=True)
        if snap.status.checkpoint:
            print(f"last checkpoint: {snap.status.checkpoint}", flush=True)
    return signal_exit(signals, 1 if snap.status.state.value == "ERROR" else 0)


@app.command("ls")
def ls(
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per run.")] = False,
) -> None:
    """List this user's live runs: id, script, state, step, loss, started, run dir."""
    import json

    from tuiconsole.remote.attach import format_table, list_runs

    entries = list_runs()
    if as_json:
        for e in entries:
            row = {**e.info.to_dict(), "state": e.state, "step": e.step, "loss": e.loss}
            row |= {"attached": e.clients, "error": e.error, "optimizer": e.optimizer}
            row |= {"telemetry": e.telemetry, "step_view": e.step_view}
            row |= {"signals": e.signals, "signal_every": e.signal_every}
            print(json.dumps(row))
    else:
        print(format_table(entries))


@app.command()
def attach(
    run: Annotated[
        str | None,
        typer.Argument(help="Run id, id prefix, run dir or socket path (default: the newest)."),
    ] = None,
    headless: Annotated[
        bool, typer.Option(help="Stream the log as text; stdin lines are commands.")
    ] = False,
    refresh_hz: Annotated[float, typer.Option(help="Console refresh rate.")] = 10.0,
    decay_factor: Annotated[
        float | None, typer.Option(help="Factor of the d/D decay keys (default: the run's).")
    ] = None,
    read_only: Annotated[
        bool,
        typer.Option("--read-only", help="Watch only: the run refuses this console's commands."),
    ] = False,
) -> None:
    """Open the console on a running job. Quitting only detaches; `stop` ends the run.

    One attached console has control at a time; the others watch until one takes it
    (`:control` or ctrl+t)."""
    from tuiconsole.remote.attach import attach as attach_run

    use_console = not headless and sys.stdin.isatty() and sys.stdout.isatty()
    raise typer.Exit(
        attach_run(
            run,
            console=_attach_console(refresh_hz, decay_factor) if use_console else None,
            refresh_hz=refresh_hz,
            stdin=None if sys.stdin is None or sys.stdin.closed else sys.stdin,
            read_only=read_only,
        )
    )


def _attach_console(
    refresh_hz: float, decay_factor: float | None
) -> Callable[[Session, RunInfo], object] | None:
    """The console for `attach`, or None (stream the log) where it can't be imported."""
    try:
        from tuiconsole.ui.app import ConsoleApp
    except ImportError as exc:
        print(f"tuiconsole: no console ({exc}); streaming the log", file=sys.stderr)
        return None

    def open_console(session: Session, info: RunInfo) -> object:
        return ConsoleApp(
            session,
            refresh_hz=refresh_hz,
            decay_factor=decay_factor if decay_factor is not None else info.decay_factor,
            script_name=Path(info.script).name,
        ).run()

    return open_console


def main() -> None:
    try:
        app()
    except TuiconsoleError as exc:
        print(f"tuiconsole: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:  # Ctrl+C while the script loads, before training started
        print("tuiconsole: interrupted", file=sys.stderr)
        sys.exit(130)
