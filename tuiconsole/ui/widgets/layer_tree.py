"""The model's layer tree: module path, class, parameter count, group(s) and lr.

Children are added lazily when a node is expanded, so a 5,000-module model opens
as fast as a 5-module one. Labels are rebuilt only for nodes already loaded, and
only when what they show (membership, marks, the displayed lr text) changed.
"""

from __future__ import annotations

from typing import ClassVar

from rich.style import Style
from rich.text import Text
from textual.binding import Binding, BindingType
from textual.widgets import Tree
from textual.widgets.tree import TreeNode

from tuiconsole.engine.snapshot import GroupView, ModuleNode, Snapshot
from tuiconsole.ui.fmt import Piece, ellipsize, fmt_count, fmt_lr, join_fitted
from tuiconsole.ui.theme import group_color

MAX_GROUP_TAGS = 3
# Expand the first level on open when the whole model is this small.
AUTO_EXPAND_MODULES = 80
MAX_FILTER_MATCHES = 500  # the / filter shows at most this many matches (and their parents)

TOGGLE_STYLE = Style.from_meta({"toggle": True})  # as Tree marks its expand icon

_LabelKey = tuple[ModuleNode, bool, tuple[tuple[str, int, str], ...]]


class LayerTree(Tree[str], inherit_bindings=False):
    """A Tree whose node data is the module path ("" is the model itself).

    Space and enter are deliberately not bound here: they are the console's
    pause/resume and edit-lr keys. Left/right collapse/expand instead.
    """

    HELP_SECTION = "model tree"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("up", "cursor_up", "Up", show=False, id="tree.up"),
        Binding("down", "cursor_down", "Down", show=False, id="tree.down"),
        Binding("right", "expand_or_down", "Expand", show=False, id="tree.expand"),
        Binding("left", "collapse_or_parent", "Collapse / parent", show=False, id="tree.collapse"),
        Binding("pageup", "page_up", "Page up", show=False, id="tree.page_up"),
        Binding("pagedown", "page_down", "Page down", show=False, id="tree.page_down"),
        Binding("home", "scroll_home", "First", show=False, id="tree.home"),
        Binding("end", "scroll_end", "Last", show=False, id="tree.end"),
    ]

    DEFAULT_CSS = """
    LayerTree {
        scrollbar-size-vertical: 1;
    }
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__("model", data="", id=id)
        self.auto_expand = False
        self.guide_depth = 2
        self.marked: set[str] = set()
        self._modules: dict[str, ModuleNode] = {}
        self._groups: dict[str, GroupView] = {}
        self._loaded: dict[str, TreeNode[str]] = {}
        self._label_keys: dict[str, _LabelKey] = {}
        self._version: int | None = None
        self._lr_key: tuple[tuple[str, str], ...] = ()
        self.filter_text = ""  # the / filter: only modules whose path or class has it

    # -- data -------------------------------------------------------------------------------

    @property
    def selected_path(self) -> str | None:
        node = self.cursor_node
        return None if node is None else node.data

    def label_of(self, path: str) -> str:
        """The plain text of a loaded node's label ("" if not loaded yet)."""
        node = self._loaded.get(path)
        return str(node.label) if node is not None else ""

    def module(self, path: str) -> ModuleNode | None:
        return self._modules.get(path)

    @property
    def module_paths(self) -> list[str]:
        return [p for p in self._modules if p]

    def show(self, snap: Snapshot) -> bool:
        """Update from a snapshot; returns True if any label changed."""
        lr_key = tuple((g.name, fmt_lr(g.lr)) for g in snap.groups)
        if snap.structure_version == self._version and lr_key == self._lr_key:
            return False
        self._groups = {g.name: g for g in snap.groups}
        self._lr_key = lr_key
        if snap.structure_version != self._version:
            self._version = snap.structure_version
            new = {m.path: m for m in snap.modules}
            if new.keys() != self._modules.keys():
                self._modules = new
                self._rebuild()
                return True
            self._modules = new
        return self._relabel_loaded()

    def subtree_paths(self, path: str) -> list[str]:
        """``path`` and every module below it (walks the snapshot's module table)."""
        out, todo = [], [path]
        while todo:
            p = todo.pop()
            node = self._modules.get(p)
            if node is None:
                continue
            out.append(p)
            todo.extend(node.children)
        return out

    def trainable_in_subtree(self, path: str) -> int:
        return sum(self._modules[p].n_params for p in self.subtree_paths(path))

    # -- marks ------------------------------------------------------------------------------

    def toggle_mark(self, path: str) -> bool:
        """Mark or unmark a module for ``s`` (split); returns True if now marked."""
        if path in self.marked:
            self.marked.discard(path)
        else:
            self.marked.add(path)
        self._relabel(path)
        return path in self.marked

    def clear_marks(self) -> None:
        paths, self.marked = self.marked, set()
        for p in paths:
            self._relabel(p)

    # -- the / filter -----------------------------------------------------------------------

    def set_filter(self, text: str) -> int:
        """Show only the modules whose path or class contains ``text`` (any case), with
        their parents; "" shows the whole tree again. Returns the number of matches."""
        self.filter_text = text.strip()
        self._rebuild()
        return len(self._filter_matches()) if self.filter_text else 0

    def _filter_matches(self) -> list[str]:
        needle = self.filter_text.lower()
        return [
            p
            for p, m in self._modules.items()
            if p and (needle in p.lower() or needle in m.cls.lower())
        ]

    def _rebuild(self) -> None:
        if not self.filter_text:
            self._reset()
            return
        matches = self._filter_matches()[:MAX_FILTER_MATCHES]
        keep = {""}
        for path in matches:
            parts = path.split(".")
            keep.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
        self.clear()
        self._loaded = {"": self.root}
        self._label_keys = {}
        if "" not in self._modules:
            return
        self._relabel("")
        todo = [self.root]
        while todo:
            node = todo.pop()
            mod = self._modules.get(node.data or "")
            for child_path in mod.children if mod is not None else ():
                child = self._modules.get(child_path)
                if child is None or child_path not in keep:
                    continue
                tnode = node.add(
                    self._label(child_path), data=child_path, allow_expand=bool(child.children)
                )
                self._loaded[child_path] = tnode
                todo.append(tnode)
            if node.children:
                node.expand()
        first = self._loaded.get(matches[0]) if matches else None
        self.call_after_refresh(self.move_cursor, first or self.root)  # once lines exist

    # -- tree building ----------------------------------------------------------------------

    def _reset(self) -> None:
        self.clear()
        self._loaded = {"": self.root}
        self._label_keys = {}
        self.marked &= self._modules.keys()
        root = self._modules.get("")
        if root is None:
            self.root.set_label(Text("(no model yet)", style="dim"))
            return
        self._relabel("")
        self._load_children(self.root)
        self.root.expand()
        if len(self._modules) <= AUTO_EXPAND_MODULES:
            for child in self.root.children:
                if child.allow_expand:
                    self._load_children(child)
                    child.expand()
        self.move_cursor(self.root)

    def _load_children(self, node: TreeNode[str]) -> None:
        if node.children:
            return
        mod = self._modules.get(node.data or "")
        if mod is None:
            return
        for child_path in mod.children:
            child = self._modules.get(child_path)
            if child is None:
                continue
            tnode = node.add(
                self._label(child_path), data=child_path, allow_expand=bool(child.children)
            )
            self._loaded[child_path] = tnode

    def on_tree_node_expanded(self, event: Tree.NodeExpanded[str]) -> None:
        event.stop()
        self._load_children(event.node)

    # -- labels -----------------------------------------------------------------------------

    def _label_key(self, path: str) -> _LabelKey | None:
        mod = self._modules.get(path)
        if mod is None:
            return None
        tags = []
        for name in mod.subtree_groups:
            g = self._groups.get(name)
            tags.append((name, g.index if g else -1, fmt_lr(g.lr) if g else "?"))
        return (mod, path in self.marked, tuple(tags))

    def _label(self, path: str) -> Text:
        key = self._label_key(path)
        assert key is not None
        self._label_keys[path] = key
        return render_module_label(*key)

    def _relabel(self, path: str) -> bool:
        tnode = self._loaded.get(path)
        key = self._label_key(path)
        if tnode is None or key is None or self._label_keys.get(path) == key:
            return False
        self._label_keys[path] = key
        tnode.set_label(render_module_label(*key))
        return True

    def _relabel_loaded(self) -> bool:
        changed = False
        for path in list(self._loaded):
            changed = self._relabel(path) or changed
        return changed

    def render_label(self, node: TreeNode[str], base_style: Style, style: Style) -> Text:
        """The label fitted to the cells left of the guides (see render_module_label)."""
        key = self._label_keys.get(node.data or "") if node.data is not None else None
        width = self.size.width - 1  # one cell kept for the vertical scrollbar
        if key is None or width <= 0:
            return super().render_label(node, base_style, style)
        depth, parent = 0, node.parent
        while parent is not None:
            depth, parent = depth + 1, parent.parent
        prefix = self.ICON_NODE_EXPANDED if node.is_expanded else self.ICON_NODE
        room = width - depth * self.guide_depth - (len(prefix) if node.allow_expand else 0)
        label = render_module_label(*key, width=max(0, room))
        label.stylize(style)
        if node.allow_expand:
            return Text.assemble((prefix, base_style + TOGGLE_STYLE), label)
        return label

    # -- actions ----------------------------------------------------------------------------

    def action_expand_or_down(self) -> None:
        node = self.cursor_node
        if node is None:
            return
        if node.allow_expand and not node.is_expanded:
            node.expand()
        else:
            self.action_cursor_down()

    def action_collapse_or_parent(self) -> None:
        node = self.cursor_node
        if node is None:
            return
        if node.allow_expand and node.is_expanded:
            node.collapse()
        elif node.parent is not None:
            self.move_cursor(node.parent)


