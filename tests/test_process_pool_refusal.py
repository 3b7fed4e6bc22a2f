"""The gevent pool's refusal of ``multiprocessing.Pool``
(:mod:`miyaq.worker.pools.process_pool_refusal`), seen from a patched
interpreter of its own."""
from __future__ import annotations

import pytest

from own_interpreter import run_script

pytestmark = pytest.mark.timeout(60)

RELOADED = """
from gevent import monkey; monkey.patch_all()
import importlib, multiprocessing, multiprocessing.pool
from miyaq.errors import ConfigError
from miyaq.worker.pools.process_pool_refusal import refuse_process_pools
refuse_process_pools()
importlib.reload(multiprocessing.pool)
try:
    multiprocessing.Pool(1)
except ConfigError as exc:
    print("refused:", exc)
else:
    print("made")
"""


def test_a_reloaded_multiprocessing_pool_is_still_refused():
    """Fault: the app imported ``multiprocessing.pool`` before the gevent
    pool refused it, then reloads it (``importlib.reload``, a code reloader).
    The reloaded module's ``Pool`` is refused too. Before (review43,
    2026-12-08), only a module imported after the refusal went through its
    import hook: the reloaded ``Pool`` was made and hung the worker."""
    code, out, err = run_script(RELOADED, timeout=30, hung="the reloaded multiprocessing.Pool was made and hung")
    assert code == 0, err
    assert out.startswith("refused: multiprocessing.Pool does not work in miyaq's gevent pool"), out
