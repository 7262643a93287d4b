"""The optimizer's param groups: name, lr, momentum/betas, weight decay, size, lr history.

Never a cut number: the columns are fitted to the table's width by :func:`fit_columns`
(whole columns are dropped, least important first, and only group names are cut, with
an ellipsis). With more groups than rows, the title says which rows show and that the
table scrolls.
"""

from __future__ import annotations

import math

from rich.text import Text
from textual.widgets import DataTable

from tuiconsole.engine.snapshot import GroupSignals, GroupView
from tuiconsole.ui.fmt import (
    Column,
    ColumnFit,
    ellipsize,
    fit_columns,
    fmt_count,
    fmt_float,
    fmt_hparam,
    fmt_lr,
    spark_text,
)
from tuiconsole.ui.theme import group_color

SPARK_WIDTH = 12
WIDE_SPARK_WIDTH = 24  # tables of at least SPARK_WIDE_MIN cells get the longer history
SPARK_WIDE_MIN = 90
SWATCH = "■ "
# Dropped whole when the table is narrow, highest priority number first: the lr stays
# longest, then momentum/betas, the update ratio and grad norm (where measured), weight
# decay, the size, the lr history.
COLUMNS: tuple[Column, ...] = (
    Column("name", "group", flexible=True, min_width=len(SWATCH) + 14),
    Column("lr", "lr", priority=1),
    Column("mom", "mom/betas", priority=2),
    Column("ratio", "upd ratio", priority=3),
    Column("gnorm", "grad norm", priority=4),
    Column("wd", "wd", priority=5),
    Column("params", "params", priority=6),
    Column("hist", "lr history", priority=7),
)
SIGNAL_COLUMNS = frozenset({"ratio", "gnorm"})  # shown only once signals were measured
TITLE = "param groups"


def group_cells(
    g: GroupView, spark_width: int = SPARK_WIDTH, signals: GroupSignals | None = None
) -> dict[str, Text]:
    """The cells of one row by column key, in the group's colour where it helps."""
    color = group_color(g.index)
    mom = g.get("momentum")
    if mom is None:
        mom = g.get("betas")
    if mom is None:
        mom = g.get("alpha")  # RMSprop's smoothing constant
    ratio = signals.update_ratio if signals is not None else None
    gnorm = signals.grad_norm if signals is not None else None
    return {
        "name": Text.assemble((SWATCH, f"bold {color}"), (g.name, "bold")),
        "lr": Text(fmt_lr(g.lr), style=f"bold {color}", justify="right"),
        "mom": Text(fmt_hparam(mom) if mom is not None else "-", justify="right"),
        "ratio": Text(fmt_lr(ratio), justify="right"),
        "gnorm": Text(fmt_float(gnorm, 3), justify="right"),
        "wd": Text(fmt_hparam(g.get("weight_decay", 0.0)), justify="right"),
        "params": Text(f"{fmt_count(g.n_params)}", justify="right"),
        "hist": Text(spark_text(_log10(g.lr_history), spark_width), style=color),
    }


def table_rows(
    groups: tuple[GroupView, ...],
    signals: tuple[GroupSignals, ...] = (),
    spark_width: int = SPARK_WIDTH,
) -> list[dict[str, Text]]:
    """Every group's cells (its signals matched by name)."""
    by_name = {s.name: s for s in signals}
    return [group_cells(g, spark_width, by_name.get(g.name)) for g in groups]


def fit_group_columns(
    groups: tuple[GroupView, ...],
    width: int,
    spark_width: int = SPARK_WIDTH,
    padding: int = 1,
    signals: tuple[GroupSignals, ...] = (),
    rows: list[dict[str, Text]] | None = None,
) -> ColumnFit:
    """The group table's columns for ``width`` cells (see :func:`fit_columns`); the
    signal columns only where ``signals`` holds some."""
    if rows is None:
        rows = table_rows(groups, signals, spark_width)
    columns = [c for c in COLUMNS if signals or c.key not in SIGNAL_COLUMNS]
    cells = {c.key: [r[c.key].plain for r in rows] for c in columns}
    return fit_columns(columns, cells, width, padding)


def fitted_row(cells: dict[str, Text], fit: ColumnFit) -> list[Text]:
    """One row's cells for ``fit``: the name cut with an ellipsis to its column."""
    out = []
    for key, width in zip(fit.keys, fit.widths, strict=True):
        cell = cells[key]
        if key == "name" and cell.cell_len > width:
            swatch, name = cell.divide([len(SWATCH)])
            name = Text(ellipsize(name.plain, width - len(SWATCH), middle=True), style="bold")
            cell = Text.assemble(swatch, name)
        out.append(cell)
    return out


