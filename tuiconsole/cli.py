"""The command line. Thin: parse options, build a Session, pick a front-end.

Nothing here imports torch at module level, so ``tuiconsole --help`` stays fast.
"""

from __future__ import annotations

import contextlib
import sys
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from tuiconsole.errors import TuiconsoleError

if TYPE_CHECKING:
    from tuiconsole.remote.server import RemoteServer
    from tuiconsole.session import LocalSession, Session, StopOnSignals

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


@app.callback()
def _root() -> None:
    """tuiconsole: watch and steer a PyTorch training run from the terminal."""


def default_run_dir(script: Path) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path("runs") / f"{script.stem}-{stamp}"
    path, n = base, 2
    while path.exists():
        path, n = base.with_name(f"{base.name}-{n}"), n + 1
    return path


@app.command()
def run(
    script: Annotated[Path, typer.Argument(help="Training script (see the script contract).")],
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
        Path | None, typer.Option(help="Re-apply a journal's commands at the same steps.")
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
    detached_child: Annotated[bool, typer.Option(hidden=True)] = False,
    run_id: Annotated[str | None, typer.Option(hidden=True)] = None,
) -> None:
    """Train SCRIPT in a background thread and open the console (or --headless)."""
    if detach and not detached_child:
        _start_detached(
            script,
            run_dir or default_run_dir(script),
            max_steps=max_steps,
            epochs=epochs,
            device=device,
            seed=seed,
            replay=replay,
            log_every=log_every,
            decay_factor=decay_factor,
            paused=paused,
            resume=resume,
            nan=nan.value if nan is not None else None,
            linger=linger,
        )
        return
    from tuiconsole.engine.trainer import DEFAULT_LOG_EVERY, DEFAULT_LOG_MIN_INTERVAL, RunConfig
    from tuiconsole.session import LocalSession

    config = RunConfig(
        run_dir=run_dir or default_run_dir(script),
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
    )
    try:
        session = LocalSession.from_script(script, config)
    except KeyboardInterrupt:  # here, not in main(): Typer turns it into "Aborted!"
        print(
            f"tuiconsole: {script}: interrupted while loading the script; nothing written",
            file=sys.stderr,
        )
        raise typer.Exit(130) from None
    if detached_child:
        code = _serve_detached(session, script, config.run_dir, run_id, decay_factor, linger)
        _leave_script_threads(code)
        raise typer.Exit(code)
    use_console = not headless and sys.stdout.isatty() and sys.stdin.isatty()
    if not headless and not use_console:
        print("tuiconsole: not a terminal; running --headless", file=sys.stderr)
    from tuiconsole.session import hold_stop_signals, release_stop_signals

    hold_stop_signals()  # until the front-end's StopOnSignals is in: none is lost
    try:
        session.start()
        server = (
            _start_server(session, script, config.run_dir, decay_factor, quiet=use_console)
            if listen
            else None
        )
        try:
            if use_console:
                code = _run_console(session, script, decay_factor, refresh_hz, server)
            else:
                code = _run_headless(session)
        finally:
            if server is not None:
                server.close("the run has ended")
    finally:
        # on every way out (a run dir it cannot write in ends before the handlers are
        # in): a blocked mask would outlive the run in-process and pass to every child
        release_stop_signals()
    _leave_script_threads(code)
    raise typer.Exit(code)


def _leave_script_threads(code: int) -> None:
    """Exit now, without the interpreter's finalization, if any other thread is left.

    A non-daemon thread the script started would keep the process alive (a run
    that has ended would never return the prompt). A daemon thread still inside
    torch code (the loop thread after a stop grace, a loader's thread) is killed
    by finalization mid-call, which aborts the process ("terminate called
    without an active exception", exit -6). The run's files are closed and
    flushed by now, so leaving at once loses nothing.
    """
    import logging
    import os
    import threading

    others = [t for t in threading.enumerate() if t is not threading.main_thread() and t.is_alive()]
    if not others:
        return
    alive = [t for t in others if not t.daemon]
    with contextlib.suppress(OSError, ValueError):
        sys.stdout.flush()
        if alive:
            names = ", ".join(repr(t.name) for t in alive)
            many = len(alive) > 1
            print(
                f"tuiconsole: the run has ended, but the script's thread{'s' if many else ''} "
                f"{names} {'are' if many else 'is'} still running; exiting without waiting "
                f"for {'them' if many else 'it'}",
                file=sys.stderr,
                flush=True,
            )
        sys.stderr.flush()
    logging.shutdown()  # the run dir's remote.log
    os._exit(code)  # the journal and metrics are closed; only those threads are left


def _nan_mode(nan: NanMode | None, attachable: bool) -> str:
    """Pause on NaN where someone can resume: a terminal, or a detached run one attaches to."""
    if nan is not None:
        return nan.value
    interactive = sys.stdin is not None and not sys.stdin.closed and sys.stdin.isatty()
    return "pause" if interactive or attachable else "stop"


def _start_detached(script: Path, run_dir: Path, **options: object) -> None:
    """The parent of `run --detach`: start the background process, report, return."""
    from tuiconsole.remote.detach import spawn_detached
    from tuiconsole.remote.registry import new_run_id

    args: list[str] = []
    for name, value in options.items():
        flag = "--" + name.replace("_", "-")
        if value is None or value is False:
            continue
        if value is True:
            args.append(flag)
        else:
            args += [flag, str(Path(value).resolve()) if isinstance(value, Path) else str(value)]
    info = spawn_detached(script.resolve(), run_dir.resolve(), new_run_id(), args)
    print(info.id)
    print(
        f"tuiconsole: run {info.id} started in the background (pid {info.pid}); "
        f"attach: tuiconsole attach {info.id}; list: tuiconsole ls; output: {info.log}",
        file=sys.stderr,
    )


