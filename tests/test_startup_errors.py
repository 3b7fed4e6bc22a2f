"""Start-up failures of the real ``miyaq node`` process: each ends with one
line ``miyaq: error: ...`` on stderr that names what to change, exit status
2 and no traceback (docs/configuration.md, "When a node does not start").

Each test runs ``miyaq node`` as a subprocess, as a person would type it; a
port "in use" is held by a plain listening socket or by a real node.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest

from miyaq.testing.harness import free_port, refusing_port

MIYAQ = [sys.executable, "-m", "miyaq.cli.main"]
GUARD = 60      # seconds; a hung node fails the test instead of blocking it


def start_node(*argv: str, port: int | None = None) -> subprocess.CompletedProcess[str]:
    """``miyaq node`` with ``argv``, expected to fail at start-up."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIYAQ_")}
    args = ["node", "--port", str(port or free_port()), "--node-id", "startup", "--shutdown-grace", "1", *argv]
    return subprocess.run([*MIYAQ, *args], capture_output=True, text=True, env=env, timeout=GUARD)


def error_line(done: subprocess.CompletedProcess[str]) -> str:
    """The one error line of a failed start, after checking its shape."""
    assert done.returncode == 2, (done.returncode, done.stderr[-3000:])
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("miyaq: error: ")]
    assert len(errors) == 1, done.stderr[-3000:]
    assert done.stderr.rstrip().endswith(errors[0]), "the error is the last thing printed"
    return errors[0]


@pytest.fixture
def listening() -> Iterator[socket.socket]:
    """A TCP listener on a loopback port: 'another process listens there'."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", free_port()))
        sock.listen()
        yield sock


def test_http_port_of_a_running_node_is_a_one_line_error(procs):
    """Fault: two nodes started by hand on one machine with the same HTTP port
    (the default 8088 in docs/cluster.md): the second cannot bind it."""
    http = free_port()
    procs.node("--http-port", str(http))
    line = error_line(start_node("--http-port", str(http)))
    assert f"port {http} is in use (HTTP gateway on 127.0.0.1)" in line
    assert "--http-port N, or --http-port 0 to disable it" in line


def test_service_port_in_use_is_a_one_line_error(listening):
    """Fault: another process listens on the service port."""
    port = listening.getsockname()[1]
    line = error_line(start_node("--http-port", "0", port=port))
    assert f"port {port} is in use (service port on 127.0.0.1)" in line and "pass --port N" in line


def _free_now(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@pytest.fixture
def listening_above_a_free_port() -> Iterator[socket.socket]:
    """A listener on port P + 1 where P was free when it was picked: the
    service port of the node under test (another process taking P meanwhile
    would make the test check the wrong error)."""
    for _ in range(100):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            if _free_now(sock.getsockname()[1] - 1):
                sock.listen()
                yield sock
                return
    raise RuntimeError("no loopback port P with P + 1 free found in 100 tries")


def test_peer_port_in_use_is_a_one_line_error(listening_above_a_free_port):
    """Fault: in a cluster, another process listens on the peer port (--port + 1)."""
    peer = listening_above_a_free_port.getsockname()[1]
    zk = f"127.0.0.1:{free_port()}"      # never reached: the peer port is bound first
    line = error_line(start_node("--http-port", "0", "--zk", zk, port=peer - 1))
    assert f"port {peer} is in use (peer port on 127.0.0.1)" in line and "--peer-port N" in line


def test_replication_port_in_use_is_a_one_line_error(listening):
    """Fault: in a cluster, another process listens on the replication PUB port."""
    pub = listening.getsockname()[1]
    line = error_line(start_node("--http-port", "0", "--zk", f"127.0.0.1:{free_port()}",
                                 "--pub-port", str(pub)))
    assert f"port {pub} is in use (replication port on 127.0.0.1)" in line and "--pub-port N" in line


def test_address_not_of_this_machine_is_a_one_line_error():
    """Fault: --host names an address no interface of this machine has (a
    container's or another host's address)."""
    line = error_line(start_node("--http-port", "0", "--host", "192.0.2.1", "--insecure"))
    assert "192.0.2.1 is not an address of this machine" in line and "--advertise" in line


def test_an_ipv6_address_not_of_this_machine_is_a_one_line_error():
    """Fault: --host names an IPv6 address no interface of this machine has.
    (Before IPv6 was served, libzmq took it for an interface name.)"""
    line = error_line(start_node("--http-port", "0", "--host", "2001:db8::1", "--insecure"))
    assert "cannot bind [2001:db8::1]:" in line and "2001:db8::1 is not an address of this machine" in line


def test_a_host_with_a_port_is_a_one_line_error():
    """Fault: --host given as an endpoint's host and port."""
    line = error_line(start_node("--http-port", "0", "--host", "[::1]:7450"))
    assert "host takes a host name or address, IPv4 or IPv6 (no scheme, no port), not '[::1]:7450'" in line


