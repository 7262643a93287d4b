"""tuiconsole: a keyboard-driven terminal console for a live PyTorch training run.

``tuiconsole.steer(model, optimizer, ...)`` steers a loop of your own (see
tuiconsole/library.py). Importing this package imports no torch: the console
process must start fast; ``steer`` loads the engine when it is called.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tuiconsole.errors import StopTraining, TuiconsoleError

if TYPE_CHECKING:
    from tuiconsole.library import Steer

__version__ = "0.1.0"


def steer(*args: Any, **kwargs: Any) -> Steer:
    """Steer a training loop of your own: see :func:`tuiconsole.library.steer`."""
    from tuiconsole.library import steer as _steer

    return _steer(*args, **kwargs)


__all__ = ["StopTraining", "TuiconsoleError", "steer"]