def _log10(values: tuple[float, ...]) -> list[float]:
    """lrs move by factors (decay 0.1, warm-up), so their history is drawn on a log scale."""
    return [math.log10(v) for v in values if v > 0 and math.isfinite(v)]


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
        self._signals: tuple[GroupSignals, ...] = ()
        self._cells: dict[str, dict[str, Text]] = {}
        self._names: tuple[str, ...] = ()
        self._fit: ColumnFit | None = None
        self._spark_width = SPARK_WIDTH
        self.base_title = TITLE

    @property
    def columns_shown(self) -> tuple[str, ...]:
        return self._fit.keys if self._fit else ()

    def _available(self) -> int:
        # One cell is kept for the vertical scrollbar, so its coming does not refit.
        return max(0, self.size.width - 1)

    def on_resize(self) -> None:
        self._spark_width = WIDE_SPARK_WIDTH if self.size.width >= SPARK_WIDE_MIN else SPARK_WIDTH
        self._refit(force_rows=True)
        self._update_hint()

    def _refit(self, force_rows: bool = False, rows: list[dict[str, Text]] | None = None) -> bool:
        """Fit the columns to the width; rebuild the table if the fit changed."""
        if self.size.width <= 0:
            return False
        if rows is None:
            rows = table_rows(self._groups, self._signals, self._spark_width)
        fit = fit_group_columns(
            self._groups,
            self._available(),
            self._spark_width,
            self.cell_padding,
            self._signals,
            rows,
        )
        if fit == self._fit and not force_rows:
            return False
        if fit != self._fit:
            self._fit = fit
            self.clear(columns=True)
            self._names = ()
            for key, width in zip(fit.keys, fit.widths, strict=True):
                label = next(c.label for c in COLUMNS if c.key == key)
                self.add_column(label, key=key, width=width)
        self._rebuild(rows)
        # height: auto must follow the new rows, also when this ran inside a layout (resize)
        self.call_after_refresh(self.refresh, layout=True)
        return True

    @property
    def selected_group(self) -> str | None:
        if not self._names or self.cursor_row < 0 or self.cursor_row >= len(self._names):
            return None
        return self._names[self.cursor_row]

    def show(self, groups: tuple[GroupView, ...], signals: tuple[GroupSignals, ...] = ()) -> bool:
        """Update from a snapshot's groups (and signals); True if anything was redrawn."""
        if groups == self._groups and signals == self._signals:
            return False
        self._groups, self._signals = groups, signals
        rows = table_rows(groups, signals, self._spark_width)
        if tuple(g.name for g in groups) != self._names or self._fit is None:
            self._refit(force_rows=True, rows=rows)
            self._update_hint()
            return True
        if self._refit(rows=rows):  # a value grew past its column (9.92e-5 after 1e-3): refit
            return True
        fit = self._fit
        changed = False
        for g, cells in zip(groups, rows, strict=True):
            old = self._cells.get(g.name, {})
            new_row = fitted_row(cells, fit)
            old_row = fitted_row(old, fit) if old else [None] * len(fit.keys)
            for key, new_cell, old_cell in zip(fit.keys, new_row, old_row, strict=True):
                if old_cell is None or new_cell.plain != old_cell.plain:
                    self.update_cell(g.name, key, new_cell)
                    changed = True
            self._cells[g.name] = cells
        return changed

    def _rebuild(self, rows: list[dict[str, Text]] | None = None) -> None:
        selected = self.selected_group
        self.clear()
        self._cells = {}
        fit = self._fit
        if fit is None:
            return
        if rows is None:
            rows = table_rows(self._groups, self._signals, self._spark_width)
        for g, cells in zip(self._groups, rows, strict=True):
            self._cells[g.name] = cells
            self.add_row(*fitted_row(cells, fit), key=g.name)
        self._names = tuple(g.name for g in self._groups)
        if selected in self._names:
            self.move_cursor(row=self._names.index(selected))

    # -- the scroll hint --------------------------------------------------------------------

    def _update_hint(self) -> None:
        """``param groups 1–8 of 20 ↓``: the rows shown, when not all of them fit."""
        n = len(self._names)
        rows = max(0, self.scrollable_content_region.height - 1)  # less the header row
        if n == 0 or rows <= 0 or n <= rows:
            self.border_title = self.base_title
            return
        first = min(int(self.scroll_y), max(0, n - rows))
        last = min(n, first + rows)
        arrows = ("↑" if first > 0 else "") + ("↓" if last < n else "")
        self.border_title = f"{self.base_title} {first + 1}–{last} of {n} {arrows}"

    def watch_scroll_y(self, old_value: float, new_value: float) -> None:
        super().watch_scroll_y(old_value, new_value)
        self._update_hint()
