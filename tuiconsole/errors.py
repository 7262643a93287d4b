"""The one error family a user can cause. The CLI prints these in one line and exits 2."""


class TuiconsoleError(Exception):
    """An error whose message is written for the user (no traceback needed)."""


class ScriptError(TuiconsoleError):
    """The training script broke the script contract or failed to load."""


class CommandError(TuiconsoleError):
    """A command could not be parsed or applied; nothing was changed."""


class StopTraining(SystemExit):
    """Raised by ``steer.step()`` once the run has ended: a stop from a front-end,
    ``--max-steps`` reached, a failed run (``--nan stop``).

    A ``SystemExit``: a plain loop ends at the step boundary and ``python train.py``
    exits without a traceback (code 0; 1 for a failed run), its final checkpoint and
    the journal's end record written. ``except Exception`` does not catch it. Catch
    it (or use ``with tuiconsole.steer(...) as steer:``, which swallows a code-0 one)
    to go on after the loop.
    """

    def __init__(self, reason: str, code: int = 0) -> None:
        super().__init__(code)
        self.reason = reason

    def __str__(self) -> str:
        return self.reason
