"""The interpreter options a worker's own processes are started with: the
worker's (:func:`interpreter_flags`).

A worker starts Python again for its gevent pool (re-exec'd, so gevent
patches first), for ``--processes N`` and for each processes-pool child.
Each is started with the options this interpreter runs with -- ``-I``,
``-E``, ``-s``, ``-P``, ``-O``, ``-W`` and ``-X`` ones -- as
:mod:`multiprocessing` starts its spawned children. Before 2026-12-07
(review32) they were started bare: under ``python -I -m miyaq worker``
(or ``-E``, ``-s``) they read ``PYTHONPATH`` and the user's site-packages,
which the worker had ignored, and could import other modules (another
miyaq, another version of the app) than the worker itself.
"""
from __future__ import annotations

import subprocess


def interpreter_flags() -> list[str]:
    """The command-line options that give a new interpreter this one's
    ``sys.flags``, warning options and ``-X`` options (none for a plain
    ``python``). The standard library's own helper, the one
    :mod:`multiprocessing` uses for its spawned children."""
    flags: list[str] = subprocess._args_from_interpreter_flags()  # type: ignore[attr-defined]
    return flags
