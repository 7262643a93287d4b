"""The user's keymap: a TOML file mapping binding ids to keys, applied with set_keymap.

``$XDG_CONFIG_HOME/tuiconsole/keymap.toml`` (default ``~/.config/tuiconsole/keymap.toml``)::

    # binding id = "key[,key...]"  (ids: the README's key table, or `?` in the console)
    pause = "p"
    resume = "p"
    edit_lr = "e,f2"

A file that does not parse, a value that is not a string, or an id no binding has
is reported in one line (the console writes it in its log); the rest applies, and
a file that does not parse changes nothing.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from textual.binding import Binding

ENV_PATH = "TUICONSOLE_KEYMAP"  # overrides the path (tests; a second keymap)


def default_path() -> Path:
    """Where the keymap lives: $TUICONSOLE_KEYMAP, else the XDG config dir."""
    explicit = os.environ.get(ENV_PATH)
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "tuiconsole" / "keymap.toml"


@dataclass(frozen=True)
class Keymap:
    keys: dict[str, str] = field(default_factory=dict)  # binding id -> keys
    warnings: tuple[str, ...] = ()


def binding_ids(bindings: Iterable[object]) -> set[str]:
    return {b.id for b in bindings if isinstance(b, Binding) and b.id}


def load_keymap(path: Path, known_ids: set[str]) -> Keymap:
    """Read ``path`` (absent: the defaults, silently)."""
    try:
        raw = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return Keymap()
    except OSError as exc:
        return Keymap(warnings=(f"keymap {path}: cannot read it ({exc}); default keys kept",))
    try:
        data = tomllib.loads(raw)
    except tomllib.TOMLDecodeError as exc:
        return Keymap(warnings=(f"keymap {path}: not valid TOML ({exc}); default keys kept",))
    keys: dict[str, str] = {}
    warnings: list[str] = []
    unknown = [k for k in data if k not in known_ids]
    if unknown:
        warnings.append(
            f"keymap {path}: no binding has the id {', '.join(map(repr, unknown))} "
            "(ids: the README key table); ignored"
        )
    for binding_id, value in data.items():
        if binding_id not in known_ids:
            continue
        if not isinstance(value, str) or not value.strip():
            warnings.append(f'keymap {path}: {binding_id} must be a key string like "p"; ignored')
            continue
        keys[binding_id] = value.strip()
    return Keymap(keys, tuple(warnings))
