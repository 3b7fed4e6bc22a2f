"""A client in a process near its limit of open files, and a client whose
node is at its own: what it raises, and what it says."""
from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator

import pytest

import miyaq
import miyaq.aio
from miyaq.client import dialling
from miyaq.runtime import open_files
from miyaq.runtime.sockets import SocketFactory
from miyaq.testing.harness import refusing_port

#: Run in a child whose limit of open files is 64: for each number of files
#: left free, make a client, print what came of it, and close what it made.
_FEW_FILES_LEFT = textwrap.dedent("""
    import asyncio, os, resource, sys
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard))
    import miyaq, miyaq.aio
    flavour, endpoint = sys.argv[1], sys.argv[2]

    def fill(free):
        if free is None:
            return []
        held = []
        try:
            while True:
                held.append(os.open(os.devnull, os.O_RDONLY))
        except OSError:
            pass
        for fd in held[len(held) - free:]:
            os.close(fd)
        return held[:len(held) - free]

    async def make_aio(free):
        held = fill(free)
        try:
            client = miyaq.aio.Client(endpoint)
        finally:
            for fd in held:
                os.close(fd)
        await client.close(flush=False)

    def make(free):
        if flavour == "aio":
            asyncio.run(make_aio(free))
            return
        held = fill(free)
        try:
            client = miyaq.Client(endpoint, green=flavour == "gevent")
        finally:
            for fd in held:
                os.close(fd)
        client.close(flush=False)

    make(None)     # modules loaded, gevent's hub made: only the client's own files are counted
    for free in range(0, 16):
        try:
            make(free)
            print(free, "ok", flush=True)
        except Exception as exc:
            print(free, type(exc).__name__, str(exc).replace(chr(10), " "), flush=True)
    print("the application goes on", flush=True)
""")


@pytest.mark.parametrize("flavour", ["threads", "gevent", "aio"])
def test_a_client_made_with_few_files_left_raises_unavailable_and_the_process_goes_on(flavour):
    """Fault: an application's process with 0 to 15 file descriptors left
    under its limit makes a client (threaded, gevent, asyncio). It gets
    ``Unavailable`` naming the open files and the limit, or a client; the
    process goes on. Before, with 2-4 left libzmq aborted the whole process
    ("Too many open files (src/epoll.cpp:38)", SIGABRT, exit 134): the
    context's first socket starts its I/O threads and nothing asked for room
    first; with 0 left a bare ZMQError, with 8 a bare OSError escaped."""
    with refusing_port() as port:
        done = subprocess.run([sys.executable, "-c", _FEW_FILES_LEFT, flavour, f"tcp://127.0.0.1:{port}"],
                              capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, (done.returncode, done.stdout[-2000:], done.stderr[-2000:])
    lines = done.stdout.splitlines()
    assert lines[-1] == "the application goes on", done.stdout
    outcomes = dict(line.split(" ", 1) for line in lines[:-1])
    assert list(outcomes) == [str(free) for free in range(16)], done.stdout
    for free, outcome in outcomes.items():
        assert outcome == "ok" or (outcome.startswith("Unavailable cannot open a socket to tcp://")
                                   and "files open of a limit of 64" in outcome), (free, outcome)
    assert all(outcomes[str(free)] != "ok" for free in range(5)), outcomes
    assert outcomes["15"] == "ok", outcomes
    assert "Traceback" not in done.stderr, done.stderr


def test_a_node_the_ring_names_is_not_dialled_without_room_for_its_files(monkeypatch):
    """Fault: the process has fewer files left than a node's socket, its
    monitor and its connection take when a RING reply names a new node.
    The client does not ask libzmq for them (a socket made halfway prints a
    finalizer's traceback; a context not started yet aborts): the node is
    not reachable for now (None: dialled again at the next RING reply).
    Before, the socket was made with no room asked."""
    made: list[str] = []
    factory = SocketFactory(flavour="plain")
    monkeypatch.setattr(factory, "watched_dealer", lambda connect, **options: made.append(connect))
    monkeypatch.setattr(open_files, "room_for", lambda files: False)
    try:
        assert dialling.dial_discovered(factory, "tcp://127.0.0.1:9", (1000, 5000)) is None
    finally:
        factory.close()
    assert made == []


@pytest.fixture
def silent_port() -> Iterator[str]:
    """An endpoint that accepts TCP connections and never answers: a socket
    listening and never accepting (the kernel completes each handshake), as
    a node at its limit of open files does."""
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen(16)
        yield f"tcp://127.0.0.1:{listening.getsockname()[1]}"


@pytest.mark.parametrize("green", [False, True], ids=["threads", "gevent"])
def test_a_node_that_accepts_connections_and_never_answers_is_not_called_absent(client_for, silent_port, green):
    """Fault: the client's node takes TCP connections and never answers
    them (a node at its limit of open files: its port's backlog accepts,
    the node cannot). The first-contact error says so, as a worker's log
    does (miyaq.protocol.reach.explain). Before, it said "nothing is
    listening on ... -- is a node running?"."""
    client = client_for(silent_port, request_timeout=5.0, green=green)
    with pytest.raises(miyaq.Unavailable) as failure:
        client.status()
    message = str(failure.value)
    assert message.startswith(f"cannot reach any node: {silent_port}: 127.0.0.1:"), message
    assert "accepts connections but no miyaq node answered" in message, message
    assert "nothing is listening" not in message and f"miyaq status --connect {silent_port}" in message


def test_an_asyncio_client_says_the_same_without_blocking_its_loop(silent_port):
    """Fault: as above, for the asyncio client. Its event loop never waits
    for the probe (a thread of its own, started once a call has waited
    :data:`PROBE_AFTER` unconnected); a call failing before the probe ends
    says what the client knows, a call after it what the probe found."""
    async def main() -> list[str]:
        said = []
        async with miyaq.aio.Client(silent_port, request_timeout=5.0) as client:
            for _ in range(20):
                with pytest.raises(miyaq.Unavailable) as failure:
                    await client.status()
                said.append(str(failure.value))
                if "accepts connections" in said[-1]:
                    break
            await client.close(flush=False)
        return said

    said = asyncio.run(main())
    assert "accepts connections but no miyaq node answered" in said[-1], said
    assert all("accepts connections" in message or "nothing is listening" in message for message in said), said
