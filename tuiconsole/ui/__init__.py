"""The Textual console: a client of :class:`tuiconsole.session.Session` only.

Nothing in this package imports torch or touches an optimizer: every key press
becomes a command text submitted through the session (so it is journaled and
replayable), and everything shown comes from the session's snapshots.
"""
