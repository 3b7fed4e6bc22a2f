"""``miyaq ring``, ``miyaq join``, ``miyaq leave``, ``miyaq ring weight``: the ring from the shell.

They talk to ZooKeeper through :class:`~miyaq.cluster.ring_admin.RingAdmin`
(no node needed) and, for the "tasks" column only, to each member's service
endpoint. Changes print what changed once the leader has published it.

``--zk`` falls back to ``MIYAQ_ZK``, then to the ``miyaq dev-cluster`` running
from this directory (:mod:`miyaq.devstate`), then ``127.0.0.1:2181``;
``--cluster`` to ``MIYAQ_CLUSTER``, then that dev cluster's, then
``default`` -- resolved when the command runs, not at import. An unreachable
ZooKeeper or a leader that does not publish in time is an error (exit 2).
How long they wait for ZooKeeper to answer is ``--zk-connect-timeout``, else
``MIYAQ_ZK_CONNECT_TIMEOUT`` (the node's and ``miyaq dev-cluster``'s option
and variable), else ``ZK_CONNECT_DEFAULT`` or ``--timeout`` if shorter: a
command, run again at will, rather than a node's start (10 s there).
A cluster protected by ZooKeeper ACLs needs its credentials: ``--zk-auth``
or ``--zk-auth-file``, else ``MIYAQ_ZK_AUTH`` / ``MIYAQ_ZK_AUTH_FILE``.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ..config import MAX_ZK_CONNECT_TIMEOUT, MIN_ZK_CONNECT_TIMEOUT, check_zk_connect_timeout
from ..errors import ConfigError, MiyaqError, Unavailable
from ..logs import escape_controls
from . import numbers
from .connect import add_key_options
from .connect import keys as key_options

from ..devstate import DEFAULT_CLUSTER, DEFAULT_CONNECT, DEFAULT_ZK

ZK_CONNECT_DEFAULT = 5.0
"""Seconds the ring commands wait for ZooKeeper to answer unless told (``--timeout`` caps it)."""
TASKS_TIMEOUT = 2.0
"""Seconds a member's service endpoint has to answer STATUS before its tasks show as n/a."""
NOT_REGISTERED_SHOWN = 20
"""Ids named in the line under the table that lists the nodes wanted in but not registered."""
STANDALONE_PROBE = 1.0
"""Seconds the node ``miyaq ring`` would otherwise reach (``MIYAQ_CONNECT``, else 127.0.0.1:7450) has to answer
STATUS when no ZooKeeper was named: one that answers as standalone has no ring to show."""


def _zk_options(p: argparse.ArgumentParser, *, nested: bool = False) -> None:
    # A nested parser must not overwrite with its defaults what was given
    # before the action word (``miyaq ring --zk H weight n1 2``).
    default: Any = argparse.SUPPRESS if nested else None
    p.add_argument("--zk", default=default, metavar="HOSTS",
                   help=f"ZooKeeper hosts [env MIYAQ_ZK; else the dev cluster started in this directory; "
                        f"default {DEFAULT_ZK}]")
    p.add_argument("--cluster", default=default, metavar="NAME",
                   help=f"cluster name [env MIYAQ_CLUSTER; default {DEFAULT_CLUSTER}]")
    p.add_argument("--zk-auth", default=default, metavar="USER:PASSWORD",
                   help="the cluster's ZooKeeper credentials, if its znodes carry ACLs [env MIYAQ_ZK_AUTH]")
    p.add_argument("--zk-auth-file", default=default, metavar="PATH",
                   help="a file holding USER:PASSWORD [env MIYAQ_ZK_AUTH_FILE]")
    p.add_argument("--zk-connect-timeout", type=numbers.real(MIN_ZK_CONNECT_TIMEOUT, MAX_ZK_CONNECT_TIMEOUT),
                   default=default, metavar="S",
                   help=f"seconds to wait for ZooKeeper to answer ({MIN_ZK_CONNECT_TIMEOUT:g}.."
                        f"{MAX_ZK_CONNECT_TIMEOUT:g}) [env MIYAQ_ZK_CONNECT_TIMEOUT; default {ZK_CONNECT_DEFAULT:g}, "
                        "or --timeout if shorter]")
    p.add_argument("--timeout", type=numbers.positive_seconds, default=default, metavar="S",
                   help="seconds to wait for each ZooKeeper request and for the leader to publish a change "
                        "[default 15]")
    p.add_argument("--json", action="store_true", default=default, help="print JSON")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ring", help="show the ring: members, leader, epoch, shares, tasks held",
                       description="Show the ring of a cluster, or change a node's weight "
                                   "(miyaq ring weight NODE W).")
    _zk_options(p)
    add_key_options(p)   # for the TASKS column, asked of each member's service port
    actions = p.add_subparsers(dest="ring_action", metavar="ACTION")
    w = actions.add_parser("weight", help="set a node's weight in the ring")
    w.add_argument("node", help="node id")
    w.add_argument("weight", type=numbers.real(0.0, above=True), help="new weight (> 0; 2 takes twice the share of 1)")
    _zk_options(w, nested=True)
    w.set_defaults(run=run_weight)
    p.set_defaults(run=run_ring)

    p = sub.add_parser("join", help="put a node in the ring (applied by the leader)")
    p.add_argument("node", help="node id")
    _zk_options(p)
    p.set_defaults(run=run_join)

    p = sub.add_parser("leave", help="take a node out of the ring; its tasks are handed off")
    p.add_argument("node", help="node id")
    _zk_options(p)
    p.set_defaults(run=run_leave)