def test_unknown_http_host_is_a_one_line_error():
    """Fault: --http-host names something that is not a name of this machine."""
    # --insecure: past the refusal of a gateway beyond loopback without tokens, to the bind itself
    line = error_line(start_node("--http-port", str(free_port()), "--http-host", "no-such-host.invalid",
                                 "--insecure"))
    assert "HTTP gateway" in line and "--http-host" in line and "refusing" not in line


def test_port_out_of_range_is_a_one_line_error():
    """Fault: the derived peer port (--port + 1) of a clustered node is beyond 65535."""
    line = error_line(start_node("--http-port", "0", "--zk", "127.0.0.1:1", port=65535))
    assert "peer_port must be 1..65535, not 65536 (port + 1)" in line


def test_unreachable_zookeeper_is_a_one_line_error():
    """Fault: --zk names a ZooKeeper that is not running (nothing listens there).
    The node waits --zk-connect-timeout (2 s here; 10 s by default), and the
    line names the setting."""
    with refusing_port() as port:
        zk = f"127.0.0.1:{port}"
        line = error_line(start_node("--http-port", "0", "--zk", zk, "--zk-connect-timeout", "2"))
    assert f"cannot reach ZooKeeper at {zk} within 2s (--zk-connect-timeout)" in line
    assert "--zk" in line and "MIYAQ_ZK" in line


@pytest.fixture
def not_zookeeper() -> Iterator[int]:
    """A loopback port where something that is not a ZooKeeper server
    answers: it reads what a client sends, replies with an empty frame (a
    length of 0, as no ZooKeeper reply is) and closes. kazoo fails to decode
    that, logs the exception with its traceback and tries again."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    server.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            with conn:
                conn.settimeout(1.0)
                try:
                    conn.recv(4096)
                    conn.sendall(b"\x00\x00\x00\x00")
                except OSError:
                    pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        stop.set()
        thread.join(5)
        server.close()


def test_a_zookeeper_port_where_something_else_answers_is_a_one_line_error(not_zookeeper):
    """Fault: --zk names a port where a service that is not ZooKeeper
    answers with a reply ZooKeeper never sends. The ZooKeeper client's
    tracebacks stay out of the log: each attempt is one line, naming the
    exception, and the start ends with the one error line."""
    zk = f"127.0.0.1:{not_zookeeper}"
    done = start_node("--http-port", "0", "--zk", zk, "--zk-connect-timeout", "2")
    line = error_line(done)
    assert f"cannot reach ZooKeeper at {zk} within 2s (--zk-connect-timeout)" in line
    assert "invalid server response" in done.stderr      # kazoo's attempts were made and logged
    assert "Exception raised during deserialization" in done.stderr and "(error: " in done.stderr


def test_data_dir_that_cannot_be_made_is_a_one_line_error(tmp_path):
    """Fault: --data-dir lies under a regular file, so it cannot be created."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    line = error_line(start_node("--http-port", "0", "--data-dir", str(blocker / "data")))
    assert f"cannot use data dir {blocker / 'data'}" in line and "--data-dir" in line


