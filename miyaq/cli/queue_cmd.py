"""``miyaq queue``: look at queues and change their limits at runtime, over
a node's HTTP gateway.

    miyaq queue list
    miyaq queue limit emails --rate 50 --burst 10 [--max-concurrent 4]
    miyaq queue limit emails --clear
    miyaq queue pause emails
    miyaq queue resume emails

``limit``, ``pause`` and ``resume`` are sent to every node of the ring (each
enforces its share of a cluster-wide limit; a paused queue starts nothing on
any node). A limit set here replaces the queue's previous one,
applies at each node's next dispatch and lasts until the node restarts;
lasting limits belong in the ``queue_limits`` setting (docs/http.md,
"Rate limits").
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import ssl
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import Any

from ..errors import InvalidField, MiyaqError, ProtocolError, Unavailable, from_wire
from ..logs import escape_controls
from .answers import reading
from . import numbers

TIMEOUT = 10.0
#: The most of a gateway's answer read (an answer of a queue listing is far smaller).
MAX_ANSWER = 16 * 1024 * 1024


def _gateway_options(p: argparse.ArgumentParser, *, nested: bool = False) -> None:
    """``--http`` and ``--token``, accepted before the action word and after it.

    On the action's parser the default is SUPPRESS, so an option given
    before the action (``miyaq queue --http URL list``) is not overwritten."""
    default: Any = argparse.SUPPRESS if nested else None
    p.add_argument("--http", default=default,
                   help="the node's HTTP gateway [env MIYAQ_HTTP; else what `miyaq dev-cluster` started in this "
                        "directory; else http://127.0.0.1:8088]")
    p.add_argument("--token", default=default, help="bearer token of the gateway [env MIYAQ_HTTP_TOKEN]")
    p.add_argument("--http-ca", default=default, metavar="PEM",
                   help="CA certificates to trust for an https:// gateway, e.g. its self-signed certificate "
                        "[env MIYAQ_HTTP_CA; default: the system's]")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("queue", help="list queues, set queue limits", description=(
        "Look at queues and change their limits at runtime, over a node's HTTP gateway."))
    _gateway_options(p)
    qsub = p.add_subparsers(dest="queue_command", metavar="ACTION")
    qsub.required = True
    ls = qsub.add_parser("list", help="every queue: counts, workers, limits")
    ls.add_argument("--json", action="store_true", help="print the raw JSON answer")
    _gateway_options(ls, nested=True)
    ls.set_defaults(run=run_list)
    lim = qsub.add_parser("limit", help="set (or --clear) a queue's rate limit and concurrency cap")
    _gateway_options(lim, nested=True)
    lim.add_argument("queue")
    lim.add_argument("--rate", type=numbers.real(0.0), default=None, help="tasks started per second, cluster-wide")
    lim.add_argument("--burst", type=numbers.real(0.0), default=None, help="bucket size (default: max(1, rate))")
    lim.add_argument("--max-concurrent", type=numbers.nonnegative, default=None,
                     help="tasks running at once, cluster-wide")
    lim.add_argument("--clear", action="store_true", help="remove the queue's limits")
    lim.set_defaults(run=run_limit)
    for action, text in (("pause", "stop starting tasks of a queue (submits are still accepted)"),
                         ("resume", "start tasks of a paused queue again")):
        cmd = qsub.add_parser(action, help=text)
        _gateway_options(cmd, nested=True)
        cmd.add_argument("queue")
        cmd.set_defaults(run=run_pause, paused=action == "pause")


def _base(args: argparse.Namespace) -> str:
    from ..devstate import default_http
    return (args.http or default_http()).rstrip("/")


def _gateway_url(base: str) -> str:
    """``base`` if it is a URL a request can go to (http or https, a host, a
    numeric port if any); else InvalidField saying so -- urllib's own
    ValueError ("unknown url type: 'localhost/queues'") was a traceback."""
    try:
        parts = urllib.parse.urlsplit(base)
        parts.port         # noqa: B018 -- raises ValueError for a port that is not 0..65535
    except ValueError as exc:
        reason = str(exc)
    else:
        if parts.scheme in ("http", "https") and parts.hostname:
            return base
        reason = "it needs http:// or https:// and a host"
    raise InvalidField(f"{base} is not a gateway URL miyaq can use ({reason}): give one as "
                       "http://HOST:PORT or https://HOST:PORT", field="http")


TOKEN_HINT = " (miyaq queue sends the token given by --token, else MIYAQ_HTTP_TOKEN)"


def _where_hint(args: argparse.Namespace) -> str:
    """What to do when no gateway answers: say which address was used and how
    to name another. Before 2026-12-07 the error was urllib's words alone
    (``<urlopen error [Errno 111] Connection refused>``): an operator whose
    node has ``MIYAQ_HTTP_PORT=27458`` was not told the command had tried
    8088, nor how to point it elsewhere."""
    given = "--http" if getattr(args, "http", None) else ("MIYAQ_HTTP" if os.environ.get("MIYAQ_HTTP") else "")
    source = (f"the address given by {given}" if given else
              "no --http or MIYAQ_HTTP given: the dev cluster's started in this directory, else the default")
    return (f" -- {source}. Is a node's HTTP gateway there (its --http-port, MIYAQ_HTTP_PORT, 8088 by "
            "default)? Name one with --http http://HOST:PORT or MIYAQ_HTTP")
"""Added to a 401's message: how this command is given a token (the
gateway's words speak of the Authorization header; before 2026-12-07 the
command printed them alone)."""


def _request(args: argparse.Namespace, method: str, path: str, body: Any = None, base: str | None = None) -> Any:
    base = base or _base(args)
    token = args.token if args.token is not None else os.environ.get("MIYAQ_HTTP_TOKEN", "")
    headers = {"Accept": "application/json"}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(_gateway_url(base) + path, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT, context=_tls(args)) as resp:
            text = resp.read(MAX_ANSWER + 1)
    except urllib.error.HTTPError as exc:
        try:
            error = json.loads(exc.read(MAX_ANSWER))["error"]
            if exc.code == 401 and isinstance(error.get("message"), str):
                error = {**error, "message": error["message"] + TOKEN_HINT}
            raised = from_wire(error)
        except (ValueError, KeyError, TypeError, AttributeError, OSError, http.client.HTTPException):
            raise MiyaqError(f"{method} {path}: HTTP {exc.code}") from None
        raise raised from None
    except http.client.HTTPException as exc:   # a broken status line, headers or body: not an HTTP server
        raise ProtocolError(f"{method} {path}: the answer from {base} is not HTTP ({exc.__class__.__name__})",
                            source=base) from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        if isinstance(reason, ssl.SSLCertVerificationError):
            raise Unavailable(f"the gateway at {base} has a certificate this machine does not trust "
                              f"({reason.verify_message}): pass --http-ca (or MIYAQ_HTTP_CA) with the "
                              "certificate of its CA, or its own if self-signed") from None
        raise Unavailable(f"cannot reach the node at {base}: {reason}{_where_hint(args)}") from None
    if len(text) > MAX_ANSWER:
        raise ProtocolError(f"{method} {path}: the answer from {base} is over {MAX_ANSWER // 2**20} MiB",
                            source=base)
    try:
        return json.loads(text)
    except ValueError:
        raise ProtocolError(f"{method} {path}: the answer from {base} is not JSON (is it a miyaq node's "
                            "HTTP gateway?)", source=base) from None


def _tls(args: argparse.Namespace) -> ssl.SSLContext:
    """How https:// gateways are verified: against --http-ca if given, else the
    system's CA certificates. There is no way to skip verification: give a
    self-signed certificate as its own CA."""
    ca = getattr(args, "http_ca", None) or os.environ.get("MIYAQ_HTTP_CA", "")
    try:
        return ssl.create_default_context(cafile=ca or None)
    except (OSError, ssl.SSLError) as exc:
        raise InvalidField(f"cannot use --http-ca {ca}: {exc}", field="http_ca") from None


def _gateways(args: argparse.Namespace) -> list[tuple[str, str | None]]:
    """(node id, HTTP gateway) of every ring member, the node asked first."""
    status = _request(args, "GET", "/status")
    with reading(f"the gateway at {_base(args)}", raw_hint=False):
        here = status["node"]
        http = status.get("ring", {}).get("http") or {}
        return [(here, _base(args))] + [(node, url) for node, url in sorted(http.items()) if node != here]


def _limits_text(limits: dict[str, Any] | None) -> str:
    if not limits:
        return "-"
    parts = []
    if limits.get("rate") is not None:
        parts.append(f"rate={limits['rate']:g}/s burst={limits['burst']:g}")
    if limits.get("max_concurrent") is not None:
        parts.append(f"max_concurrent={limits['max_concurrent']}")
    return " ".join(parts)


def run_list(args: argparse.Namespace) -> int:
    answer = _request(args, "GET", "/queues")
    if args.json:
        print(json.dumps(answer, indent=2))
        return 0
    columns = ("scheduled", "ready", "running", "retrying", "dead", "workers", "idle")
    with reading(f"the gateway at {_base(args)}"):
        print(f"{'QUEUE':<24}" + "".join(f"{c.upper():>10}" for c in columns) + "  LIMITS")
        for row in answer["queues"]:
            limits = _limits_text(row["limits"]) + (" (paused)" if row.get("paused") else "")
            cells = [escape_controls(str(row[c])) for c in ("name", *columns)]
            print(f"{cells[0]:<24}" + "".join(f"{cell:>10}" for cell in cells[1:]) + "  " + escape_controls(limits))
    for line in _other_members(args, answer):
        print(escape_controls(line))
    return 0


#: The queues named in the lines of :func:`_other_members` (the rest counted).
NAMED_DIFFERENCES = 10


def _held(answer: Any, where: str) -> dict[str, tuple[bool, str]]:
    """Each queue's (paused, limits text) in a gateway's ``GET /queues`` answer."""
    with reading(where, raw_hint=False):
        return {row["name"]: (bool(row.get("paused")), _limits_text(row["limits"])) for row in answer["queues"]}


def _other_members(args: argparse.Namespace, answer: Any) -> list[str]:
    """Lines naming the ring members whose pauses or limits differ from the
    node asked: each node holds its own, and a node restarted (an upgrade,
    a crash) or added since ``miyaq queue pause``/``limit`` holds none.
    The table shows one node's; before 2026-12-07 nothing said that the
    others differed (the sre audit: ``(paused)`` in the table while a node
    restarted by a rolling upgrade ran the queue's tasks). A member that
    cannot be asked is named too; nothing here fails the command, nor
    the node asked failing its ``GET /status`` (the table is printed:
    one line says the members were not compared)."""
    try:
        members = _gateways(args)
    except MiyaqError as exc:
        return [f"the other ring members: not compared ({exc})"]
    here_id, here_base = members[0]
    here = _held(answer, f"the gateway at {here_base}")
    lines: list[str] = []
    for node, base in members[1:]:
        if base is None:
            lines.append(f"{node}: no HTTP gateway: its pauses and limits are not compared")
            continue
        try:
            there = _held(_request(args, "GET", "/queues", base=base), f"the gateway at {base}")
        except MiyaqError as exc:
            lines.append(f"{node}: not compared ({exc})")
            continue
        differ = sorted(q for q in here.keys() | there.keys()
                        if here.get(q, (False, "-")) != there.get(q, (False, "-")))
        if not differ:
            continue
        shown = []
        for q in differ[:NAMED_DIFFERENCES]:
            (p_here, l_here), (p_there, l_there) = here.get(q, (False, "-")), there.get(q, (False, "-"))
            what = [f"{'paused' if p_here else 'running'} on {here_id}, {'paused' if p_there else 'running'} there"
                    ] if p_here != p_there else []
            what += [f"limits {l_here} on {here_id}, {l_there} there"] if l_here != l_there else []
            shown.append(f"{q} ({'; '.join(what)})")
        more = len(differ) - NAMED_DIFFERENCES
        lines.append(f"{node} differs: " + ", ".join(shown) + (f" and {more} more queue(s)" if more > 0 else ""))
    if any(" differs: " in line for line in lines):
        lines.append("a pause or a limit set by `miyaq queue` lasts until a node restarts, and a node added since "
                     "has none: set it again (`miyaq queue pause Q`, `miyaq queue limit Q ...`), or keep lasting "
                     "limits in queue_limits (docs/http.md)")
    return lines


def _segment(name: str) -> str:
    """``name`` as one segment of a URL's path: a queue named ``a/b`` or
    ``x?y`` is sent as itself (and refused by the node if not a queue name),
    never as another path or a query."""
    return urllib.parse.quote(name, safe="")


def run_limit(args: argparse.Namespace) -> int:
    """Apply to every node of the ring: each enforces its share (docs/http.md)."""
    path = f"/queues/{_segment(args.queue)}/limits"
    if args.clear:
        if args.rate is not None or args.burst is not None or args.max_concurrent is not None:
            raise InvalidField("--clear takes no other limit options")
        method, body = "DELETE", None
    elif args.rate is None and args.max_concurrent is None:
        raise InvalidField("give --rate and/or --max-concurrent (or --clear)")
    else:
        method, body = "PUT", {"rate": args.rate, "burst": args.burst, "max_concurrent": args.max_concurrent}

    def describe(answer: Any) -> str:
        if args.clear:
            return f"{args.queue}: limits {'removed' if answer['removed'] else 'were not set'}"
        return f"{answer['queue']}: {_limits_text(answer['limits'])}"

    return _on_every_node(args, method, path, body, describe, "set queue_limits in its configuration")


def run_pause(args: argparse.Namespace) -> int:
    """Pause or resume the queue on every node of the ring."""
    action = "pause" if args.paused else "resume"

    def describe(answer: Any) -> str:
        state = "paused" if answer["paused"] else "running"
        return f"{answer['queue']}: {state}" + ("" if answer["changed"] else " (already)")

    return _on_every_node(args, "POST", f"/queues/{_segment(args.queue)}/{action}", None, describe,
                          f"cannot {action} {args.queue} there")


def _on_every_node(args: argparse.Namespace, method: str, path: str, body: Any,
                   describe: Callable[[Any], str], if_no_gateway: str) -> int:
    """Send one request to every member's gateway and print each answer;
    exit status 1 if a member has no gateway."""
    missed = 0
    for node, base in _gateways(args):
        if base is None:
            missed += 1
            print(escape_controls(f"{node}: no HTTP gateway; {if_no_gateway}"))
            continue
        answer = _request(args, method, path, body, base=base)
        with reading(f"the gateway at {base}", raw_hint=False):
            print(escape_controls(f"{node}: {describe(answer)}"))
    return 1 if missed else 0
