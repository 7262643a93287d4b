"""The optimizer's param groups: name, lr, momentum/betas, weight decay, size.

Each group's lr over steps is a chart of its own (the loss pane, the plot view).
"""

from __future__ import annotations

from rich.text import Text
from textual.widgets import DataTable

from tuiconsole.engine.snapshot import GroupView
from tuiconsole.ui.fmt import fmt_count, fmt_hparam, fmt_lr
from tuiconsole.ui.theme import group_color

SPARK_WIDTH = 12
WIDE_SPARK_WIDTH = 24  # tables of at least SPARK_WIDE_MIN cells get the longer history
SPARK_WIDE_MIN = 90
# Narrower than these, the lr-history and then the weight-decay columns are dropped so
# the numbers stay readable at 80x24 (the full table shows from about 64 cells).
WIDE_MIN = 64
MEDIUM_MIN = 46
COLUMNS: tuple[tuple[str, str], ...] = (
    ("name", "group"),
    ("lr", "lr"),
    ("mom", "mom/betas"),
    ("wd", "wd"),
    ("params", "params"),
)


def group_cells(g: GroupView, spark_width: int = SPARK_WIDTH) -> dict[str, Text]:
    """The cells of one row by column key, in the group's colour where it helps."""
    color = group_color(g.index)
    mom = g.get("momentum")
    if mom is None:
        mom = g.get("betas")
    if mom is None:
        mom = g.get("alpha")  # RMSprop's smoothing constant
    return {
        "name": Text.assemble(("■ ", f"bold {color}"), (g.name, "bold")),
        "lr": Text(fmt_lr(g.lr), style=f"bold {color}", justify="right"),
        "mom": Text(fmt_hparam(mom) if mom is not None else "-", justify="right"),
        "wd": Text(fmt_hparam(g.get("weight_decay", 0.0)), justify="right"),
        "params": Text(f"{fmt_count(g.n_params)}", justify="right"),
    }


class GroupTable(DataTable[Text]):
    """One row per param group, keyed by group name; only changed cells are redrawn."""

    HELP_SECTION = "group table"

    DEFAULT_CSS = """
    GroupTable {
        height: auto;
        max-height: 10;
        scrollbar-size-vertical: 1;
    }
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id, cursor_type="row", zebra_stripes=False, show_cursor=True)
        self._groups: tuple[GroupView, ...] = ()
        self._cells: dict[str, dict[str, Text]] = {}
        self._names: tuple[str, ...] = ()
        self._columns: tuple[tuple[str, str], ...] = ()
        self._spark_width = SPARK_WIDTH

    def on_mount(self) -> None:
        self._set_columns(self.size.width)

    def on_resize(self) -> None:
        if self._set_columns(self.size.width):
            self._rebuild()

    def _set_columns(self, width: int) -> bool:
        drop = () if width >= MEDIUM_MIN else ("wd",)
        wanted = tuple(c for c in COLUMNS if c[0] not in drop)
        spark = WIDE_SPARK_WIDTH if width >= SPARK_WIDE_MIN else SPARK_WIDTH
        if wanted == self._columns and spark == self._spark_width:
            return False
        self._columns, self._spark_width = wanted, spark
        self.clear(columns=True)
        self._names = ()
        for key, label in wanted:
            self.add_column(label, key=key)
        return True

    @property
    def selected_group(self) -> str | None:
        if not self._names or self.cursor_row < 0 or self.cursor_row >= len(self._names):
            return None
        return self._names[self.cursor_row]

    def show(self, groups: tuple[GroupView, ...]) -> bool:
        """Update from a snapshot's groups; returns True if anything was redrawn."""
        if groups == self._groups:
            return False
        self._groups = groups
        if tuple(g.name for g in groups) != self._names:
            self._rebuild()
            return True
        changed = False
        for g in groups:
            cells = group_cells(g, self._spark_width)
            old = self._cells.get(g.name, {})
            for key, _ in self._columns:
                new_cell, old_cell = cells[key], old.get(key)
                if old_cell is None or new_cell.plain != old_cell.plain:
                    # A longer value widens its column (else 9.92e-5 is cut to "9.92").
                    wider = old_cell is None or new_cell.cell_len > old_cell.cell_len
                    self.update_cell(g.name, key, new_cell, update_width=wider)
                    changed = True
            self._cells[g.name] = cells
        return changed

    def _rebuild(self) -> None:
        selected = self.selected_group
        self.clear()
        self._cells = {}
        for g in self._groups:
            cells = group_cells(g, self._spark_width)
            self._cells[g.name] = cells
            self.add_row(*(cells[key] for key, _ in self._columns), key=g.name)
        self._names = tuple(g.name for g in self._groups)
        if selected in self._names:
            self.move_cursor(row=self._names.index(selected))
