"""``python -m miyaq.worker.main APP``: one worker process, settings from ``MIYAQ_*``.

What ``miyaq worker`` runs for each worker process. With the gevent pool
(the default) its first act is gevent's ``patch_all``, before the app -- or
anything that imports ``ssl`` -- is imported: the only safe order. So
``miyaq worker APP`` replaces itself with this (same pid, ``exec``) rather
than patching late, and ``--processes N`` starts N of these. The rest is
``miyaq worker APP`` itself, reading its settings from the environment.
"""
from __future__ import annotations

import os
import sys

from ..runtime.green import monkey_patch

if __name__ == "__main__":
    if os.environ.get("MIYAQ_POOL", "gevent").strip() in ("", "gevent"):
        monkey_patch()
    from ..cli.main import main
    sys.exit(main(["worker", *sys.argv[1:]]))
