"""``python -m miyaq.worker.main [--supervised] APP``: one worker process, settings from ``MIYAQ_*``.

What ``miyaq worker`` runs for each worker process. With the gevent pool
(the default) its first act is gevent's ``patch_all``, before the app -- or
anything that imports ``ssl`` -- is imported: the only safe order. So
``miyaq worker APP`` replaces itself with this (same pid, ``exec``) rather
than patching late, and ``--processes N`` starts N of these.
"""
from __future__ import annotations

import os
import signal
import sys

from ..runtime.green import monkey_patch
from .signals import disregard


def main(argv: list[str]) -> int:
    """Exit status as ``miyaq worker``'s: 0, 1 if the worker crashed, 2 for
    bad settings. ``--supervised`` before the app: a worker process of
    ``miyaq worker --processes N``, which takes its stop from that
    supervisor alone (:func:`miyaq.worker.signals.stop_on_signals`)."""
    from ..errors import MiyaqError
    from .config import WorkerConfig
    from .launch import run_supervised
    supervised = argv[:1] == ["--supervised"]
    if supervised:
        argv = argv[1:]
    if len(argv) != 1:
        print("usage: python -m miyaq.worker.main [--supervised] MODULE:APP  (settings from MIYAQ_* variables)",
              file=sys.stderr)
        return 2
    try:
        return run_supervised(argv[0], WorkerConfig.load({}), supervised=supervised)
    except MiyaqError as err:
        print(f"miyaq: error: {err.message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    if sys.argv[1:2] == ["--supervised"]:
        # A terminal's Ctrl-C or hangup reaches the whole process group; the
        # supervisor passes the stop on. Disregarded from the start (the
        # worker's handlers say so again once installed).
        disregard(signal.SIGINT, signal.SIGHUP)
    if os.environ.get("MIYAQ_POOL", "gevent").strip() in ("", "gevent"):
        monkey_patch()
    sys.exit(main(sys.argv[1:]))
