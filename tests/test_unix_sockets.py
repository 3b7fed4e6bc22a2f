"""``miyaq node --bind ipc:///path/node.sock``: producers, workers and pull
consumers on the node's host reach it over a unix socket, besides its TCP
port (docs/configuration.md, "Unix sockets").
"""
from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys

import pytest
import zmq

import miyaq
from miyaq.protocol import commands as c
from miyaq.testing.harness import free_port, wait_for
from secure_harness import Speaker, make_keys

MIYAQ = [sys.executable, "-m", "miyaq.cli.main"]


def ipc(path) -> str:
    return f"ipc://{path}"


def test_producer_and_worker_over_a_unix_socket_only(procs, tmp_path):
    """A producer and a worker process that are given only the node's unix
    socket: the node makes its directory, the socket file has mode 0660, tasks
    run and their results come back, and the producer does not also dial the
    node's TCP endpoint it learns from the ring."""
    path = tmp_path / "run" / "miyaq" / "node.sock"
    node = procs.node("--bind", ipc(path))
    assert stat.S_ISSOCK(os.stat(path).st_mode)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o660
    procs.worker("apps.basic:app", ipc(path), 2)
    with miyaq.Client(ipc(path), submit_timeout=10) as client:
        handles = [client.submit("add", [i, 1]) for i in range(10)]
        assert [h.result(30) for h in handles] == [i + 1 for i in range(10)]
        consumer = client.submit("add", [2, 2], queue="pulled")
        got = client.receive(["pulled"], timeout=10)
        assert got is not None and got.id == consumer.id
        got.ack(4)
        assert consumer.result(10) == 4
        # Discovery asked the node for the ring and took its TCP endpoint for
        # an alias of the unix socket it already reaches the node by.
        tcp = client.ring()["members"][f"n{node.port}"]["service"]
        wait_for(lambda: client.nodes.aliases, what="a discovery RING answered")
        assert client.nodes.aliases == {tcp: 0}
        assert client.nodes.endpoints == [ipc(path)]
        assert client.status()["totals"]["workers"] == 1
    node.kill()


def test_mode_is_set_and_the_socket_file_removed_at_stop(make_node, tmp_path):
    """--bind-mode 666 lets every local user connect; a node that stops
    removes its socket file."""
    path = tmp_path / "node.sock"
    node = make_node(bind=ipc(path), bind_mode="666")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o666
    node.stop()
    assert not path.exists()


def test_the_socket_file_is_owner_only_until_its_mode_is_set(ctx, tmp_path):
    """Fault: another local user connects in the moment between the bind and
    the chmod -- the file is made owner-only, whatever the umask."""
    from miyaq.core.binding import unix_socket
    path = tmp_path / "run" / "node.sock"
    sock = ctx.socket(zmq.ROUTER)
    previous = os.umask(0o000)          # the most permissive umask a node may start with
    try:
        with unix_socket(ipc(path), 0o660):
            sock.bind(ipc(path))
            during = stat.S_IMODE(os.stat(path).st_mode)
        assert os.umask(0o000) == 0o000, "the umask is put back"
    finally:
        os.umask(previous)
        sock.close(linger=0)
    assert during & 0o077 == 0, oct(during)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o660


def test_stale_socket_file_is_removed_at_start(make_node, client_for, tmp_path):
    """Fault: a node killed with -9 left its socket file; nothing listens on it.
    The next node removes it and binds the path."""
    path = tmp_path / "node.sock"
    left = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    left.bind(str(path))
    left.close()                  # the file stays, nobody listens
    assert stat.S_ISSOCK(os.stat(path).st_mode)
    make_node(bind=ipc(path))
    assert client_for(ipc(path)).status()["accepting"] is True