def _start_server(
    session: LocalSession, script: Path, run_dir: Path | None, decay_factor: float, quiet: bool
) -> RemoteServer | None:
    """Make a foreground run attachable; a failure here never stops the run."""
    from tuiconsole.remote.detach import REMOTE_LOG_NAME, make_info
    from tuiconsole.remote.registry import new_run_id
    from tuiconsole.remote.server import RemoteServer, setup_log_file

    if run_dir is None:
        return None
    try:
        setup_log_file(run_dir / REMOTE_LOG_NAME)
        info = make_info(
            new_run_id(), script.resolve(), run_dir, detached=False, decay_factor=decay_factor
        )
        server = RemoteServer(session, info).start()
    except (OSError, TuiconsoleError) as exc:
        print(f"tuiconsole: not attachable from other terminals: {exc}", file=sys.stderr)
        return None
    if not quiet:
        print(
            f"tuiconsole: attach from another terminal: tuiconsole attach {info.id}",
            file=sys.stderr,
        )
    return server


def _serve_detached(
    session: LocalSession,
    script: Path,
    run_dir: Path | None,
    run_id: str | None,
    decay_factor: float,
    linger: float,
) -> int:
    """The background process of `run --detach`: train and serve until done (+ linger)."""
    from tuiconsole.remote.detach import (
        LOG_NAME,
        StopRequest,
        ignore_hangup,
        make_info,
        serve_until_done,
    )
    from tuiconsole.remote.registry import new_run_id
    from tuiconsole.remote.server import RemoteServer, setup_log_file

    assert run_dir is not None
    ignore_hangup()
    stop = StopRequest(session).install()
    setup_log_file(None)  # stderr is the run's log file here
    info = make_info(
        run_id or new_run_id(),
        script.resolve(),
        run_dir,
        detached=True,
        decay_factor=decay_factor,
        log=run_dir.resolve() / LOG_NAME,
    )
    server = RemoteServer(session, info).start()  # first: if it can't listen, don't train
    try:
        session.start()  # a run dir it cannot write in: one line, exit 2
    except BaseException:
        server.close("the run could not start")
        raise
    print(f"run {info.id} (pid {info.pid}) serving on {info.socket}", flush=True)
    return serve_until_done(session, server, linger=linger, stop=stop, out=sys.stdout)


def _run_headless(session: Session) -> int:
    from tuiconsole.headless import run_headless
    from tuiconsole.session import StopOnSignals

    stdin = None if sys.stdin is None or sys.stdin.closed else sys.stdin
    with StopOnSignals(session) as stops:
        try:
            code = run_headless(session, stdin=stdin)
        except KeyboardInterrupt:  # only if it beat the handler; still stop cleanly
            session.close()
            return 130
    return _signal_exit(stops, code)


def _signal_exit(stops: StopOnSignals, code: int) -> int:
    """Exit code after a front-end returned: 128+N if a signal stopped the run."""
    if stops.exit_code is None or code == 1:  # a training error wins: look at that
        return code
    unfinished = stops.unfinished
    what = (
        f"{unfinished}, so no final checkpoint was written; journal flushed"
        if unfinished
        else "final checkpoint written, journal and metrics flushed"
    )
    with contextlib.suppress(OSError, ValueError):  # SIGHUP: the terminal may be gone
        print(f"tuiconsole: stopped by {stops.name}; {what}", file=sys.stderr, flush=True)
    return stops.exit_code


def _run_console(
    session: LocalSession,
    script: Path,
    decay_factor: float,
    refresh_hz: float,
    server: RemoteServer | None = None,
) -> int:
    import asyncio

    from tuiconsole.engine.snapshot import RunState
    from tuiconsole.headless import final_line
    from tuiconsole.remote import DETACH_RESULT
    from tuiconsole.session import StopOnSignals
    from tuiconsole.ui.app import ConsoleApp

    detached = False
    console = ConsoleApp(
        session,
        refresh_hz=refresh_hz,
        decay_factor=decay_factor,
        script_name=script.name,
        can_detach=server is not None,
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

    stops = StopOnSignals(session, leave_console)
    try:
        with stops:
            result = console.run()
        detached = result == DETACH_RESULT and server is not None and stops.signum is None
    finally:
        if not detached:
            session.close()
    if detached:
        from tuiconsole.remote.detach import continue_in_background

        assert server is not None
        return continue_in_background(session, server)
    snap = session.snapshot()
    # The console is gone: say how the run ended, as a headless run does.
    with contextlib.suppress(OSError):  # the terminal may be gone (SIGHUP)
        print(final_line(snap), flush=True)
        if snap.status.checkpoint:
            print(f"last checkpoint: {snap.status.checkpoint}", flush=True)
    return _signal_exit(stops, 1 if snap.status.state == RunState.ERROR else 0)


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
) -> None:
    """Open the console on a running job. Quitting only detaches; `stop` ends the run."""
    from tuiconsole.remote.attach import attach as attach_run

    raise typer.Exit(
        attach_run(
            run,
            headless=headless,
            refresh_hz=refresh_hz,
            decay_factor=decay_factor,
            stdin=None if sys.stdin is None or sys.stdin.closed else sys.stdin,
        )
    )


def main() -> None:
    try:
        app()
    except TuiconsoleError as exc:
        print(f"tuiconsole: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:  # Ctrl+C while the script loads, before training started
        print("tuiconsole: interrupted", file=sys.stderr)
        sys.exit(130)
