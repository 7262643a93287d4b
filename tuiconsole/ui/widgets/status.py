"""The status bar: what the run is doing right now, on one or two lines."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from tuiconsole.engine.snapshot import RunState, RunStatus
from tuiconsole.ui.fmt import fmt_elapsed, fmt_float
from tuiconsole.ui.theme import state_style


def render_status(
    status: RunStatus, optimizer: str = "", run_dir: str = "", lost: str | None = None
) -> Text:
    """Script, state, epoch, step, steps/s, elapsed, device, last eval; the error if any."""
    text = Text(no_wrap=True, overflow="ellipsis")
    text.append(f" {status.script or 'run'} ", style="bold")
    text.append(f" {status.state.value} ", style=state_style(status.state))
    epoch = f"{status.epoch}/{status.epochs}" if status.epochs else str(status.epoch)
    step = f"{status.step}/{status.max_steps}" if status.max_steps else str(status.step)
    # epoch 0: a loop of its own, which counts its epochs itself
    text.append(f"  epoch {epoch}  step {step}  " if status.epoch else f"  step {step}  ")
    text.append(f"{status.steps_per_sec:.1f} steps/s", style="bold")
    ranks = f" ×{status.world_size} ranks" if status.world_size > 1 else ""
    text.append(f"  {fmt_elapsed(status.elapsed)}  {status.device}{ranks}")
    if optimizer:
        text.append(f"  {optimizer}", style="dim")
    text.append("\n")
    ev = status.last_eval
    if ev is None:
        text.append(" eval: none yet (v)", style="dim")
    else:
        text.append(f" eval @{ev.step}: loss {fmt_float(ev.loss)}")
        if ev.accuracy is not None:
            text.append(f"  acc {ev.accuracy * 100:.1f}%")
    if run_dir:
        text.append(f"  {run_dir}", style="dim")
    if status.error is not None:
        err = status.error
        text.append("\n")
        text.append(f" {err.type} at step {err.step}: {err.message}", style="bold red")
    if lost:
        text.append("\n")
        text.append(f" DISCONNECTED: {lost} (the view is frozen; q leaves)", style="bold red")
    nan = status.nan
    if nan is not None and status.state == RunState.NAN_PAUSED:
        text.append("\n")
        text.append(f" {nan} — lower the lr (e/d), then space resumes", style="bold red")
    return text


class StatusBar(Static):
    """Re-renders only when the run status (or optimizer class / run dir) changed."""

    DEFAULT_CSS = """
    StatusBar {
        height: auto;
        background: $panel;
    }
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__("", id=id)
        self._key: tuple[object, ...] | None = None
        self.text = Text()

    def show(
        self, status: RunStatus, optimizer: str = "", run_dir: str = "", lost: str | None = None
    ) -> bool:
        """Update from a snapshot's status.

        Compares what is *displayed* (elapsed to the second, steps/s to 0.1), so a paused
        run whose snapshots differ only in elapsed milliseconds costs no redraw. Returns
        True if something other than the elapsed clock changed (the app's idle detector).
        """
        key = (
            status.script,
            status.state,
            status.epoch,
            status.step,
            round(status.steps_per_sec, 1),
            int(status.elapsed),
            status.device,
            status.last_eval,
            status.error,
            status.nan,
            status.max_steps,
            status.epochs,
            optimizer,
            run_dir,
            lost,
        )
        if key == self._key:
            return False
        old, self._key = self._key, key
        lines = self.text.plain.count("\n")
        self.text = render_status(status, optimizer, run_dir, lost)
        # Relayout only when the bar grows or shrinks (an error line came or went).
        self.update(self.text, layout=self.text.plain.count("\n") != lines or old is None)
        return old is None or old[:5] != key[:5] or old[6:] != key[6:]  # [5] is elapsed
