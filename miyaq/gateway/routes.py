"""Every endpoint of the gateway, in one table (docs/http.md and
docs/openapi.json describe the same list; a test keeps them in step), each
with the role it needs (:mod:`miyaq.gateway.permissions`; None for the
health probes, which need no token: ``permissions.OPEN``), and
the web console's pages under ``/ui`` (docs/console.md), added by
:func:`miyaq.gateway.console.install`."""
from __future__ import annotations

from typing import TYPE_CHECKING

from miyaq.gateway.admin_api import AdminApi
from miyaq.gateway.console import Console, install
from miyaq.gateway.enqueue import Enqueue
from miyaq.gateway.health import Health
from miyaq.gateway.permissions import is_open, needs
from miyaq.gateway.pull_api import PullApi
from miyaq.gateway.router import Router
from miyaq.gateway.tasks_api import TasksApi

if TYPE_CHECKING:
    from .server import Gateway


def build_router(gateway: Gateway) -> tuple[Router, Console | None]:
    enqueue, tasks, pull, admin = Enqueue(gateway), TasksApi(gateway), PullApi(gateway), AdminApi(gateway)
    health = Health(gateway.core, gateway.role, gateway.metrics.storage)
    router = Router()
    for method, path, handler in (
        # miyamoto-compatible webhook enqueue
        ("POST", "/queue", enqueue.handle),
        ("POST", "/queue/{queue}", enqueue.handle),
        # JSON task API (named tasks for Python workers)
        ("POST", "/tasks", tasks.submit),
        ("GET", "/tasks", tasks.list),
        ("GET", "/tasks/{id}", tasks.status),
        ("DELETE", "/tasks/{id}", tasks.cancel),
        ("GET", "/tasks/{id}/result", tasks.result),
        # pull consumers
        ("POST", "/receive", pull.receive),
        ("POST", "/receive_block", pull.receive_block),
        ("POST", "/receive_noblock", pull.receive_noblock),
        ("POST", "/tasks/{id}/ack", pull.ack),
        ("POST", "/tasks/{id}/nack", pull.nack),
        ("POST", "/tasks/{id}/touch", pull.touch),
        # operating the node
        ("GET", "/status", admin.status),
        ("GET", "/queues", admin.queues),
        ("GET", "/queues/{queue}", admin.queue),
        ("GET", "/queues/{queue}/limits", admin.get_limits),
        ("PUT", "/queues/{queue}/limits", admin.put_limits),
        ("DELETE", "/queues/{queue}/limits", admin.delete_limits),
        ("POST", "/queues/{queue}/pause", admin.pause),
        ("POST", "/queues/{queue}/resume", admin.resume),
        ("GET", "/workers", admin.workers),
        ("GET", "/dead", admin.dead_list),
        ("POST", "/dead/retry", admin.dead_retry),
        ("POST", "/dead/purge", admin.dead_purge),
        ("GET", "/metrics", admin.metrics),
        ("GET", "/openapi.json", admin.openapi),
        # health probes for orchestrators: no token needed (permissions.OPEN)
        ("GET", "/livez", health.livez),
        ("GET", "/readyz", health.readyz),
    ):
        router.add(method, path, handler, None if is_open(path) else needs(method, path))
    return router, install(gateway, router, admin)
