"""First contact: a client, the CLI and a dev cluster's neighbours when no node
answers, or when the node is wherever ``miyaq dev-cluster`` put it."""
from __future__ import annotations

from collections.abc import Iterator

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

import miyaq
from miyaq.devcluster.ports import port_free
from miyaq.devstate import STATE_FILE, default_connect, default_http, default_zk, read_state, write_state
from miyaq.testing.harness import refusing_port


@pytest.fixture
def nothing_listening() -> Iterator[str]:
    """An endpoint where nothing listens, held so for the test (a port bound
    and not listening: no other process of a parallel run can take it)."""
    with refusing_port() as port:
        yield f"tcp://127.0.0.1:{port}"


def test_call_with_no_node_raises_at_once_naming_the_endpoint(nothing_listening, short_first_contact):
    """Fault: nothing listens on the client's endpoint. `call()` must say so
    within seconds, not wait out its 600 s submit deadline (the test's own
    timeout would catch a hang)."""
    endpoint = nothing_listening
    app = miyaq.App(endpoint, submit_timeout=600.0)

    @app.task(name="add")
    def add(a, b):
        return a + b

    try:
        with pytest.raises(miyaq.Unavailable) as failure:
            add.call(2, 3)
        message = str(failure.value)
        assert f"nothing is listening on {endpoint}" in message
        assert "is a node running?" in message and f"miyaq status --connect {endpoint}" in message
    finally:
        app.close()


def test_result_with_no_node_raises_the_same_message(nothing_listening):
    """Fault: asking for a result (a request, not a submit) of a node that is not there."""
    endpoint = nothing_listening
    with miyaq.Client(endpoint) as client:
        with pytest.raises(miyaq.Unavailable, match="nothing is listening on .*is a node running"):
            client.result("some-task", timeout=30)


def test_the_message_says_where_the_endpoint_came_from(monkeypatch, tmp_path, nothing_listening, short_first_contact):
    """Fault: MIYAQ_CONNECT points at a node that is not running."""
    endpoint = nothing_listening
    monkeypatch.setenv("MIYAQ_CONNECT", endpoint)
    monkeypatch.chdir(tmp_path)
    client = miyaq.Client(submit_timeout=600.0)
    try:
        assert client.endpoints == [endpoint]
        with pytest.raises(miyaq.Unavailable, match=rf"{endpoint} \(MIYAQ_CONNECT\)"):
            client.submit("add", [1, 2], wait=True)
    finally:
        client.close(flush=False)


def test_a_node_reached_once_is_retried_until_the_deadline(node):
    """Fault: the node answered, then went away. That is not a first contact:
    the submit is retried until its deadline and fails with the deadline's message."""
    client = miyaq.Client(node.endpoint, submit_timeout=2.0)
    try:
        client.status()
        node.stop()
        with pytest.raises(miyaq.MiyaqError) as failure:
            client.submit("add", [1, 2], wait=True)
        assert "before its deadline" in str(failure.value)
        assert "is a node running" not in str(failure.value)
    finally:
        client.close(flush=False)


def test_cli_status_with_no_node_names_the_endpoint(nothing_listening):
    """Fault: `miyaq status` with no node on the default (here: given) endpoint."""
    endpoint = nothing_listening
    done = subprocess.run([sys.executable, "-m", "miyaq.cli.main", "status", "--connect", endpoint],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.startswith(f"miyaq: error: cannot reach any node: nothing is listening on {endpoint}")


def _state(directory: Path, endpoint: str, pid: int | None = None) -> None:
    write_state(directory, pid=pid or os.getpid(), zk="127.0.0.1:1", cluster="devtest", connect=[endpoint],
                http=["http://127.0.0.1:9"])


def test_commands_in_a_dev_cluster_directory_find_it(node, tmp_path, monkeypatch):
    """Fault: the dev cluster's nodes are not on the default ports (7450 was busy);
    `miyaq status`, Client() and App() in its directory must find them anyway."""
    _state(tmp_path, node.endpoint)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIYAQ_")}
    done = subprocess.run([sys.executable, "-m", "miyaq.cli.main", "status", "--json"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    monkeypatch.delenv("MIYAQ_CONNECT", raising=False)
    monkeypatch.delenv("MIYAQ_ZK", raising=False)
    monkeypatch.delenv("MIYAQ_HTTP", raising=False)
    monkeypatch.chdir(tmp_path)
    assert default_connect() == ([node.endpoint], f"{tmp_path / STATE_FILE} (miyaq dev-cluster, pid {os.getpid()})")
    assert default_zk() == ("127.0.0.1:1", "devtest") and default_http() == "http://127.0.0.1:9"
    assert miyaq.App().endpoints == [node.endpoint]
    with miyaq.Client() as client:
        assert client.status()["node"]
    monkeypatch.setenv("MIYAQ_CONNECT", "tcp://127.0.0.1:1")     # the environment wins over the file
    assert default_connect()[0] == ["tcp://127.0.0.1:1"]


def test_a_dev_cluster_file_whose_process_is_gone_is_ignored(tmp_path, monkeypatch):
    """Fault: dev-cluster was killed with SIGKILL and left its file behind."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    _state(tmp_path, "tcp://127.0.0.1:1", pid=dead.pid)
    monkeypatch.delenv("MIYAQ_CONNECT", raising=False)
    monkeypatch.chdir(tmp_path)
    assert read_state(tmp_path) is None
    assert default_connect() == (["tcp://127.0.0.1:7450"], "the default endpoint")


def test_a_port_in_time_wait_counts_as_free():
    """Fault: the previous dev cluster's ports are still in TIME-WAIT; the next one must take them anyway."""
    with socket.socket() as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        client = socket.create_connection(("127.0.0.1", port))
        conn, _ = server.accept()
        conn.close()              # the server side closes first: its end goes to TIME-WAIT
        client.recv(1)
        client.close()
    with socket.socket() as plain, pytest.raises(OSError):
        plain.bind(("127.0.0.1", port))      # TIME-WAIT is there: a bind without SO_REUSEADDR fails
    assert port_free(port)
    with socket.socket() as holder:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        holder.bind(("127.0.0.1", port))
        holder.listen()
        assert not port_free(port)
