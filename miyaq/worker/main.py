"""``python -m miyaq.worker.main APP``: one worker process, settings from ``MIYAQ_*``.

What ``miyaq worker`` runs for each worker process. With the gevent pool
(the default) its first act is gevent's ``patch_all``, before the app -- or
anything that imports ``ssl`` -- is imported: the only safe order. So
``miyaq worker APP`` replaces itself with this (same pid, ``exec``) rather
than patching late, and ``--processes N`` starts N of these.
"""
from __future__ import annotations

import os
import sys

from ..runtime.green import monkey_patch


def main(argv: list[str]) -> int:
    """Exit status as ``miyaq worker``'s: 0, 1 if the worker crashed, 2 for bad settings."""
    from ..errors import MiyaqError
    from .config import WorkerConfig
    from .launch import run_supervised
    if len(argv) != 1:
        print("usage: python -m miyaq.worker.main MODULE:APP  (settings from MIYAQ_* variables)", file=sys.stderr)
        return 2
    try:
        return run_supervised(argv[0], WorkerConfig.load({}))
    except MiyaqError as err:
        print(f"miyaq: error: {err.message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    if os.environ.get("MIYAQ_POOL", "gevent").strip() in ("", "gevent"):
        monkey_patch()
    sys.exit(main(sys.argv[1:]))
