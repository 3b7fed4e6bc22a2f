"""A handler that leaks file descriptors, as buggy application code does:
``hold(seconds)`` opens files until the process has no descriptor left and
keeps them for ``seconds`` (then closes them, as a leak fixed by a restart of
whatever held them would). For tests/test_open_files.py."""
from __future__ import annotations

import threading

import miyaq

app = miyaq.App()
HELD: list = []


def _release() -> None:
    while HELD:
        HELD.pop().close()


@app.task(name="hold")
def hold(seconds: float) -> int:
    """Open files until none can be; close them ``seconds`` later. Returns how many."""
    try:
        while True:
            HELD.append(open("/dev/null"))
    except OSError:
        pass
    threading.Timer(seconds, _release).start()     # a greenlet under the gevent pool
    return len(HELD)


@app.task(name="ping")
def ping() -> str:
    return "pong"