def failed_start(*argv: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIYAQ_")}
    done = subprocess.run([*MIYAQ, "node", "--port", str(free_port()), "--http-port", "0", *argv],
                          capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-3000:]
    return done.stderr.strip().splitlines()[-1]


def test_socket_a_live_process_listens_on_is_refused(tmp_path):
    """Fault: another process listens on the --bind path (libzmq alone would
    unlink its file and take the path over)."""
    path = tmp_path / "node.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as other:
        other.bind(str(path))
        other.listen()
        line = failed_start("--bind", ipc(path))
        assert line == (f"miyaq: error: unix socket {path} is in use: another process listens there (is a node "
                        "already running with it?); pass --bind another path")
        assert stat.S_ISSOCK(os.stat(path).st_mode)       # left alone


def test_path_that_is_not_a_socket_is_refused(tmp_path):
    """Fault: --bind names a regular file."""
    path = tmp_path / "notes.txt"
    path.write_text("keep me")
    line = failed_start("--bind", ipc(path))
    assert f"{path} exists and is not a unix socket" in line
    assert path.read_text() == "keep me"


@pytest.mark.parametrize("endpoint, words", [
    ("tcp://127.0.0.1:7999", "bind takes unix socket endpoints"),
    ("ipc:///" + "x" * 120, "longer than 107 bytes"),
])
def test_bad_bind_endpoint_is_refused(endpoint, words):
    """Fault: --bind given a TCP endpoint, or a path too long for a unix socket."""
    assert words in failed_start("--bind", endpoint)


def test_keys_apply_on_the_unix_socket(make_node, tmp_path):
    """Attack: a local process without an authorized key connects to the
    node's unix socket. With --keys the socket runs CURVE and ZAP as the TCP
    port does: no message of the stranger reaches the node; a producer with
    its key is served."""
    keys = make_keys(str(tmp_path / "keys"))
    path = tmp_path / "node.sock"
    node = make_node(keys=keys.dir, bind=ipc(path))
    ctx = zmq.Context()
    try:
        stranger = Speaker(ctx, ipc(path))
        stranger.try_send(c.STATUS, {"req": 1})
        assert stranger.recv(wait=1.0) is None
        assert node.node.core.endpoint.messages == 0
        public, secret = keys.pair("producer")
        producer = Speaker(ctx, ipc(path), (public, secret, keys.server_public))
        assert producer.ok(c.STATUS)["accepting"] is True
    finally:
        ctx.destroy(linger=0)
    with miyaq.Client(ipc(path), key=keys.secret("producer"), server_key=keys.server_key) as client:
        assert client.submit("add", [1, 2]).id


def test_bind_repeats_on_the_command_line_and_is_a_list_in_toml(tmp_path):
    """--bind may be given more than once; MIYAQ_BIND and the TOML file take
    several endpoints (commas, a list)."""
    from miyaq.cli.main import build_parser
    from miyaq.config import NodeConfig

    args = build_parser().parse_args(["node", "--bind", "ipc:///run/a.sock", "--bind", "ipc:///run/b.sock"])
    assert NodeConfig.load(vars(args), environ={}).ipc_endpoints == ["ipc:///run/a.sock", "ipc:///run/b.sock"]
    toml = tmp_path / "node.toml"
    toml.write_text('bind = ["ipc:///run/a.sock", "ipc:///run/c.sock"]\n')
    assert NodeConfig.load({"config": str(toml)}, environ={}).ipc_endpoints == ["ipc:///run/a.sock",
                                                                                 "ipc:///run/c.sock"]
    env = {"MIYAQ_BIND": "ipc:///run/a.sock,ipc:///run/d.sock"}
    assert NodeConfig.load({}, environ=env).ipc_endpoints == ["ipc:///run/a.sock", "ipc:///run/d.sock"]


def test_why_a_unix_socket_does_not_answer(tmp_path):
    """Fault: a worker or client is given an ipc:// path where no node listens:
    no file, a stale socket file, a socket that is not a node's."""
    from miyaq.protocol.reach import explain

    missing = tmp_path / "missing.sock"
    assert explain(ipc(missing)) == f"there is no socket {missing} (is the node started with --bind {ipc(missing)}?)"
    stale = tmp_path / "stale.sock"
    left = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    left.bind(str(stale))
    left.close()
    assert explain(ipc(stale)) == f"nothing listens on {stale} (a socket file left by a node that stopped)"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as other:
        other.bind(str(tmp_path / "other.sock"))
        other.listen()
        assert "accepts connections but no miyaq node answered" in explain(ipc(tmp_path / "other.sock"))


def test_worker_on_a_unix_socket_discovers_the_other_nodes_but_not_its_own_again(make_node, thread_worker,
                                                                                  zk_server, zk_cluster_name,
                                                                                  tmp_path):
    """In a cluster a worker given only node A's unix socket learns the ring
    from WELCOME/HEARTBEAT and connects to node B over TCP, but not to A's
    TCP endpoint: WELCOME names A's own endpoint in the ring."""
    from apps.basic import app

    path = tmp_path / "a.sock"
    a = make_node(zk=zk_server.hosts, cluster=zk_cluster_name, replicas=2, bind=ipc(path))
    b = make_node(zk=zk_server.hosts, cluster=zk_cluster_name, replicas=2)
    worker = thread_worker(app, ipc(path))

    def links() -> set[str]:
        return {link.endpoint for link in list(worker.worker.links)}

    wait_for(lambda: b.endpoint in links(), what="node B discovered")
    assert links() == {ipc(path), b.endpoint}
    assert a.endpoint not in links()


def test_a_worker_welcomed_before_its_node_joined_the_ring_does_not_dial_that_node_again(
        make_node, thread_worker, zk_server, zk_cluster_name, tmp_path):
    """Fault: node A welcomes a worker on its unix socket before A is in
    any ring view (here: started out of the ring, then joined). Before
    2026-12-07 that WELCOME named no ``service`` for A, so the HEARTBEAT
    that later listed the ring made the worker dial A's TCP endpoint as a
    node it did not know: two links to one node (CI, a race of the test
    above). Now A names its own endpoint from its first WELCOME."""
    from apps.basic import app
    from miyaq.cluster.ring_admin import RingAdmin

    path = tmp_path / "a.sock"
    b = make_node(zk=zk_server.hosts, cluster=zk_cluster_name, replicas=2)
    a = make_node(zk=zk_server.hosts, cluster=zk_cluster_name, replicas=2, bind=ipc(path), auto_join=False)
    worker = thread_worker(app, ipc(path))

    def links() -> set[str]:
        return {link.endpoint for link in list(worker.worker.links)}

    wait_for(lambda: b.endpoint in links(), what="node B discovered from A's ring view, which lacks A")
    over_ipc = next(link for link in worker.worker.links if link.endpoint == ipc(path))
    assert over_ipc.absent_since is not None, "the lists so far name B only"
    with RingAdmin(zk_server.hosts, zk_cluster_name, timeout=10.0) as admin:
        admin.join(a.config.node_id)
    # Either the worker dials A again (the fault) or a list naming A reaches it.
    wait_for(lambda: a.endpoint in links() or over_ipc.absent_since is None, what="a list naming A heard")
    assert links() == {ipc(path), b.endpoint}


def test_asyncio_client_over_a_unix_socket(make_node, thread_worker, tmp_path):
    """miyaq.aio.Client takes an ipc:// endpoint like the threaded client."""
    import asyncio

    import miyaq.aio
    from apps.basic import app

    path = tmp_path / "node.sock"
    make_node(bind=ipc(path))
    thread_worker(app, ipc(path))

    async def main() -> list[int]:
        async with miyaq.aio.Client(ipc(path)) as client:
            handles = [await client.submit("add", [i, i]) for i in range(5)]
            return [await h.result(timeout=30) for h in handles]

    assert asyncio.run(asyncio.wait_for(main(), 60)) == [0, 2, 4, 6, 8]
