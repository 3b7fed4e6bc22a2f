"""The HTTP gateway of a node: a gevent WSGI server on ``http_host:http_port``
(loopback unless told otherwise; ``--http-port 0`` turns it off), the
webhook deliverer and the node's Prometheus metrics.

Everything runs in the node's event loop: each HTTP connection is a
supervised greenlet ("http connection", at most ``http_max_connections``,
at most ``http_max_client_connections`` from one address; slow and
malformed clients are bounded by :mod:`miyaq.gateway.wsgi`; a handler's
failure is answered 500 and logged), handlers call the engine
directly and never block it (long-polls wait on the node's waiters). After
a request stores or revives tasks, :meth:`Gateway.redispatch` wakes one
supervised greenlet that fires due timers and runs the dispatcher, so HTTP
work is dispatched at once and bursts of requests share one pump.

The gateway is a part of the node, given what it serves: the core, the
role (ring, intake), the node's status report and metrics, the clockwork's
``wake`` and the supervisor.

Every answer is JSON except ``/metrics`` and the console's (``/ui``:
HTML, with the console's security headers, errors included); every JSON
error is ``{"error": {"code", "message", "field"?}}`` with the status of
:data:`miyaq.gateway.errors.HTTP_STATUS`.

An answer over 64 KiB counts in ``http_answer_budget`` from when it is
handed to the server until the server is done with it, sent or not; one
that would pass the budget, or its client's share of it (a quarter), is
answered 503 ``busy`` instead, and its request undone where it can be
(:mod:`miyaq.gateway.answers`).

``HEAD`` is answered on every GET route (:mod:`miyaq.gateway.router`): the
handler runs as for a GET and the answer goes out without its body, with
the status and headers, ``Content-Length`` included, the GET would have
had -- errors too. A long-poll does not wait for a HEAD (docs/http.md).

Before any handler, every request is screened (:mod:`miyaq.gateway.origin`):
a gateway without tokens answers only to a ``Host`` that is an IP address,
``localhost`` or a configured name of the node (DNS rebinding); a
state-changing request a browser sent for another site's page is refused;
and an endpoint that takes no forms refuses what an HTML form sends.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable
from http import HTTPStatus
from typing import Any

from miyaq.config import NodeConfig
from miyaq.constants import HTTP_STOP_TIMEOUT, LIMIT_SHARE_REFRESH
from miyaq.core.binding import binding, http_port
from miyaq.core.core import Core
from miyaq.core.handles import NodeRole, ScheduleBook, StatusReport
from miyaq.core.waiters import Revoked
from miyaq.errors import Busy, ConfigError, MiyaqError, ShuttingDown
from miyaq.gateway.answers import SMALL_ANSWER, AnswerBudget, HeldAnswer
from miyaq.gateway.destinations import Destinations
from miyaq.gateway import tls
from miyaq.gateway.auth import CHALLENGE, BearerAuth
from miyaq.gateway.errors import ClientClosedRequest, http_status
from miyaq.gateway.hangup import LongPolls
from miyaq.gateway.metrics import NodeMetrics
from miyaq.gateway.origin import HostCheck, refuse_cross_site, refuse_form_body
from miyaq.gateway.permissions import is_probe_guess
from miyaq.gateway.request import BodyBudget, Request, Response, json_response
from miyaq.gateway.routes import build_router
from miyaq.gateway.signing import WebhookSigner
from miyaq.gateway.tokens import WATCH_INTERVAL as TOKENS_WATCH_INTERVAL, parked_refusal
from miyaq.gateway.webhooks import StopHurry, WebhookDeliverer
from miyaq.gateway.wsgi import ConnectionLimits, GatewayServer
from miyaq.runtime import RESTART, Supervisor, green, wall
from miyaq.security.exposure import gateway_host, is_loopback
from miyaq.security.roles import Role

logger = logging.getLogger(__name__)

MUTATING = frozenset({"POST", "PUT", "DELETE"})


class Gateway:
    name = "gateway"

    def __init__(self, config: NodeConfig, core: Core, role: NodeRole, status: StatusReport, schedules: ScheduleBook,
                 metrics: NodeMetrics, wake: Callable[[float], None], supervisor: Supervisor,
                 hurry: StopHurry | None = None) -> None:
        """``hurry``: the node's, set when it is asked again to stop; the wait
        for webhook deliveries in flight at :meth:`stop` then ends at once."""
        self.config = config
        self.hurry = hurry
        self.core = core
        self.role = role
        self.status = status
        self.schedules = schedules
        self.wake = wake
        self.supervisor = supervisor
        self.host = gateway_host(config)
        self.port = config.http_port
        self.max_body = config.http_max_body
        # The request bodies read and held at once; a refusal counted as a refused request.
        self.bodies = BodyBudget(config.http_body_budget, metrics.http_refused)
        # The large answers built and not yet handed to the kernel (gateway.answers): bounded as the bodies.
        # One client's share of them: only while its connections are capped (0: an address is many clients).
        self.answers = AnswerBudget(config.http_answer_budget, metrics.http_refused,
                                    shared=config.http_max_client_connections > 0)
        metrics.http_answers_held.set_function(lambda: self.answers.held)
        self.auth = BearerAuth(config.http_token, config.http_tokens)
        self.auth.tokens.on_revoked.append(self.tokens_revoked)
        self.hosts = HostCheck((config.host, config.http_host, config.advertise, config.advertised_host))
        # Only an open gateway on loopback checks the Host: one bound beyond it
        # runs --insecure (anyone who reaches the port is admin already), and
        # the names it is reached by (a service's DNS name) are not known here.
        self.check_host = not self.auth.enabled and is_loopback(self.host)
        # Answered shutting_down when the drain starts (Waiters.stop); any left, when the gateway stops.
        self.long_polls = LongPolls()
        self.tls = tls.server_context(config.http_cert, config.http_key) if config.http_cert else None
        tls.ca_file(config.http_ca)
        self.destinations = Destinations(config.webhook_allow_hosts, config.webhook_allow_private)
        self.metrics = metrics
        # ConfigError: the node does not start (a file of secrets it cannot use)
        self.signer = WebhookSigner(config.webhook_signing_secrets) if config.webhook_signing_secrets else None
        self.deliverer = WebhookDeliverer(config, core.engine, core.dispatcher, core.gate, supervisor,
                                          self.destinations, metrics, self.redispatch, self.signer)
        core.engine.listeners.append(self.deliverer)
        self.router, self.console = build_router(self)   # the console: None when http_console is off
        self.server: GatewayServer | None = None
        self._wake = green.Event()
        self._stopping = False

    # -- lifecycle -------------------------------------------------------------------
    def setup(self) -> None:
        """Bind the HTTP port (before any part starts: a port in use stops the
        node before it joins a ring); it is served from :meth:`start`."""
        config = self.config
        pool = self.supervisor.pool("http connection", config.http_max_connections)
        limits = ConnectionLimits(header_timeout=config.http_header_timeout, body_timeout=config.http_body_timeout,
                                  idle_timeout=config.http_idle_timeout,
                                  per_client=config.http_max_client_connections, max_body=self.max_body)
        self.server = GatewayServer((self.host, self.port), self.app, spawn=pool, limits=limits,
                                    refused=self.metrics.http_refused, ssl_context=self.tls)
        with binding(http_port(self.host, self.port)):
            self.server.init_socket()
        self.port = self.server.server_port

    def start(self) -> None:
        self.deliverer.start()
        self.supervisor.spawn("http dispatch", self._dispatch_loop, policy=RESTART)
        self.supervisor.spawn("queue limit share", self._share_loop, policy=RESTART)
        if self.auth.tokens.path or self.signer is not None:
            self.supervisor.spawn("gateway files watch", self._watch_files, policy=RESTART)
        assert self.server is not None, "Gateway.setup binds the port first"
        self.server.start()
        if self.console is not None:
            self.console.start()
        logger.info("HTTP gateway on %s://%s:%d (tokens: %s; webhooks to %s)", "https" if self.tls else "http",
                    f"[{self.host}]" if ":" in self.host else self.host, self.port,
                    self.auth.tokens.summary() if self.auth.enabled else "none, open", self.destinations.describe())
        # Beyond loopback without tokens, the node started only with --insecure, and
        # build_node logged that (miyaq.security.exposure); these are the rest.
        exposed = not is_loopback(self.host)
        if exposed and self.tls is None:
            logger.warning("HTTP gateway reachable beyond loopback without TLS: tokens and payloads travel in "
                           "clear text (set http_cert and http_key, docs/http.md)")
        if exposed and self.destinations.allow_private and not self.destinations.allow_list.enabled:
            logger.warning("HTTP gateway reachable beyond loopback with webhook_allow_private and no "
                           "webhook_allow_hosts: anyone who can enqueue can make this node send requests to "
                           "its own network (docs/http.md)")

    def stop(self) -> None:
        """Stop serving; let webhook deliveries in flight finish for up to
        min(webhook_timeout, shutdown_grace) seconds, or until the node is
        hurried (a second signal). Idempotent."""
        if self._stopping:
            return
        self._stopping = True
        self._wake.set()
        if self.console is not None:
            self.console.stop()
        self.long_polls.end(ShuttingDown("the node is stopping; ask another node or again later"))
        if self.server is not None:
            self.server.stop(timeout=HTTP_STOP_TIMEOUT)
        config = self.config
        self.deliverer.stop(min(config.webhook_timeout, config.shutdown_grace), self.hurry)

    def kill(self) -> None:
        """Close the HTTP port and drop deliveries at once. Never raises."""
        self._stopping = True
        self._wake.set()
        try:
            if self.server is not None and not self.server.closed:
                self.server.close()
            self.deliverer.outbound.close()
        except Exception:
            logger.exception("closing the HTTP gateway failed")

    def redispatch(self) -> None:
        """Ask for timers and the dispatcher to run soon (coalesced; never blocks)."""
        self._wake.set()

    def _dispatch_loop(self) -> None:
        core = self.core
        while True:
            self._wake.wait()
            self._wake.clear()
            if self._stopping:
                return
            if core.draining:   # nothing new is leased
                continue
            # the node's own after-burst step: run the dispatcher and re-arm the
            # timer loop if a task just stored is due before its next wake-up
            self.wake(wall())

    def reload(self, reason: str) -> bool:
        """SIGHUP: read ``http_tokens``, ``webhook_signing_secrets``, the TLS
        certificate and key, and ``http_ca`` (the console's,
        :meth:`Peers.reload_ca`) again; each that fails to load is kept as it
        was (and logged), the others are still loaded. True if all loaded."""
        ok = self.reload_tokens(reason) if self.auth.tokens.path else True
        if self.signer is not None:
            ok = self.signer.reload(reason) and ok
        if self.tls is not None:
            ok = self.reload_certificate(reason) and ok
        if self.console is not None:
            ok = self.console.peers.reload_ca(reason) and ok
        return ok

    def reload_certificate(self, reason: str) -> bool:
        """Load ``http_cert`` and ``http_key`` again for connections accepted
        from now on; the certificate in use stays if they do not load."""
        try:
            context = tls.server_context(self.config.http_cert, self.config.http_key)
        except ConfigError as exc:
            logger.error("HTTPS certificate not reloaded (%s), keeping the one in use: %s", reason, exc.message)
            return False
        self.tls = context
        if self.server is not None:
            self.server.use_tls_context(context)
        logger.info("HTTPS certificate reloaded (%s) from %s", reason, self.config.http_cert)
        return True

    def reload_tokens(self, reason: str) -> bool:
        """Read ``http_tokens`` again; the previous tokens stay if it fails."""
        return self.auth.tokens.reload(reason)

    def tokens_revoked(self, changed: dict[str, Role | None]) -> None:
        """A reload removed tokens or changed their roles (``changed``: each
        token's :meth:`~miyaq.gateway.tokens.TokenTable.wait_key` and its role
        now, None if removed). Their long-polls parked before it end now,
        through the waiters' release that a revoked ZeroMQ key's take
        (:meth:`Waiters.release_keys`, one pass for them all; ``Core.revoke`` uses ``release_key``): a removed token's
        RECEIVE and RESULT waits answered 401, and the RECEIVEs of a token
        that may no longer receive tasks 403 -- as a fresh request with the
        token would be -- and nothing is leased to them any more. A task
        leased to one in the instant before is given back unspent when its
        request ends (:class:`~miyaq.gateway.tokens.TokenCheck`). Leases a
        token holds run out as usual. In the hub; never blocks."""
        waiters = self.core.waiters
        revoked = {}
        for key, role in changed.items():
            if key not in waiters.by_key:       # nothing parked
                continue
            refusal = parked_refusal(role, Role.WORKER, "receive tasks")
            if refusal is not None:     # removed (every wait ends), or no longer a worker (its RECEIVEs end)
                revoked[key] = Revoked(refusal, keep_results=role is not None)
        ended = waiters.release_keys(revoked) if revoked else 0     # one pass, however many tokens
        if ended:
            logger.warning("HTTP tokens removed or changed: %d long-poll(s) they parked ended (401/403)", ended)

    def _watch_files(self) -> None:
        """Reload ``http_tokens`` and ``webhook_signing_secrets`` when their file changes."""
        while not self._stopping:
            green.sleep(TOKENS_WATCH_INTERVAL)
            self.auth.tokens.poll()
            if self.signer is not None:
                self.signer.poll()

    def _share_loop(self) -> None:
        """Keep this node's share of every cluster-wide queue limit at 1/N of
        the ring's N members (tasks spread over all of them by hash)."""
        limits = self.core.limits
        while not self._stopping:
            members = self.role.members() or 1
            if limits.nodes != members:
                limits.set_share(members)
                logger.info("queue limits: this node enforces 1/%d of each limit", members)
                self.core.dispatcher.queue_limits_changed()     # a larger share may let waiting tasks start now
                self.redispatch()
            green.sleep(LIMIT_SHARE_REFRESH)

    # -- WSGI ------------------------------------------------------------------------
    def app(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        request = Request(environ, self.max_body, self.bodies)
        try:
            return self._answer(request, start_response)
        finally:
            request.release()     # its body, read or not, no longer counts in http_body_budget

    def _answer(self, request: Request, start_response: Callable[..., Any]) -> Iterable[bytes]:
        route_name = "unmatched"
        try:
            self._screen(request)
            if is_probe_guess(request.path):   # another service's probe path: its 404 names ours, for anyone
                self.router.match(request)     # (a route of that path, were one added, is served as any)
            caller = self.auth.check(request)
            route = self.router.match(request)
            route_name = route.template
            self.auth.authorize(caller, route.role, f"{route.method} {route.template}")   # a HEAD: GET's
            if not self._takes_forms(route.template):
                refuse_form_body(request, route.template)
            response = route.handler(request)
            if request.method in MUTATING:
                self.redispatch()
        except ClientClosedRequest as err:
            request.close = True       # nobody reads the answer: the connection ends with it
            response = self._error(err, request)
        except MiyaqError as err:
            response = self._error(err, request)
        except Exception:   # a bug must not take the node down; it is logged and answered 500
            logger.exception("HTTP %s %s failed", request.method, request.path)
            response = self._error(MiyaqError("internal error while handling the request"), request)
        if not all(_header_value_ok(value) for _, value in response.headers):
            # A bug let a client's text into a header (a line break would forge
            # another one): gevent would refuse it with a bare 500 of its own.
            logger.error("HTTP %s %s: a response header holds text no header can carry; answering 500",
                         request.method, route_name)
            response = self._error(MiyaqError("internal error while handling the request"), request)
        answer: Iterable[bytes] = [response.body]
        if request.method == "HEAD":    # the GET's status and headers, its Content-Length too; no body
            answer = [b""]
        elif len(response.body) > SMALL_ANSWER:
            try:
                answer = self.answers.hold(response.body, request.client)   # counted until pywsgi closes it
            except Busy as err:
                response.undo()          # refused unsent: a task leased to it goes back
                response = self._error(err, request)
                answer = [response.body]
        try:
            if self.console is not None and self.console.owns(request.path):
                response = self.console.secured(response)
            self.metrics.http_request(request.method, route_name, response.status)
            headers = response.headers + [("Content-Length", str(len(response.body)))]
            if request.close:
                headers.append(("Connection", "close"))
            start_response(f"{response.status} {_phrase(response.status)}", headers)
        except BaseException:
            if isinstance(answer, HeldAnswer):    # never handed to the server: nothing would close it
                answer.close()
            raise
        return answer

    def room_for(self, request: Request, least: int) -> None:
        """Before a handler builds an answer of at least ``least`` bytes
        (a bound it is sure of): refused 503 ``busy`` (Busy) now, unbuilt,
        if it could not be held (:meth:`AnswerBudget.room`). A HEAD's
        answer has no body to hold: never refused."""
        if request.method != "HEAD":
            self.answers.room(least, request.client)

    def _screen(self, request: Request) -> None:
        """Refuse (403) a request whose ``Host`` an open gateway on loopback
        does not answer to, and a state-changing one another site's page sent
        (:mod:`miyaq.gateway.origin`; before 2026-12-05 neither was checked
        outside the console, and the Host nowhere)."""
        if self.check_host:
            self.hosts.check(request)
        refuse_cross_site(request, self.tls is not None)

    def _takes_forms(self, template: str) -> bool:
        """Does the route read form bodies itself? The console's do (with
        their CSRF token); of the JSON API, only ``POST /queue`` does."""
        return self.console is not None and self.console.owns(template)

    def _error(self, err: MiyaqError, request: Request | None = None) -> Response:
        status = http_status(err)
        headers: list[tuple[str, str]] = []
        if status == 401:
            headers.append(CHALLENGE)
        elif status == 405:
            headers.append(("Allow", ", ".join(err.details.get("allow", []))))
        elif err.retryable:
            after = err.details.get("retry_after")      # seconds the node asked for (a view's turn), else 1
            seconds = math.ceil(after) if isinstance(after, (int, float)) and 1 <= after <= 3600 else 1
            headers.append(("Retry-After", str(seconds)))
        if status >= 500:
            logger.debug("HTTP answer %d: %s", status, err.message)
        if request is not None and self.console is not None and self.console.owns(request.path):
            return self.console.error_answer(request, err, headers)
        return json_response({"error": err.to_wire()}, status, headers)


def _phrase(status: int) -> str:
    """The status line's reason phrase (499 is nginx's, not in the RFCs)."""
    return "Client Closed Request" if status == 499 else HTTPStatus(status).phrase


def _header_value_ok(value: str) -> bool:
    """Printable ASCII only: no line break to forge a header with, nothing
    outside what every client reads."""
    return value.isascii() and value.isprintable()
