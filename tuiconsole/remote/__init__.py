"""Detach and attach: serve a run over a per-user Unix socket, steer it from elsewhere.

    protocol.py   length-prefixed JSON frames; Snapshot <-> dict
    server.py     RemoteServer: a thread in the training process serving a Session
    client.py     RemoteSession: the Session protocol over the socket
    registry.py   the per-user runtime dir, run info files, `ls`, stale cleanup
    launch.py     the training process beside the console: start it, LaunchSession
    detach.py     the training process's side: serve, train, owner pipe, linger
    attach.py     `tuiconsole attach`: the console (or a plain stream) over a RemoteSession

Nothing in this package imports torch except through a LocalSession the caller
built, so `tuiconsole run`'s console, `ls` and `attach` start fast.
"""
