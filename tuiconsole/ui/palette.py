"""The command palette (ctrl+p): the console's key actions, per-group actions, and any
typed command in the shared grammar."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

from textual.command import DiscoveryHit, Hit, Hits, Provider

from tuiconsole.engine.commands import COMMAND_NAMES, parse
from tuiconsole.errors import CommandError

if TYPE_CHECKING:
    from tuiconsole.ui.app import ConsoleApp


@dataclass(frozen=True)
class PaletteEntry:
    title: str
    run: Callable[[], object]
    help: str = ""


class ConsoleCommands(Provider):
    """Entries come from :meth:`ConsoleApp.palette_entries` (built from the bindings)."""

    @property
    def console(self) -> ConsoleApp:
        return self.app  # type: ignore[return-value]

    def _entries(self) -> list[PaletteEntry]:
        return self.console.palette_entries()

    async def discover(self) -> Hits:
        for entry in self._entries():
            yield DiscoveryHit(entry.title, entry.run, help=entry.help)

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for entry in self._entries():
            score = matcher.match(entry.title)
            if score > 0:
                yield Hit(score, matcher.highlight(entry.title), entry.run, help=entry.help)
        first = query.strip().split(" ", 1)[0].lstrip(":").lower()
        if first in COMMAND_NAMES:
            try:
                parse(query)
            except CommandError as exc:
                yield Hit(0.5, f"run: {query.strip()}", _noop, help=f"✗ {exc}")
            else:
                yield Hit(
                    1.0,
                    f"run: {query.strip()}",
                    partial(self.console.submit_line, query.strip().lstrip(":").strip()),
                    help="send this command to the run",
                )


def _noop() -> None:
    return None
