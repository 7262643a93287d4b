"""Issue 17: the optimizer, legible, and never a cut number.

Pure fitting helpers are checked directly at many widths; then the real app (Pilot) over
the frozen long-names run at 80x24, 120x40 and 160x50: every token on screen in the
header, the tree and the group table is a whole token of what that widget would show
with unlimited room (or a name cut with "…"). One test runs a real trainer for the
header after a stop.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import replace

import pytest
from rich.text import Text

from tests.ui.fake_session import FakeSession, frozen_snapshot, long_names_snapshot
from tests.ui.real_run import screen_text, until_shown, wait_until
from tuiconsole.engine.snapshot import Change, GroupView, ModuleNode, RunState
from tuiconsole.remote import protocol as P
from tuiconsole.ui.app import ConsoleApp
from tuiconsole.ui.fmt import Piece, ellipsize, fit_pieces, fmt_lr
from tuiconsole.ui.screens.edit_lr import EditLrScreen
from tuiconsole.ui.screens.group_detail import GroupDetailScreen, group_changes
from tuiconsole.ui.widgets.group_table import (
    COLUMNS,
    fit_group_columns,
    fitted_row,
    table_rows,
)
from tuiconsole.ui.widgets.layer_tree import module_label_pieces, render_module_label
from tuiconsole.ui.widgets.status import AttachBadge, render_header

SIZES = [(80, 24), (120, 40), (160, 50)]
IDS = ["80x24", "120x40", "160x50"]
WIDE = 10_000


# -- the check: nothing shown is a cut piece of something longer --------------------------


def _is_cut_name(token: str, allowed: set[str]) -> bool:
    """``fea…_name`` / ``vgg_with_a_long…``: both sides of the ellipsis from one whole token."""
    if token.count("…") != 1:
        return False
    head, tail = token.split("…")
    return any(a.startswith(head) and a.endswith(tail) and len(a) > len(token) for a in allowed)


def assert_whole(shown: str, full: Iterable[str], where: str) -> None:
    allowed = {tok for text in full for tok in text.split()}
    for token in shown.split():
        if token in allowed or set(token) <= set("━■│├└▼▶▁▂▃▄▅▆▇█"):  # bars, guides, scrollbars
            continue
        assert _is_cut_name(token, allowed), f"{where}: {token!r} is cut (line: {shown!r})"


def region_text(app: ConsoleApp, widget) -> list[str]:
    r = widget.region
    lines = screen_text(app).splitlines()
    return [line[r.x : r.x + r.width] for line in lines[r.y : r.y + r.height]]


def many_groups(n: int = 40) -> tuple[GroupView, ...]:
    lrs = [9.63e-4, 0.01, 3.162e-4, 1.25e-5, 0.1, 2e-3, 9.92e-5, 1e-6, 0.0316, 7.5e-7, 123.0]
    return tuple(
        GroupView(
            i,
            f"encoder.layer{i}.attention.self.query_key_value_projection",
            lrs[i % len(lrs)],
            (("betas", (0.9, 0.999)), ("weight_decay", 0.01 * (i % 3)), ("eps", 1e-8)),
            2,
            10 ** (i % 9) + i,
        )
        for i in range(n)
    )


# -- pure helpers ---------------------------------------------------------------------------


def test_fit_pieces_drops_whole_parts_in_rank_order_and_cuts_only_names() -> None:
    pieces = [
        Piece((Text("a_long_module_name"),), name=True, min_name=4),
        Piece.optional(" Conv2d", 30),
        Piece.optional(" 18.5k", 40),
        Piece((Text(" ■group 9.63e-4"), Text(" ■group"), Text(" ■")), (10, 20)),
    ]
    plain = lambda w: "".join(t.plain for t in fit_pieces(pieces, w))  # noqa: E731
    assert plain(100) == "a_long_module_name Conv2d 18.5k ■group 9.63e-4"
    assert plain(40) == "a_long_module_name Conv2d 18.5k ■group"
    assert plain(33) == "a_long_module_name Conv2d 18.5k ■"
    assert plain(26) == "a_long_module_name 18.5k ■"
    assert plain(20) == "a_long_module_name ■"
    assert plain(10) == "a_long_… ■"
    for width in range(0, 60):
        assert len(plain(width)) <= max(width, 0) or plain(width) == ""


def test_ellipsize_cuts_names_at_the_end_or_in_the_middle() -> None:
    assert ellipsize("features", 20) == "features"
    assert ellipsize("features.block0_conv", 10) == "features.…"
    assert ellipsize("features.block0_conv", 10, middle=True) == "fea…0_conv"
    assert ellipsize("x", 0) == ""


@pytest.mark.parametrize("groups", ["long", "many", "frozen"])
def test_group_columns_never_cut_a_number_at_any_width(groups) -> None:
    gs = {
        "long": long_names_snapshot().groups,
        "many": many_groups(),
        "frozen": frozen_snapshot().groups,
    }[groups]
    signals = long_names_snapshot().signals if groups == "long" else ()
    cells = {g.name: r for g, r in zip(gs, table_rows(gs, signals), strict=True)}
    for width in range(10, 220, 5):
        fit = fit_group_columns(gs, width, signals=signals)
        used = sum(w + 2 for w in fit.widths)
        assert used <= width or fit.keys == ("name",), (width, fit)
        for g in gs:
            full = cells[g.name]
            row = fitted_row(full, fit)
            for key, cell in zip(fit.keys, row, strict=True):
                assert cell.cell_len <= fit.width_of(key)
                if key == "name":
                    assert cell.plain == full["name"].plain or _is_cut_name(
                        cell.plain.removeprefix("■ "), {g.name}
                    )
                else:
                    assert cell.plain == full[key].plain, (width, key)
            if "lr" in fit.keys:
                shown = row[fit.keys.index("lr")].plain
                assert shown == fmt_lr(g.lr) and math.isclose(float(shown), g.lr, rel_tol=5e-3)


def test_group_columns_drop_least_important_first() -> None:
    gs = long_names_snapshot().groups
    kept = [fit_group_columns(gs, w).keys for w in range(200, 10, -1)]
    order = []
    for before, after in zip(kept, kept[1:], strict=False):
        order += [k for k in before if k not in after]
    assert order == ["hist", "params", "wd", "mom", "lr"]
    signals = long_names_snapshot().signals
    kept = [fit_group_columns(gs, w, signals=signals).keys for w in range(200, 10, -1)]
    order = []
    for before, after in zip(kept, kept[1:], strict=False):
        order += [k for k in before if k not in after]
    assert order == ["hist", "params", "wd", "gnorm", "ratio", "mom", "lr"]
    assert kept[0] == ("name", "lr", "mom", "ratio", "gnorm", "wd", "params", "hist")
    assert [c.key for c in COLUMNS][0] == "name"  # the name is never dropped, only cut


def test_tree_labels_fit_every_width_whole_or_not_at_all() -> None:
    snap = long_names_snapshot()
    color = {g.name: (g.index, fmt_lr(g.lr)) for g in snap.groups}
    frozen = ModuleNode("emb", "Embedding", 640, 640, ("g",), ("g",), frozen=("weight",))
    cases = [(m, False) for m in snap.modules] + [(frozen, True)]
    for mod, marked in cases:
        tags = tuple((n, *color.get(n, (0, "0.01"))) for n in mod.subtree_groups)
        # every form a part of the label may take (tag and notes have shorter ones)
        full = [o.plain for p in module_label_pieces(mod, marked, tags) for o in p.options]
        for width in range(6, 130):
            label = render_module_label(mod, marked, tags, width).plain
            assert len(label) <= width, (mod.path, width, label)
            assert_whole(label, full, f"tree {mod.path!r} at {width}")
            assert label.split(" ")[0 if not marked else 1]  # the name is always there


@pytest.mark.parametrize("tall", [True, False])
def test_header_fits_every_width_and_never_cuts_a_number(tall) -> None:
    snap = long_names_snapshot()
    badge = AttachBadge("6f3a9c", 3, "watching")
    full = render_header(snap, WIDE, badge=badge, tall=tall).lines
    assert "ATTACHED 6f3a9c · 3 clients · watching" in full[0].plain
    for width in range(20, 240, 3):
        header = render_header(snap, width, badge=badge, tall=tall)
        for line in header.lines:
            assert line.cell_len <= width, (width, line.plain)
            assert_whole(line.plain, [t.plain for t in full], f"header at {width}")


def test_header_shows_every_field_when_there_is_room() -> None:
    text = "\n".join(t.plain for t in render_header(long_names_snapshot(), WIDE).lines)
    for part in (
        "RUNNING",
        "epoch 19/20",
        "step 1200/2000",
        "60%",
        "ETA 12:34",
        "41.5 steps/s",
        "1.3k samples/s",
        "SGD",
        "CosineAnnealingLR step 19 per epoch",
        "amp bf16",
        "clip 1 norm 0.831 (37/1200 clipped)",
        "accumulate 4",
        "compiled",
        "cuda:0 ×2 ranks",
        "mem 3.1 GiB/80.0 GiB",
        "util 87%",
        "eval @1000: loss 0.2534",
    ):
        assert part in text, part
    one_group = replace(
        long_names_snapshot(),
        scheduler=replace(long_names_snapshot().scheduler, next_lrs=(9e-4,) * 12),
    )
    assert "next lr 9e-4" in render_header(one_group, WIDE).lines[1].plain


@pytest.mark.parametrize("state", [RunState.STOPPED, RunState.FINISHED, RunState.ERROR])
def test_header_has_no_live_rate_once_the_run_ended(state) -> None:
    snap = long_names_snapshot()
    running = "\n".join(t.plain for t in render_header(snap, WIDE).lines)
    assert "steps/s" in running and "samples/s" in running and "ETA" in running
    ended = replace(snap, status=replace(snap.status, state=state, steps_per_sec=12.4))
    text = "\n".join(t.plain for t in render_header(ended, WIDE).lines)
    assert state.value in text
    assert "steps/s" not in text and "samples/s" not in text and "ETA" not in text


def test_group_changes_are_its_own_and_the_whole_optimizers() -> None:
    changes = (
        Change(1, "lr a 0.1", "ui", ("a",), "lr"),
        Change(2, "lr b 0.1", "ui", ("b",), "lr"),
        Change(3, "rebuild Adam", "ui", (), "rebuild"),
    )
    assert [c.step for c in group_changes(changes, "a")] == [1, 3]


def test_snapshot_frames_carry_the_client_count() -> None:
    enc, asm = P.SnapshotEncoder(), P.SnapshotAssembler()
    snap = frozen_snapshot()
    asm.apply(P.parse_payload(enc.frame(snap, with_modules=True, log=())[4:]))
    assert asm.clients is None
    asm.apply(P.parse_payload(enc.frame(snap, with_modules=False, log=(), clients=3)[4:]))
    assert asm.clients == 3


# -- the app, at each size ------------------------------------------------------------------


@pytest.mark.parametrize("size", SIZES, ids=IDS)
async def test_numbers_are_whole_on_screen_at_each_size(size) -> None:
    snap = long_names_snapshot()
    app = ConsoleApp(FakeSession(snap))
    async with app.run_test(size=size) as pilot:
        await pilot.pause()
        await pilot.pause()
        header = render_header(snap, WIDE, tall=size[1] >= 30).lines
        for line in region_text(app, app.status_bar):
            assert_whole(line, [t.plain for t in header], f"header {size}")
        tree = app.layer_tree
        labels = [render_module_label(*key).plain for key in tree._label_keys.values()]
        for line in region_text(app, tree)[1:]:  # [0]: the pane's title border
            assert_whole(line, [*labels, "model"], f"tree {size}")
        table = app.group_table
        cells = [c.plain for r in table_rows(snap.groups, snap.signals) for c in r.values()]
        titles = [str(table.border_title), *(c.label for c in COLUMNS)]
        rows = region_text(app, table)
        for line in rows[1:]:
            assert_whole(line, cells + titles, f"group table {size}")
        assert "lr" in table.columns_shown
        shown = "\n".join(rows)
        assert "of 12 ↓" in screen_text(app), "the table says it scrolls"
        for g in snap.groups[:3]:
            assert f" {fmt_lr(g.lr)} " in shown


async def test_group_table_scroll_hint_follows_the_cursor() -> None:
    app = ConsoleApp(FakeSession(long_names_snapshot()))
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        assert "param groups 1–10 of 12 ↓" in screen_text(app)
        await pilot.press("tab", *["down"] * 11)
        await pilot.pause()
        assert "param groups 3–12 of 12 ↑" in screen_text(app)


async def test_enter_on_a_group_opens_its_detail_and_e_edits_its_lr() -> None:
    session = FakeSession(long_names_snapshot())
    app = ConsoleApp(session)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        await pilot.press("tab", "down", "down", "enter")
        await pilot.pause()
        assert isinstance(app.screen, GroupDetailScreen)
        text = screen_text(app)
        for part in (
            "group features.block0_convolution_with_a_long_name",
            "lr            0.000963",
            "momentum      0.9",
            "weight_decay  0.0005",
            "nesterov      no",
            "2 tensors · 1.8 KiB",
            "state reset  at step 820",
            "CosineAnnealingLR, step 19, per epoch",
            "next lr      0.0008667",
            "grad norm     0.375",
            "measured every 10 steps",
            "changes to this group (2)",
            "820  remote:4242  split features.block0_convolution_with_a_long_name m2",
            "1150  ui           clip 1",
        ):
            assert part in text, part
        assert "decay 0.1 classifier" not in text  # another group's change
        await pilot.press("e")
        await pilot.pause()
        assert isinstance(app.screen, EditLrScreen)
        assert "features.block0_convolution_with_a_long_name" in screen_text(app)
        assert session.submitted == []


async def test_i_on_a_tree_module_opens_its_groups_detail_and_follows_the_run() -> None:
    session = FakeSession(frozen_snapshot())
    app = ConsoleApp(session)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        await pilot.press("down", "i")  # "features": one group
        await pilot.pause()
        assert isinstance(app.screen, GroupDetailScreen)
        assert "group features" in screen_text(app)
        assert "never: the script's optimizer's own" in screen_text(app)
        snap = session.snap
        session.snap = replace(
            snap,
            seq=snap.seq + 1,
            groups=(replace(snap.groups[0], lr=2.5e-4, state_reset_step=1200), snap.groups[1]),
            changes=(Change(1200, "lr features 2.5e-4", "ui", ("features",), "lr"),),
        )
        await wait_until(
            pilot, lambda: "state reset  at step 1200" in screen_text(app), what="the reset"
        )
        assert "0.00025" in screen_text(app) and "lr features 2.5e-4" in screen_text(app)
        await pilot.press("escape")
        await pilot.pause()
        assert not isinstance(app.screen, GroupDetailScreen)
        await pilot.press("up", "i")  # the model: two groups
        await pilot.pause()
        assert not isinstance(app.screen, GroupDetailScreen)


@pytest.mark.slow
async def test_header_after_a_stop_shows_no_rate(run_factory) -> None:
    session = run_factory(paused=False)
    app = ConsoleApp(session)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_until(pilot, lambda: "steps/s" in app.status_bar.text.plain, what="a live rate")
        app.send("stop")
        await until_shown(pilot, app, lambda s: s.status.state == RunState.STOPPED, "STOPPED")
        await pilot.pause()
        header = screen_text(app).splitlines()[:3]
        assert "STOPPED" in header[0]
        assert not any("steps/s" in line or "ETA" in line for line in header), header