# Which steps a too-long label takes first (fit_pieces ranks): a single group's tag cuts
# its group name, then drops its lr; then the frozen/tied parameter names go, then group
# names (leaving colour swatches),
# then the class, then the parameter count; the module's name is cut last, with "…".
RANK_LR, RANK_NOTE_NAMES, RANK_SWATCH, RANK_NOTE, RANK_CLASS, RANK_COUNT = 10, 15, 20, 25, 30, 40
MIN_NAME = 4
TAG_NAME_CUT = 16  # a group's name in a tag may be cut to this (names are cut, lrs never)


def render_module_label(
    mod: ModuleNode,
    marked: bool,
    tags: tuple[tuple[str, int, str], ...],
    width: int | None = None,
) -> Text:
    """``● name Class 12.3k ■group lr …``; dim when the subtree has no trainable parameters.

    ``width``: the cells the label may take. Too narrow, it drops whole parts (see the
    RANK_* order): a number is shown whole or not at all, and only the name is cut.
    """
    pieces = module_label_pieces(mod, marked, tags)
    if width is None:
        return join_fitted(pieces, 10**9)
    return join_fitted(pieces, width)


def module_label_pieces(
    mod: ModuleNode, marked: bool, tags: tuple[tuple[str, int, str], ...]
) -> list[Piece]:
    empty = mod.n_params_total == 0 or not mod.subtree_groups
    pieces = []
    if marked:
        pieces.append(Piece.fixed(Text("● ", style="bold reverse")))
    pieces.append(
        Piece((Text(mod.name, style="dim" if empty else "bold"),), name=True, min_name=MIN_NAME)
    )
    pieces.append(Piece.optional(Text(f" {mod.cls}", style="dim"), RANK_CLASS))
    if mod.n_params_total:
        count = Text(f" {fmt_count(mod.n_params_total)}", style="dim" if empty else "")
        pieces.append(Piece.optional(count, RANK_COUNT))
    if tags:
        pieces.append(_tag_piece(tags))
    notes = [(f"frozen:{','.join(mod.frozen)}", "frozen", "italic #87afd7")] if mod.frozen else []
    notes += [
        (f"tied:{own}→{owner or '(model)'}", "tied", "italic #d7af87") for own, owner in mod.shared
    ]
    for full, short, style in notes:
        pieces.append(
            Piece(
                (Text(f" {full}", style=style), Text(f" {short}", style=style), Text()),
                (RANK_NOTE_NAMES, RANK_NOTE),
            )
        )
    return pieces