def test_data_dir_of_a_running_node_is_a_one_line_error(procs, tmp_path):
    """Fault: two nodes are given the same --data-dir; the second finds its LOCK held."""
    data = tmp_path / "data"
    procs.node("--data-dir", str(data))
    line = error_line(start_node("--http-port", "0", "--data-dir", str(data)))
    assert f"data dir {data} is in use by another process" in line and "its own --data-dir" in line


@pytest.mark.parametrize("name", ["log-00000000000000000001.mq", "LOCK"])
def test_data_dir_file_replaced_by_a_directory_is_a_one_line_error(tmp_path, name):
    """Fault: a file of the log (a segment, the LOCK) is a directory, so the
    node cannot open it at start-up: the error names the file, no traceback."""
    data = tmp_path / "data"
    (data / name).mkdir(parents=True)
    line = error_line(start_node("--http-port", "0", "--data-dir", str(data)))
    assert f"cannot open the log in data dir {data}" in line and str(data / name) in line
    assert "Is a directory" in line


def test_key_directory_without_keys_is_a_one_line_error(tmp_path):
    """Fault: --keys names a directory `miyaq keys init` never filled."""
    line = error_line(start_node("--http-port", "0", "--keys", str(tmp_path)))
    assert "no node.key_secret there" in line and "miyaq keys init" in line


def test_corrupt_key_file_is_a_one_line_error(tmp_path):
    """Fault: the node's secret key file holds garbage."""
    keys = tmp_path / "keys"
    keys.mkdir()
    (keys / "node.key_secret").write_text("garbage\n")
    line = error_line(start_node("--http-port", "0", "--keys", str(keys)))
    assert "node.key_secret" in line and "CURVE" in line


def test_invalid_setting_is_a_one_line_error():
    """Fault: a setting that is not a number where one is expected."""
    line = error_line(start_node("--http-port", "eighty"))
    assert "http_port expects int" in line


def test_privileged_port_names_the_fix():
    """Fault: a port below 1024 bound without root (this suite runs as root in
    CI, so the refusal is the operating system's error, built here)."""
    import errno

    from miyaq.core.binding import http_port, why

    refused = PermissionError(errno.EACCES, "Permission denied")
    assert why(http_port("0.0.0.0", 80), refused) == (
        "cannot bind 0.0.0.0:80 (HTTP gateway): permission denied -- ports below 1024 need root or "
        "CAP_NET_BIND_SERVICE; pass --http-port N, or --http-port 0 to disable it (N above 1023)")


def test_the_one_line_filter_keeps_the_exception_and_never_raises():
    """The filter that keeps the ZooKeeper client's records to one line: the
    exception's type and message stay on it, other loggers' tracebacks are
    left alone, and a record whose arguments do not fit its format (a
    library's bug) is written as its format, not raised into the caller."""
    import logging

    from miyaq.logs import OneLineLibraryErrors

    one_line = OneLineLibraryErrors()
    try:
        raise ValueError("bad frame")
    except ValueError:
        exc_info = sys.exc_info()
    kazoo = logging.LogRecord("kazoo.client", logging.ERROR, __file__, 1, "decoding %s", ("Connect()",), exc_info)
    assert one_line.filter(kazoo) and kazoo.exc_info is None
    assert kazoo.getMessage() == "decoding Connect() (ValueError: bad frame)"
    ours = logging.LogRecord("miyaq.node", logging.ERROR, __file__, 1, "failed", (), exc_info)
    assert one_line.filter(ours) and ours.exc_info is exc_info
    broken = logging.LogRecord("kazoo.client", logging.ERROR, __file__, 1, "%s and %s", ("one",), exc_info)
    assert one_line.filter(broken) and broken.getMessage() == "%s and %s (ValueError: bad frame)"
