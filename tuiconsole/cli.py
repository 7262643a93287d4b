"""The command line. Thin: parse options, build a Session, pick a front-end.

Nothing here imports torch at module level, so ``tuiconsole --help`` stays fast.
"""

from __future__ import annotations

import sys
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from tuiconsole.errors import TuiconsoleError

if TYPE_CHECKING:
    from tuiconsole.session import Session

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="A keyboard-driven terminal console for a live PyTorch training run.",
    pretty_exceptions_enable=False,
)


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
    log_every: Annotated[int, typer.Option(min=1, help="Log a metrics line every N steps.")] = 50,
    decay_factor: Annotated[float, typer.Option(help="Factor of the d/D decay keys.")] = 0.1,
    refresh_hz: Annotated[float, typer.Option(help="Console refresh rate.")] = 10.0,
    paused: Annotated[bool, typer.Option(help="Start paused (step 0).")] = False,
) -> None:
    """Train SCRIPT in a background thread and open the console (or --headless)."""
    from tuiconsole.engine.trainer import RunConfig
    from tuiconsole.session import LocalSession

    config = RunConfig(
        run_dir=run_dir or default_run_dir(script),
        max_steps=max_steps,
        epochs=epochs,
        device=device,
        seed=seed,
        log_every=log_every,
        replay=replay,
        start_paused=paused,
        decay_factor=decay_factor,
    )
    session = LocalSession.from_script(script, config)
    use_console = not headless and sys.stdout.isatty() and sys.stdin.isatty()
    if not headless and not use_console:
        print("tuiconsole: not a terminal; running --headless", file=sys.stderr)
    session.start()
    if use_console:
        code = _run_console(session, script, decay_factor, refresh_hz)
    else:
        code = _run_headless(session)
    raise typer.Exit(code)


def _run_headless(session: Session) -> int:
    from tuiconsole.headless import run_headless

    stdin = None if sys.stdin is None or sys.stdin.closed else sys.stdin
    try:
        return run_headless(session, stdin=stdin)
    except KeyboardInterrupt:
        session.close()
        print("interrupted; journal flushed", file=sys.stderr)
        return 130


def _run_console(session: Session, script: Path, decay_factor: float, refresh_hz: float) -> int:
    from tuiconsole.engine.snapshot import RunState
    from tuiconsole.ui.app import ConsoleApp

    try:
        ConsoleApp(
            session, refresh_hz=refresh_hz, decay_factor=decay_factor, script_name=script.name
        ).run()
    finally:
        session.close()
    snap = session.snapshot()
    return 1 if snap.status.state == RunState.ERROR else 0


def main() -> None:
    try:
        app()
    except TuiconsoleError as exc:
        print(f"tuiconsole: {exc}", file=sys.stderr)
        sys.exit(2)
