"""Colours shared by the widgets: one colour per param group, one style per run state.

A group keeps its colour for the whole run because the colour is picked by the
group's optimizer index, which split (appends) and rebuild (keeps order) preserve.
Colour is never the only signal: group names are always written next to it, so
the console still reads under NO_COLOR (Textual turns colours off itself).
"""

from __future__ import annotations

from tuiconsole.engine.snapshot import RunState

GROUP_COLORS: tuple[str, ...] = (
    "#5fafff",  # blue
    "#ffaf5f",  # orange
    "#87d75f",  # green
    "#d787d7",  # magenta
    "#5fd7d7",  # cyan
    "#ffd75f",  # yellow
    "#ff8787",  # red
    "#afafff",  # lavender
)


def group_color(index: int) -> str:
    """The colour of the group at optimizer index ``index``."""
    return GROUP_COLORS[index % len(GROUP_COLORS)]


STATE_STYLES: dict[RunState, str] = {
    RunState.LOADING: "bold #000000 on #87d7ff",
    RunState.STARTING: "bold",
    RunState.RUNNING: "bold #000000 on #5fd75f",
    RunState.PAUSED: "bold #000000 on #ffd75f",
    RunState.STEPPING: "bold #000000 on #87d7ff",
    RunState.EVALUATING: "bold #000000 on #d7afff",
    RunState.NAN_PAUSED: "bold #ffffff on #d70000",
    RunState.FINISHED: "bold #000000 on #afafaf",
    RunState.STOPPED: "bold #000000 on #afafaf",
    RunState.ERROR: "bold #ffffff on #d70000",
}


def state_style(state: RunState) -> str:
    return STATE_STYLES.get(state, "bold")
