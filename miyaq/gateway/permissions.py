"""Which role each endpoint of the gateway needs (docs/http.md, "Tokens and
roles"), with the same meaning as on the ZeroMQ ports
(:mod:`miyaq.security.roles`): roles include one another, producer <
worker < admin.

* ``producer``: enqueue and submit, a task's status, result and cancel by
  its id, and the node's status, queues, metrics and OpenAPI document
  (what STATUS shows on ZeroMQ);
* ``worker``: also pull consumers (receive, ack, nack, touch);
* ``admin``: everything, also task listings, the dead-letter queue, queue
  limits and pauses, and the workers list.

An endpoint missing from :data:`NEEDS` needs ``admin`` (a new endpoint is
closed until someone decides otherwise), unless its path is in
:data:`OPEN`: the health probes ``GET /livez`` and ``GET /readyz``
(:mod:`miyaq.gateway.health`) answer without a token, also when tokens
are set, so that an orchestrator's probe (the kubelet, a compose
healthcheck) needs no secret in its manifest. They answer one status word
and nothing else; no other path may be added to the set without the same
care (before 2026-12-05 every endpoint needed a token, and a probe could
only be a TCP connect). The web console (``/ui``) follows
this table too: each of its pages and actions needs what the endpoint it
stands for needs (:mod:`miyaq.gateway.console.access`; before 2026-12-05 any
valid token could look at every page).
"""
from __future__ import annotations

from miyaq.security.roles import Role

P, W, A = Role.PRODUCER, Role.WORKER, Role.ADMIN
#: What each role includes.
RANK = {P: 1, W: 2, A: 3}

NEEDS: dict[tuple[str, str], Role] = {
    ("POST", "/queue"): P, ("POST", "/queue/{queue}"): P,
    ("POST", "/tasks"): P, ("GET", "/tasks/{id}"): P, ("DELETE", "/tasks/{id}"): P,
    ("GET", "/tasks/{id}/result"): P,
    ("GET", "/status"): P, ("GET", "/queues"): P, ("GET", "/queues/{queue}"): P,
    ("GET", "/queues/{queue}/limits"): P, ("GET", "/metrics"): P, ("GET", "/openapi.json"): P,
    ("POST", "/receive"): W, ("POST", "/receive_block"): W, ("POST", "/receive_noblock"): W,
    ("POST", "/tasks/{id}/ack"): W, ("POST", "/tasks/{id}/nack"): W, ("POST", "/tasks/{id}/touch"): W,
    ("GET", "/tasks"): A, ("PUT", "/queues/{queue}/limits"): A, ("DELETE", "/queues/{queue}/limits"): A,
    ("POST", "/queues/{queue}/pause"): A, ("POST", "/queues/{queue}/resume"): A, ("GET", "/workers"): A,
    ("GET", "/dead"): A, ("POST", "/dead/retry"): A, ("POST", "/dead/purge"): A,
}


#: Paths answered without a token, whatever the node's tokens: the health
#: probes, which reveal one status word (docs/http.md, "Health probes").
OPEN: frozenset[str] = frozenset({"/livez", "/readyz"})


#: Paths other services' health probes use, which this gateway does not
#: have: answered 404 without a token, naming :data:`OPEN` (before
#: 2026-12-07 a node with tokens answered them 401, and a probe given a
#: token then met a 404 that named no probe).
PROBE_GUESSES: frozenset[str] = frozenset({"/healthz", "/health", "/healthcheck", "/ready", "/live", "/ping"})


def is_probe_guess(path: str) -> bool:
    """True for a path another service's probe would use (:data:`PROBE_GUESSES`)."""
    return path in PROBE_GUESSES


def is_open(path: str) -> bool:
    """True for a path any caller may use without a token (:data:`OPEN`)."""
    return path in OPEN


def needs(method: str, template: str) -> Role:
    """The role an endpoint needs (admin if it is not in the table)."""
    return NEEDS.get((method.upper(), template), A)


def may(role: Role, needed: Role) -> bool:
    """True if a caller of ``role`` may do what needs ``needed`` (peer: nothing here)."""
    return RANK.get(role, 0) >= RANK[needed]
