"""The one error family a user can cause. The CLI prints these in one line and exits 2."""


class TuiconsoleError(Exception):
    """An error whose message is written for the user (no traceback needed)."""


class ScriptError(TuiconsoleError):
    """The training script broke the script contract or failed to load."""


class CommandError(TuiconsoleError):
    """A command could not be parsed or applied; nothing was changed."""