def _tag_piece(tags: tuple[tuple[str, int, str], ...]) -> Piece:
    """The groups' tags: ``■name lr`` (one group), ``■a ■b ■c +2``; then swatches only."""
    shown = tags[:MAX_GROUP_TAGS]
    more = f" +{len(tags) - MAX_GROUP_TAGS}" if len(tags) > MAX_GROUP_TAGS else ""

    def color(index: int) -> str:
        return group_color(index) if index >= 0 else "default"

    named = Text()
    swatches = Text(" ")
    for name, index, _ in shown:
        named.append(f" ■{name}", style=f"bold {color(index)}")
        swatches.append("■", style=f"bold {color(index)}")
    if more:
        named.append(more, style="dim")
        swatches.append(more, style="dim")
    if len(tags) == 1:  # several groups: their lrs are in the group table
        name, index, lr = tags[0]
        style = f"bold {color(index)}"
        options = [
            Text.assemble((f" ■{ellipsize(name, cut)}", style), (f" {lr}", color(index)))
            for cut in (len(name), TAG_NAME_CUT)
        ]
        options.append(Text.assemble((" ■", style), (f" {lr}", color(index))))
        return Piece((*options, swatches), (RANK_LR, RANK_LR + 1, RANK_SWATCH))
    return Piece((named, swatches), (RANK_SWATCH,))
