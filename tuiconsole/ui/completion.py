"""Tab completion for the ':' command line: command names, targets, classes, KEY= items.

Pure functions of the line and what the snapshot knows (group names, module
paths), so they are tested without an app.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from tuiconsole.engine.commands import COMMAND_NAMES

# torch.optim classes offered by the rebuild modal and completed after `rebuild`.
OPTIMIZER_CLASSES: tuple[str, ...] = (
    "SGD",
    "Adam",
    "AdamW",
    "RMSprop",
    "Adagrad",
    "Adamax",
    "NAdam",
    "RAdam",
    "Adadelta",
)
HPARAM_KEYS: tuple[str, ...] = (
    "lr=",
    "momentum=",
    "weight_decay=",
    "betas=",
    "eps=",
    "nesterov=",
    "dampening=",
    "alpha=",
)

LRFIND_KEYS: tuple[str, ...] = ("from=", "to=", "steps=")


@dataclass(frozen=True)
class Vocabulary:
    """What can follow a command name, taken from the latest snapshot."""

    groups: Sequence[str] = ()
    modules: Sequence[str] = ()

    def targets(self) -> list[str]:
        return ["all", *self.groups, *self.modules]


def candidates(tokens: list[str], index: int, vocab: Vocabulary) -> list[str]:
    """Words that may stand at position ``index`` of a command whose words are ``tokens``."""
    if index == 0:
        return list(COMMAND_NAMES)
    cmd = tokens[0].lower()
    if cmd == "lr":
        return vocab.targets() if index == 1 else []
    if cmd == "decay":
        return vocab.targets() if index == 2 else []
    if cmd == "set":
        return vocab.targets() if index == 1 else list(HPARAM_KEYS)
    if cmd == "split":
        return [] if index == 1 else [*vocab.modules, *HPARAM_KEYS]
    if cmd == "rebuild":
        return [*OPTIMIZER_CLASSES, *HPARAM_KEYS] if index == 1 else list(HPARAM_KEYS)
    if cmd == "lrfind":
        return ["cancel", *vocab.targets(), *LRFIND_KEYS] if index == 1 else list(LRFIND_KEYS)
    return []


@dataclass(frozen=True)
class Completion:
    line: str  # the line after completing
    matches: tuple[str, ...]  # every candidate for the word being completed


def complete(line: str, vocab: Vocabulary) -> Completion:
    """Complete the last word of ``line`` (unique match: the word and a space; else the
    longest common prefix of the matches)."""
    head, sep, word = line.rpartition(" ")
    if not sep:
        head, word = "", line
    tokens = head.split()
    leading = line[: len(line) - len(line.lstrip())]
    pool = candidates(tokens, len(tokens), vocab)
    matches = tuple(sorted({c for c in pool if c.startswith(word)}, key=_order(pool)))
    if not matches:
        return Completion(line, ())
    prefix = head + sep if sep else leading
    if len(matches) == 1:
        only = matches[0]
        return Completion(prefix + only + ("" if only.endswith("=") else " "), matches)
    common = os.path.commonprefix(list(matches))
    return Completion(prefix + max(common, word, key=len), matches)


def _order(pool: list[str]) -> Callable[[str], int]:
    rank = {c: i for i, c in enumerate(pool)}
    return lambda c: rank.get(c, len(rank))
