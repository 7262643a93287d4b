"""Detach and attach: serve a run over a per-user Unix socket, steer it from elsewhere.

    protocol.py   length-prefixed JSON frames; Snapshot <-> dict
    server.py     RemoteServer: a thread in the training process serving a Session
    client.py     RemoteSession: the Session protocol over the socket
    registry.py   the per-user runtime dir, run info files, `ls`, stale cleanup
    detach.py     background (detached) runs: spawn, serve until done, linger
    attach.py     `tuiconsole attach`: the console (or a plain stream) over a RemoteSession

Nothing in this package imports torch except through a LocalSession the caller
built, so `tuiconsole ls` and `tuiconsole attach` start fast.
"""

# What ConsoleApp.run() returns (``app.exit(DETACH_RESULT)``) when the user detaches a
# foreground run: the CLI then keeps the run going in the background.
DETACH_RESULT = "detach"
