"""A node with keys (``--keys``): CURVE on its ports, a role on every command,
keys added and revoked while it runs, and the safe default (issue 9).

Each attack of issue 9 that concerns the service port is played by a raw
DEALER (:class:`secure_harness.Speaker`), as a stranger or a key holder on
the network would, against a real node.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import logging
import time

import pytest
import zmq

import miyaq
from miyaq.cli.main import main
from miyaq.protocol import commands as c
from miyaq.testing.harness import NodeProc, wait_for

from secure_harness import Keys, Speaker, make_keys, submit, task


@pytest.fixture
def keys(tmp_path) -> Keys:
    return make_keys(os.path.join(str(tmp_path), "keys"))


@pytest.fixture
def secure_node(make_node, keys):
    return make_node(keys=keys.dir)


def speaker(ctx: zmq.Context, node, keys: Keys, name: str | None) -> Speaker:
    """A connection with key ``name`` (None: no key at all)."""
    if name is None:
        return Speaker(ctx, node.endpoint)
    public, secret = keys.pair(name)
    return Speaker(ctx, node.endpoint, (public, secret, keys.server_public))


def stats(node) -> dict:
    return node.node.status(time.time())


def test_stranger_without_a_key_gets_nothing(ctx, secure_node, keys, caplog):
    """Attack: a stranger on the network lists, receives, cancels, registers as a
    worker and reads results on the service port. Without a key (and with a key
    of its own making) the handshake fails: no message reaches the node. The
    refusal is logged as one on the service port (before 2026-12-05 the line
    said the peer port, wherever the handshake came)."""
    caplog.set_level(logging.WARNING, logger="miyaq.security.zap")
    plain = speaker(ctx, secure_node, keys, None)
    public, secret = zmq.curve_keypair()
    forged = Speaker(ctx, secure_node.endpoint, (public, secret, keys.server_public))
    for attacker in (plain, forged):
        attacker.try_send(c.TASKS, {"req": 1})
        attacker.try_send(c.RECEIVE, {"req": 2, "queues": ["default"]})
        attacker.try_send(c.READY, {"worker": "evil", "queues": ["default"]})
        attacker.try_send(c.DEAD, {"req": 3, "op": "purge"})
        assert attacker.recv(wait=1.0) is None
    status = stats(secure_node)
    assert status["totals"]["workers"] == 0
    assert status["security"]["keys"] is True and status["security"]["handshakes_refused"] >= 1
    assert secure_node.node.core.endpoint.messages == 0     # nothing reached a handler
    refusals = [r.getMessage() for r in caplog.records if "CURVE handshake" in r.getMessage()]
    assert refusals and all(line.endswith("on the service port)") for line in refusals), refusals


def test_each_role_is_refused_what_it_may_not_send(ctx, secure_node, keys):
    """Attack: key holders overstep their role. A producer lists tasks, reads the
    dead-letter queue, pulls tasks and registers as a worker; a worker purges
    the dead-letter queue. Each is refused ``forbidden``, counted, and changes
    nothing; what each role may send is served."""
    producer = speaker(ctx, secure_node, keys, "producer")
    worker = speaker(ctx, secure_node, keys, "worker")
    admin = speaker(ctx, secure_node, keys, "admin")
    assert submit(producer, task("a" * 32))[0][1] == c.ACCEPTED
    assert producer.ok(c.TASK, {"id": "a" * 32})["task"]["state"] == "ready"
    assert producer.ok(c.STATUS)["security"]["keys"] is True
    for command, body in ((c.TASKS, {}), (c.DEAD, {"op": "list"}), (c.RECEIVE, {"queues": ["default"]}),
                          (c.ACK, {"id": "a" * 32, "attempt": 1})):
        body = producer.refused(command, body)
        assert "role producer" in body["message"]
    producer.send(c.READY, {"worker": "p", "queues": ["default"]})
    got = producer.recv()
    assert got is not None and got[0] == c.ERROR and got[1]["code"] == "forbidden"
    assert worker.refused(c.DEAD, {"op": "purge"})["code"] == "forbidden"
    assert worker.refused(c.TASKS)["code"] == "forbidden"
    assert stats(secure_node)["totals"]["workers"] == 0
    assert stats(secure_node)["totals"]["live"] == 1                   # nothing purged, nothing taken
    got_task = worker.ok(c.RECEIVE, {"queues": ["default"]})["task"]   # a worker may pull
    assert got_task["id"] == "a" * 32
    assert admin.ok(c.TASKS)["tasks"][0]["state"] == "running"         # an admin may list
    assert admin.ok(c.DEAD, {"op": "list"})["tasks"] == []
    assert stats(secure_node)["errors"]["forbidden"] == 7


def test_a_key_refused_for_its_role_is_named_in_the_nodes_log(ctx, secure_node, keys, caplog):
    """Fault: a worker started with a producer's key. It logs each refusal,
    but the node logged nothing (the oncall audit): an operator looking at
    the node saw no worker and no reason. Now the node warns, naming the
    key, its role and the command, a few lines a minute."""
    producer = speaker(ctx, secure_node, keys, "producer")
    with caplog.at_level(logging.WARNING, logger="miyaq.core.service"):
        for _ in range(3):
            producer.send(c.READY, {"worker": "p", "queues": ["default"]})
            got = producer.recv()
            assert got is not None and got[1]["code"] == "forbidden"
    lines = [r.getMessage() for r in caplog.records if r.name == "miyaq.core.service"]
    assert lines and all("key 'producer' has role producer, which may not send READY" in line for line in lines)


def test_keys_added_and_revoked_with_sighup_take_effect_without_a_restart(ctx, keys, tmp_path):
    """Fault: a worker's key leaks. The operator revokes it and adds a new one
    while the node runs, then sends SIGHUP: the old key is refused from its
    next message on (its connection stays open), the new key is served."""
    node = NodeProc(extra=["--keys", keys.dir], log_dir=str(tmp_path)).start()
    try:
        old = speaker(ctx, node, keys, "worker")
        wait_for(lambda: old.request(c.STATUS, wait=0.5) is not None, timeout=30)
        keys.store.revoke("worker")
        keys.store.add("worker2", "worker")
        node.signal(signal.SIGHUP)
        wait_for(lambda: "keys reloaded (SIGHUP)" in node.log_tail(), timeout=15)
        assert old.refused(c.STATUS)["message"].startswith("this connection's key is no longer authorized")
        new = speaker(ctx, node, keys, "worker2")
        assert new.ok(c.STATUS)["security"]["authorized"] == 4   # the cluster key, producer, admin, worker2
        fresh = Speaker(ctx, node.endpoint, (*_revoked_pair(keys, "worker"), keys.server_public))
        fresh.try_send(c.STATUS, {"req": 1})
        assert fresh.recv(wait=1.0) is None                 # a new connection with it: no handshake
    finally:
        node.terminate()


def _revoked_pair(keys: Keys, name: str) -> tuple[bytes, bytes]:
    from miyaq.security import certs
    cert = certs.read(os.path.join(keys.dir, "revoked", name + ".key_secret"))
    assert cert.secret is not None
    return cert.public, cert.secret


def test_non_loopback_bind_without_keys_refuses_to_start(capsys):
    """Fault: an operator binds a node to every interface and forgets the keys.
    It refuses to start with one line naming --keys and --insecure, status 2,
    before binding anything."""
    assert main(["node", "--host", "0.0.0.0", "--http-port", "0", "--port", "7"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("miyaq: error: refusing to bind 0.0.0.0 without keys")
    assert "--keys" in err and "--insecure" in err


INSECURE_SCRIPT = """
import json, time
from miyaq.testing.harness import ThreadNode
with ThreadNode(host="0.0.0.0", insecure=True, port=7450) as n:
    print(json.dumps(n.node.status(time.time())["security"]))