def _admin(args: argparse.Namespace) -> Any:
    from ..cluster.ring_admin import RingAdmin
    # kazoo logs every refused connection attempt; the error below says it once.
    logging.getLogger("kazoo").setLevel(logging.CRITICAL)
    args.zk, args.cluster = _where(getattr(args, "zk", None), getattr(args, "cluster", None))
    timeout = getattr(args, "timeout", None) or 15.0
    return RingAdmin(args.zk, args.cluster, connect_timeout=zk_connect_timeout(args, timeout), timeout=timeout,
                     auth=zk_auth(args))


def zk_connect_timeout(args: argparse.Namespace, timeout: float) -> float:
    """Seconds to wait for ZooKeeper to answer: ``--zk-connect-timeout``,
    else ``MIYAQ_ZK_CONNECT_TIMEOUT``, else ``ZK_CONNECT_DEFAULT`` or
    ``timeout`` (the command's ``--timeout``) if shorter. A variable that is
    not 0.1..3600 seconds is a ``ConfigError`` naming it. Before 2026-12-06
    it was ``--timeout``, at most 5 s, with no way to wait longer."""
    given = getattr(args, "zk_connect_timeout", None)
    if given is not None:
        return float(given)
    raw = os.environ.get("MIYAQ_ZK_CONNECT_TIMEOUT")
    if not raw:
        return min(timeout, ZK_CONNECT_DEFAULT)
    try:
        return check_zk_connect_timeout(float(raw))
    except (ValueError, ConfigError):
        raise ConfigError(f"MIYAQ_ZK_CONNECT_TIMEOUT must be {MIN_ZK_CONNECT_TIMEOUT:g}..{MAX_ZK_CONNECT_TIMEOUT:g} "
                          f"seconds, not {raw!r}") from None


def _where(zk: str | None, cluster: str | None) -> tuple[str, str]:
    """The ZooKeeper hosts and cluster: as given, else from the environment or
    the dev cluster of this directory. With both given, ``.miyaq-dev.json`` is
    not read at all (before 2026-12-05 it always was: a FIFO there hung every
    ring command)."""
    if zk and cluster:
        return zk, cluster
    from ..devstate import default_zk
    default_hosts, default_cluster = default_zk()
    return zk or default_hosts, cluster or default_cluster


def zk_auth(args: argparse.Namespace) -> Any:
    """The ZooKeeper credentials from ``--zk-auth``/``--zk-auth-file``, else ``MIYAQ_ZK_AUTH``/``_FILE``."""
    from ..cluster.zk_auth import ZkAuth
    auth = getattr(args, "zk_auth", None)
    auth_file = getattr(args, "zk_auth_file", None)
    if not auth and not auth_file:
        auth, auth_file = os.environ.get("MIYAQ_ZK_AUTH"), os.environ.get("MIYAQ_ZK_AUTH_FILE")
    return ZkAuth.from_options(auth, auth_file)


