"""The HTTP gateway of a node: a gevent WSGI server on ``http_host:http_port``
(loopback unless told otherwise; ``--http-port 0`` turns it off), the
webhook deliverer and the node's Prometheus metrics.

Everything runs in the node's event loop: each HTTP connection is a
greenlet (at most ``http_max_connections``), handlers call the engine
directly and never block it (long-polls wait on the node's waiters). After
a request stores or revives tasks, :meth:`Gateway.redispatch` wakes one
supervised greenlet that fires due timers and runs the dispatcher, so HTTP
work is dispatched at once and bursts of requests share one pump.

Every answer is JSON except ``/metrics``; every error is
``{"error": {"code", "message", "field"?}}`` with the status of
:data:`miyaq.gateway.errors.HTTP_STATUS`.
"""
from __future__ import annotations

import ipaddress
import logging
import time
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, Callable, Iterable

import gevent
import gevent.event
import gevent.pool
from gevent.pywsgi import WSGIServer

from ..errors import MiyaqError
from ..node.metrics import NodeMetrics
from .allowlist import AllowList
from .auth import CHALLENGE, BearerAuth
from .errors import RETRY_LATER, http_status
from .request import Request, Response, json_response
from .routes import build_router
from .webhooks import WebhookDeliverer

if TYPE_CHECKING:
    from ..node.node import Node

logger = logging.getLogger(__name__)

STOP_TIMEOUT = 1.0
MUTATING = frozenset({"POST", "PUT", "DELETE"})


class Gateway:
    def __init__(self, node: "Node") -> None:
        config = node.config
        self.node = node
        self.host = config.http_host or config.host
        self.port = config.http_port
        self.max_body = config.http_max_body
        self.auth = BearerAuth(config.http_token)
        self.allow_list = AllowList(config.webhook_allow_hosts)
        self.metrics = NodeMetrics(node)
        node.metrics = self.metrics            # where the cluster sets ring and lag gauges
        self.deliverer = WebhookDeliverer(node, self.allow_list, self.metrics, self.redispatch)
        node.engine.listeners.append(self.deliverer)
        self.router = build_router(self)
        self.server: WSGIServer | None = None
        self._wake = gevent.event.Event()
        self._stopping = False

    # -- lifecycle -------------------------------------------------------------------
    def start(self) -> None:
        self.metrics.install()
        self.deliverer.start()
        self.node.spawn(self._dispatch_loop)
        pool = gevent.pool.Pool(self.node.config.http_max_connections)
        self.server = WSGIServer((self.host, self.port), self.app, spawn=pool, log=None,
                                 error_log=logging.getLogger(__name__ + ".wsgi"))
        self.server.start()
        self.port = self.server.server_port
        logger.info("HTTP gateway on http://%s:%d (auth %s, webhook allow-list %s)", self.host, self.port,
                    "on" if self.auth.enabled else "off", "on" if self.allow_list.enabled else "off")
        if not _is_loopback(self.host) and not self.allow_list.enabled:
            logger.warning("HTTP gateway reachable beyond loopback without webhook_allow_hosts: anyone "
                           "who can enqueue can make this node send requests anywhere (docs/http.md)")

    def stop(self) -> None:
        """Stop serving, let webhook deliveries finish (up to webhook_timeout). Idempotent."""
        if self._stopping:
            return
        self._stopping = True
        self._wake.set()
        if self.server is not None:
            self.server.stop(timeout=STOP_TIMEOUT)
        self.deliverer.stop(self.node.config.webhook_timeout)
        self.node.dispatcher.limits.close()
        self.metrics.uninstall()

    def redispatch(self) -> None:
        """Ask for timers and the dispatcher to run soon (coalesced; never blocks)."""
        self._wake.set()

    def _dispatch_loop(self) -> None:
        node = self.node
        while True:
            self._wake.wait()
            self._wake.clear()
            if self._stopping:
                return
            if not node.accepting_workers:   # the node is draining: nothing new is leased
                continue
            # the node's own after-burst hook: run the dispatcher and re-arm the
            # timer loop if a task just stored is due before its next wake-up
            node._after_burst(time.time())

    # -- WSGI ------------------------------------------------------------------------
    def app(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        request = Request(environ, self.max_body)
        route_name = "unmatched"
        try:
            self.auth.check(request)
            route = self.router.match(request)
            route_name = route.template
            response = route.handler(request)
            if request.method in MUTATING:
                self.redispatch()
        except MiyaqError as err:
            response = self._error(err)
        except Exception:   # a bug must not take the node down; it is logged and answered 500
            logger.exception("HTTP %s %s failed", request.method, request.path)
            response = self._error(MiyaqError("internal error while handling the request"))
        self.metrics.http_request(request.method, route_name, response.status)
        headers = response.headers + [("Content-Length", str(len(response.body)))]
        start_response(f"{response.status} {HTTPStatus(response.status).phrase}", headers)
        return [response.body]

    def _error(self, err: MiyaqError) -> Response:
        status = http_status(err)
        headers: list[tuple[str, str]] = []
        if status == 401:
            headers.append(CHALLENGE)
        elif status == 405:
            headers.append(("Allow", ", ".join(err.details.get("allow", []))))
        elif err.code in RETRY_LATER:
            headers.append(("Retry-After", "1"))
        if status >= 500:
            logger.debug("HTTP answer %d: %s", status, err.message)
        return json_response({"error": err.to_wire()}, status, headers)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