"""


def test_insecure_starts_exposed_with_a_warning_in_status():
    """``--insecure``: the node binds every interface without keys, and says so
    in STATUS. Run in a network namespace of its own (nothing outside it can
    reach the port)."""
    if os.geteuid() != 0:
        pytest.skip("needs root for a private network namespace (unshare --net); CI runs as root")
    proc = subprocess.run(["unshare", "--net", sys.executable, "-c", INSECURE_SCRIPT],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    security = json.loads(proc.stdout.strip().splitlines()[-1])
    assert security["keys"] is False and security["warning"].startswith("INSECURE: the ZeroMQ ports are bound")
    assert "INSECURE" in proc.stderr      # and in the log at start


def test_without_keys_nothing_is_checked(ctx, node):
    """The embedded default (loopback, no keys) serves every command as before."""
    anyone = Speaker(ctx, node.endpoint)
    assert submit(anyone, task("b" * 32))[0][1] == c.ACCEPTED
    assert anyone.ok(c.TASKS)["tasks"][0]["id"] == "b" * 32
    assert anyone.ok(c.STATUS)["security"] == {"keys": False, "handshakes_failed": {}}


def test_worker_with_its_key_runs_tasks_and_heartbeats_with_it(keys, procs, secure_node):
    """A worker process given its key (``--key``/``--server-key``) registers, runs
    tasks and reports them; its heartbeat thread uses the same key, so none of
    its side heartbeats is taken for a stranger's. A producer with its key
    reads the results."""
    procs_worker = procs.worker("apps.basic:app", secure_node.endpoint, 2, "--key", keys.secret("worker"),
                                "--server-key", keys.server_key)
    with miyaq.Client(secure_node.endpoint, key=keys.secret("producer"), server_key=keys.server_key) as client:
        handles = [client.submit("add", [i, 1]) for i in range(20)]
        assert [h.result(30) for h in handles] == [i + 1 for i in range(20)]
    wait_for(lambda: stats(secure_node)["totals"]["workers"] == 1, timeout=10)
    status = stats(secure_node)
    assert status["ignored"] == {"not_leased": 0, "foreign_heartbeats": 0}, procs_worker.log_tail()


def test_keyed_worker_runs_tasks_in_the_processes_pool(keys, procs, secure_node):
    """A worker with its key and ``--pool processes``: the fault would be the
    worker's CURVE client key applied to the children's private ``ipc://``
    socket, which it binds (a client key cannot serve, so the worker would not
    start). That socket has no CURVE; the links to the node keep the key."""
    proc = procs.worker("apps.basic:app", secure_node.endpoint, 2, "--pool", "processes",
                        "--key", keys.secret("worker"), "--server-key", keys.server_key)
    with miyaq.Client(secure_node.endpoint, key=keys.secret("producer"), server_key=keys.server_key) as client:
        handles = [client.submit("add", [i, 1]) for i in range(6)]
        assert [h.result(30) for h in handles] == [i + 1 for i in range(6)], proc.log_tail()
    assert stats(secure_node)["ignored"]["foreign_heartbeats"] == 0, proc.log_tail()


def test_a_revoked_key_is_sent_no_more_tasks_on_the_connections_it_holds(quick_key_watch, ctx, secure_node, keys):
    """Fault: a worker key leaks; the attacker registers a worker with it and
    parks a RECEIVE (up to an hour) before the operator revokes it. Before
    2026-12-05 the revoked key's own messages were refused from the reload
    on, but the node went on sending that connection DISPATCHes and answered
    its parked RECEIVE with a task, payload included. Now its workers are
    forgotten and its long-polls freed at the reload: new tasks stay ready."""
    pusher = speaker(ctx, secure_node, keys, "worker")
    pusher.send(c.READY, {"worker": "leaked", "queues": ["q1"], "capacity": 10})
    got = pusher.recv()
    assert got is not None and got[0] == c.WELCOME
    puller = speaker(ctx, secure_node, keys, "worker")
    puller.send(c.RECEIVE, {"req": 7, "queues": ["q2"], "timeout": 30})
    admin = speaker(ctx, secure_node, keys, "admin")
    wait_for(lambda: stats(secure_node)["waiters"]["pending"] == 1, what="the RECEIVE parked")
    keys.store.revoke("worker")      # the node sees authorized/ change and reloads (in its own hub)
    wait_for(lambda: stats(secure_node)["security"]["authorized"] == 3, what="the keys reloaded")
    wait_for(lambda: stats(secure_node)["waiters"]["pending"] == 0, what="the parked RECEIVE freed")
    wait_for(lambda: stats(secure_node)["totals"]["workers"] == 0, what="the worker forgotten")
    assert submit(admin, task("a" * 32, "q1"), task("b" * 32, "q2"))[0][1] == c.ACCEPTED
    assert [admin.ok(c.TASK, {"id": i * 32})["task"]["state"] for i in "ab"] == ["ready", "ready"]


def _first_contact_error(endpoint: str, **options: str) -> str:
    """The message of the ``Unavailable`` a client with ``options`` gets from its first STATUS."""
    client = miyaq.Client(endpoint, request_timeout=5.0, **options)
    try:
        with pytest.raises(miyaq.Unavailable) as failure:
            client.status()
    finally:
        client.close(flush=False)
    return str(failure.value)


def test_a_client_without_keys_is_told_the_node_needs_keys(secure_node):
    """Fault: a client without keys (no --key/--server-key) to a node with
    ``--keys``. The handshake fails at once (keys on one side only), and
    the error said "nothing is listening on ... -- is a node running?",
    sending the user to look for a node that runs. It now says the node
    needs keys and which options give them."""
    error = _first_contact_error(secure_node.endpoint)
    # The node closes at the greeting, so the client may or may not read its
    # greeting (the mechanism) first: both errors say what to pass.
    assert f"cannot reach any node: {secure_node.endpoint} " in error
    assert "pass --key and --server-key (MIYAQ_KEY, MIYAQ_SERVER_KEY; docs/security.md)" in error


def test_a_client_with_keys_is_told_the_node_does_not_use_them(make_node, keys):
    """Fault: a client given keys connects to a node without ``--keys``:
    the error listed a wrong node key, an unknown key or no node as the
    possible causes. It now says the node does not use keys."""
    plain = make_node()
    error = _first_contact_error(plain.endpoint, key=keys.secret("producer"), server_key=keys.server_key)
    assert f"cannot reach any node: {plain.endpoint} " in error
    assert "does not use keys" in error


@pytest.mark.parametrize("fault", ["no key", "unknown key", "wrong node key"])
def test_a_worker_whose_handshake_fails_logs_why(fault, keys, procs, secure_node, tmp_path):
    """Fault: a worker started without its key, with a key the node does
    not know, or with another cluster's node key. It retried in silence
    (nothing in its log said why no task came). It now logs, a few times a
    minute, why the node would not take it and what to change."""
    other = make_keys(str(tmp_path / "other"))
    options = {"no key": [],
               "unknown key": ["--key", other.secret("worker"), "--server-key", keys.server_key],
               "wrong node key": ["--key", keys.secret("worker"), "--server-key", other.server_key]}[fault]
    expected = {"no key": "pass --key and --server-key (MIYAQ_KEY, MIYAQ_SERVER_KEY; docs/security.md)",
                "unknown key": "refused this worker's key: the node does not know it",
                "wrong node key": "closed the connection during the key handshake: the node's public key given "
                                  "to this worker (--server-key) is most likely not that node's"}[fault]
    worker = procs.worker("apps.basic:app", secure_node.endpoint, 1, *options)
    wait_for(lambda: expected in worker.log_tail(200), timeout=30)
    assert f"cannot connect to node {secure_node.endpoint}: {secure_node.endpoint} " in worker.log_tail(200)
    assert stats(secure_node)["totals"]["workers"] == 0


def _raw_dealer(ctx: zmq.Context, endpoint: str, curve: tuple[bytes, bytes, bytes] | None = None) -> zmq.Socket:
    """A DEALER that sends one message (``curve``: public, secret, server's public)."""
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    if curve is not None:
        sock.curve_publickey, sock.curve_secretkey, sock.curve_serverkey = curve
    sock.connect(endpoint)
    sock.send_multipart([c.TAG, c.STATUS, b"\x80"])
    return sock


def _service_failures(node) -> dict[str, int]:
    return stats(node)["security"]["handshakes_failed"].get("service", {})


def test_handshakes_that_fail_before_any_key_is_checked_are_counted_and_logged(ctx, secure_node, keys,
                                                                               tmp_path, caplog):
    """Fault: a client without keys, and one given another cluster's node
    key, connect to a node with ``--keys``. Their handshakes fail before
    the node's ZAP handler is asked, and the node counted and logged
    nothing: an operator whose clients could not connect saw no trace of
    them. Now STATUS counts them by port and reason, and a warning (at
    most one a minute) says what they most likely are."""
    other = make_keys(str(tmp_path / "other"))
    public, secret = keys.pair("producer")
    with caplog.at_level(logging.WARNING, logger="miyaq.security.handshakes"):
        keyless = _raw_dealer(ctx, secure_node.endpoint)
        wrong = _raw_dealer(ctx, secure_node.endpoint, (public, secret, other.server_public))
        try:
            # Which side of a mechanism mismatch sees it first is a race of the
            # greetings (the node may see the client close): any reason counts.
            wait_for(lambda: _service_failures(secure_node).get("cryptographic error", 0) >= 1
                     and sum(_service_failures(secure_node).values()) >= 2, timeout=20)
        finally:
            keyless.close()
            wrong.close()
    failed = stats(secure_node)["security"]["handshakes_failed"]
    assert set(failed) == {"service"}, failed
    assert stats(secure_node)["security"]["handshakes_refused"] == 0
    warnings = [r.getMessage() for r in caplog.records if r.name == "miyaq.security.handshakes"]
    assert warnings and "failed before any key was checked (latest on the service port" in warnings[0], warnings


def test_a_keyed_client_to_a_node_without_keys_is_counted_there_too(ctx, make_node, keys):
    """Fault: a client with keys connects to a node without ``--keys``; the
    node had no count of it (its STATUS said only ``keys: false``)."""
    plain = make_node()
    public, secret = keys.pair("producer")
    sock = _raw_dealer(ctx, plain.endpoint, (public, secret, keys.server_public))
    try:
        wait_for(lambda: sum(_service_failures(plain).values()) >= 1, timeout=20)
    finally:
        sock.close()
    assert stats(plain)["security"]["keys"] is False


def test_a_handshake_closed_by_a_node_that_stopped_is_not_blamed_on_keys_alone():
    """Fault: a node killed while a worker's connection was in its handshake
    (a node restarted under its workers: an audit's run) had the worker
    warn only that the node wants keys -- for a cluster without any. A
    handshake closed without a word names a node stopping just then too;
    the other causes keep their own words."""
    from miyaq.runtime.connections import (
        CLOSED_IN_HANDSHAKE, CRYPTOGRAPHIC_ERROR, explain_handshake,
    )

    for secure in (False, True):
        assert "stopped just then" in explain_handshake(CLOSED_IN_HANDSHAKE, "tcp://n1:7450", secure)
    assert "--keys" in explain_handshake(CLOSED_IN_HANDSHAKE, "tcp://n1:7450", False)
    assert "just then" not in explain_handshake(CRYPTOGRAPHIC_ERROR, "tcp://n1:7450", True)


def test_a_worker_whose_handshake_fails_keeps_saying_why_not_that_no_node_runs(keys, procs, secure_node):
    """Fault (an operator-security audit): a worker without keys against a
    node with ``--keys`` logged the right reason for a moment, then -- the
    handshake warning held back by its once-a-minute limit -- its
    first-contact diagnosis, a bare TCP connect that finds the port open,
    said "accepts connections but no miyaq node answered ... is a node
    running?" every few seconds. The diagnosis now repeats the handshake's
    reason while handshakes fail."""
    worker = procs.worker("apps.basic:app", secure_node.endpoint, 1)
    wait_for(lambda: "(no answer for" in worker.log_tail(200), timeout=30)
    log = worker.log_tail(200)
    diagnosis = [line for line in log.splitlines() if "(no answer for" in line]
    assert all("pass --key and --server-key" in line or "closed the connection during the handshake" in line
               for line in diagnosis), diagnosis
    assert "is a node running?" not in log