def _with_admin(args: argparse.Namespace, fn: Callable[[Any], Any]) -> Any:
    admin = _admin(args)
    try:
        return fn(admin)
    except Unavailable as exc:
        hint = ""
        if exc.details.get("reason") == "unreachable":
            hint = (" Is ZooKeeper running? Set --zk or MIYAQ_ZK; one still starting may need a longer wait: "
                    f"--zk-connect-timeout S (MIYAQ_ZK_CONNECT_TIMEOUT; default {ZK_CONNECT_DEFAULT:g}s, or "
                    "--timeout if shorter).")
        if exc.details.get("reason") == "no_quorum":
            hint = " Ring changes are refused until then; the nodes keep serving tasks on the ring they hold."
        raise Unavailable(f"{exc.message} (cluster {args.cluster}).{hint}", hosts=args.zk) from None
    finally:
        admin.close()


def tasks_held(members: Mapping[str, Mapping[str, Any]], timeout: float = TASKS_TIMEOUT,
               key: str | None = None, server_key: str | None = None) -> dict[str, int | None]:
    """Live tasks per member, asked of each service endpoint at once (with the
    CURVE keys given, or MIYAQ_KEY/MIYAQ_SERVER_KEY); ``None`` if it did not answer."""
    from ..client.client import Client

    def ask(service: str | None) -> int | None:
        if not service:
            return None
        try:
            client = Client(service, request_timeout=timeout, green=False, key=key, server_key=server_key)
        except MiyaqError:
            return None
        try:
            return int(client.status()["totals"]["live"])
        except (MiyaqError, KeyError, TypeError, ValueError):
            return None
        finally:
            client.close(flush=False)

    if not members:
        return {}
    with ThreadPoolExecutor(max_workers=min(16, len(members))) as pool:
        answers = pool.map(ask, [m.get("service") for m in members.values()])
        return dict(zip(members, answers))


def _state(m: Mapping[str, Any]) -> str:
    if m["in_ring"]:
        return "in" if m["registered"] else "in (down)"
    if m["registered"]:
        return "joining" if m["joined"] else "out"
    return "wanted (down)" if m["joined"] else "gone"


def format_ring(status: Mapping[str, Any], hosts: str) -> str:
    """The human-readable table ``miyaq ring`` prints. What nodes registered
    in ZooKeeper (ids, endpoints) is shown with its control characters
    escaped (:func:`miyaq.logs.escape_controls`): it cannot command the
    terminal or add lines."""
    members = status["members"]
    in_ring = sum(m["in_ring"] for m in members.values())
    lines = [escape_controls(f"cluster {status['cluster']}  epoch {status['epoch']}  leader {status['leader'] or '-'}  "
                             f"in ring {in_ring}  (ZooKeeper {hosts})")]
    if status.get("desired_error"):
        lines.append(escape_controls(f"warning: {status['desired_error']}"))
    if not members:
        lines.append(escape_controls(f"no node has registered in cluster {status['cluster']}"))
        return "\n".join(lines)
    header = ("NODE", "RING", "SHARE", "WEIGHT", "TASKS", "SERVICE", "PEER", "PUB", "HTTP")
    rows: list[tuple[str, ...]] = [header]
    for node_id, m in members.items():
        tasks = m.get("tasks")
        rows.append(tuple(escape_controls(cell) for cell in (
            node_id + (" *" if node_id == status["leader"] else ""),
            _state(m),
            f"{m['share'] * 100:.1f}%",
            "-" if m["weight"] is None else f"{m['weight']:g}",
            "n/a" if tasks is None else str(tasks),
            m["service"] or "-", m["peer"] or "-", m["pub"] or "-", m["http"] or "-",
        )))
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.append("* leader")
    down = status.get("not_registered") or []
    if down:
        shown = ", ".join(down[:NOT_REGISTERED_SHOWN]) + (
            f" and {len(down) - NOT_REGISTERED_SHOWN} more" if len(down) > NOT_REGISTERED_SHOWN else "")
        count = "1 node wanted in the ring is" if len(down) == 1 else f"{len(down)} nodes wanted in the ring are"
        lines.append(escape_controls(
            f"{count} not registered (stopped, or gone for good): {shown}; `miyaq leave NODE` forgets one "
            "that will not come back (--json: not_registered)"))
    return "\n".join(lines)


