"""Test-only access to what the Session seam keeps private.

A front-end never holds the trainer (session.py: the thread that trains owns
the model and optimizer). Tests that check the real optimizer, model or step
behind a LocalSession reach it here, so product code has no way to.
"""

from __future__ import annotations

from tuiconsole.engine.trainer import Trainer
from tuiconsole.session import LocalSession


def trainer_of(session: LocalSession) -> Trainer:
    """The trainer behind an in-process session (read it; drive it only through the session)."""
    return session._trainer
