"""A gevent worker refuses ``multiprocessing.Pool``, which would hang it.

Under gevent's patching a ``multiprocessing.Pool`` never finishes: its
result thread -- a greenlet now -- reads its pipe without yielding, so the
worker's hub stands still, and its children, forked from a process with
threads, deadlock. The whole worker hangs, its other handlers, timeouts and
SIGTERM included, while its heartbeat thread keeps it registered (the
syncteam audit, 2026-12-08: with the ``fork`` and the ``spawn`` start
method alike; ``multiprocessing.pool.ThreadPool`` and
``concurrent.futures.ProcessPoolExecutor`` ran). So in a patched worker a
``Pool`` is refused as it is made, with a :class:`~miyaq.errors.ConfigError`
that fails its task and names the pools where it works. Installed as an
import hook: the module is patched when the app imports it, and a worker
that never uses it does not pay for its import.
"""
from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
from types import ModuleType
from typing import Any, Sequence

from ...errors import ConfigError

MODULE = "multiprocessing.pool"

REFUSED = ("multiprocessing.Pool does not work in miyaq's gevent pool: under gevent's patching its result thread "
           "blocks the worker's hub and its children deadlock, so the whole worker would hang, SIGTERM included; "
           "run this handler with --pool threads or --pool processes, or use multiprocessing.pool.ThreadPool or "
           "concurrent.futures.ProcessPoolExecutor (docs/python-api.md, \"Choosing a pool\")")


def refuse_process_pools() -> None:
    """Make ``multiprocessing.Pool`` (not ``ThreadPool``) raise ``ConfigError``
    in this process, now if its module is imported, and whenever it is
    executed again: imported, or reloaded (``importlib.reload`` finds it
    through the hook too; before review43, 2026-12-08, a module imported
    before the refusal and then reloaded made Pools again). Idempotent. Only
    for a process gevent has patched."""
    module = sys.modules.get(MODULE)
    if module is not None:
        _refuse(module)
    if not any(isinstance(finder, _Hook) for finder in sys.meta_path):
        sys.meta_path.insert(0, _Hook())


def _refuse(module: ModuleType) -> None:
    pool, thread_pool = module.Pool, module.ThreadPool
    if getattr(pool, "_miyaq_refused", False):
        return

    def __new__(cls: type, *args: Any, **kwargs: Any) -> Any:
        # Refused before the object exists: a half-made Pool's __del__ would complain.
        if not issubclass(cls, thread_pool):
            raise ConfigError(REFUSED)
        return object.__new__(cls)

    pool.__new__ = __new__      # type: ignore[method-assign]
    pool._miyaq_refused = True


class _Hook(importlib.abc.MetaPathFinder):
    """Finds ``multiprocessing.pool`` as the path finder does and patches it once executed."""

    def find_spec(self, fullname: str, path: Sequence[str] | None,
                  target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        if fullname != MODULE:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path, target)
        loader = spec.loader if spec is not None else None
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        execute = loader.exec_module

        def exec_module(module: ModuleType) -> None:
            execute(module)
            _refuse(module)

        loader.exec_module = exec_module     # type: ignore[method-assign]
        return spec