def standalone_node(key: str | None = None, server_key: str | None = None,
                    timeout: float = STANDALONE_PROBE) -> str | None:
    """The id of the node ``MIYAQ_CONNECT`` names (else the default
    endpoint) if it answers STATUS within ``timeout`` as a standalone node
    (``cluster`` nil: docs/protocol.md, 5.2); None if it answers as a
    cluster's, or not at all."""
    from ..client.client import Client
    try:
        client = Client(None, request_timeout=timeout, green=False, key=key, server_key=server_key)
    except MiyaqError:
        return None
    try:
        status = client.status()
    except MiyaqError:
        return None
    finally:
        client.close(flush=False)
    if not isinstance(status, dict) or "cluster" not in status or status["cluster"] is not None:
        return None
    return str(status.get("node") or "?")


def _refuse_standalone(args: argparse.Namespace, key: str | None, server_key: str | None) -> None:
    """``miyaq ring`` given no ZooKeeper (no ``--zk``, ``MIYAQ_ZK`` or dev
    cluster here) next to a standalone node: say at once that it has no ring
    (a ConfigError, exit 2). Before 2026-12-07 the command waited 5 s for a
    ZooKeeper at 127.0.0.1:2181 and blamed it."""
    from ..devstate import read_state
    if getattr(args, "zk", None) or os.environ.get("MIYAQ_ZK") or read_state() is not None:
        return
    node = standalone_node(key, server_key)
    if node is not None:
        where = os.environ.get("MIYAQ_CONNECT") or DEFAULT_CONNECT
        raise ConfigError(escape_controls(
            f"the node at {where} ({node}) is standalone: it has no ring (a ring is a cluster's, kept in "
            "ZooKeeper). `miyaq status` shows that node; for a cluster's ring name its ZooKeeper: --zk HOSTS "
            "or MIYAQ_ZK (docs/cluster.md)"))


def run_ring(args: argparse.Namespace) -> int:
    from ..security.curve import client_curve
    key, server_key = key_options(args)
    client_curve(key, server_key)   # bad keys: one clear error, before ZooKeeper
    _refuse_standalone(args, key, server_key)
    status = _with_admin(args, lambda admin: admin.status())
    for node_id, count in tasks_held(status["members"], key=key, server_key=server_key).items():
        status["members"][node_id]["tasks"] = count
    status["zk"] = args.zk
    if args.json:
        print(json.dumps(status, indent=2, sort_keys=True))
    else:
        print(format_ring(status, args.zk))
    return 0


def describe_change(before: Mapping[str, Any], after: Mapping[str, Any]) -> list[str]:
    """Lines saying how the ring moved: epoch, members in or out, weights and shares."""
    old, new = before["members"], after["members"]
    lines = []
    if before["epoch"] != after["epoch"]:
        lines.append(f"epoch {before['epoch']} -> {after['epoch']}")
    for node_id in sorted(set(old) | set(new)):
        was = old.get(node_id, {"in_ring": False, "share": 0.0, "weight": None})
        now = new.get(node_id, {"in_ring": False, "share": 0.0, "weight": None})
        parts = []
        if was["in_ring"] != now["in_ring"]:
            parts.append("joined the ring" if now["in_ring"] else "left the ring")
        if was["weight"] != now["weight"] and now["weight"] is not None:
            old_weight = "-" if was["weight"] is None else f"{was['weight']:g}"
            parts.append(f"weight {old_weight} -> {now['weight']:g}")
        if abs(was["share"] - now["share"]) >= 0.0005:
            parts.append(f"share {was['share'] * 100:.1f}% -> {now['share'] * 100:.1f}%")
        if parts:
            lines.append(f"  {node_id}: {', '.join(parts)}")
    return lines


def _change(args: argparse.Namespace, apply: Callable[[Any], str], action: str) -> int:
    def run(admin: Any) -> tuple[dict[str, Any], str, dict[str, Any]]:
        before = admin.status(action)
        message = apply(admin)
        return before, message, admin.status()

    before, message, after = _with_admin(args, run)
    changes = describe_change(before, after)
    if args.json:
        print(json.dumps({"message": message, "changes": changes, "before": before, "after": after},
                         indent=2, sort_keys=True))
        return 0
    print(escape_controls(message))
    for line in changes or ["nothing changed in the ring"]:
        print(escape_controls(line))
    return 0


def run_join(args: argparse.Namespace) -> int:
    return _change(args, lambda admin: admin.join(args.node), f"join {args.node}")


def run_leave(args: argparse.Namespace) -> int:
    return _change(args, lambda admin: admin.leave(args.node), f"leave {args.node}")


def run_weight(args: argparse.Namespace) -> int:
    return _change(args, lambda admin: admin.set_weight(args.node, args.weight), f"set the weight of {args.node}")
