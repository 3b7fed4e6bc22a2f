"""The baseline: the bench's workload through a bare ZeroMQ relay.

``miyaq bench --baseline`` runs the same producer, payload and no-op
handler through the least a broker can be: a producer DEALER, one relay
ROUTER, worker DEALERs; one msgpack message each way per hop, an ack per
task, credit-based dispatch -- no priorities, leases, timers, results,
retries or persistence, and no batching. Every part runs in its own process,
as miyaq's do: the producer (:mod:`miyaq.bench.agent` with
:mod:`miyaq.bench.bare_client`), ``python -m miyaq.bench.bare relay`` and W
``python -m miyaq.bench.bare worker`` processes. What miyaq costs beyond
this is what its features and its Python cost; the ratio tells a user how
close miyaq is to the transport on their machine. Its libzmq I/O threads
keep libzmq's default scheduling (``SCHED_OTHER``), whatever
``MIYAQ_IO_THREADS`` says for miyaq's processes
(:mod:`miyaq.runtime.io_threads`): the yardstick stays a bare relay.

Messages (one msgpack array per message, after the ROUTER's routing id):

=========================  ==========================================  ===================
from                       message                                     answer
=========================  ==========================================  ===================
producer                   ``["T", id, name, body, want_result]``      ``["A", id]`` at once;
                                                                       ``["R", id]`` when done
                                                                       if ``want_result``
worker                     ``["W", credit]`` (ready)                   tasks, up to credit
relay -> worker            ``["T", id, name, body]``                   ``["D", id, result]``
anyone                     ``["S", seq]``                              ``["S", received, done,
                                                                       workers, seq]``
=========================  ==========================================  ===================

``seq`` is the asker's number for the request, echoed so that it can
tell this answer from one to an earlier request it stopped waiting for
(:class:`~miyaq.bench.bare_client.RelayProbe`); a ``["S"]`` without one is
answered without one.

``body`` is the producer's msgpack ``[args, kwargs]``, as miyaq's client
packs it; the worker decodes it and calls the handler, whose first line
reads the clock (the bench's "start"), exactly like miyaq's no-op.

With ``--hub`` (``miyaq bench --baseline-gevent``) the relay and the
worker run the same loop, but wait for each message in the gevent hub on a
:class:`~miyaq.runtime.hub_socket.HubSocket`, as miyaq's node and workers
do, instead of blocking in ZeroMQ: the difference between the two
baselines is what the runtime costs before miyaq's own code runs.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from collections import deque
from typing import Any, Callable

import msgpack

from ..runtime import green
from ..runtime.io_threads import NORMAL
from ..runtime.hub_socket import HubSocket
from ..runtime.sockets import SocketFactory
from .records import RecordWriter

Recv = Callable[[], list[bytes]]
Send = Callable[[list[bytes]], None]


def _exit_on_term(hub: bool) -> None:
    """SIGTERM and SIGINT end the loop with SystemExit, so its cleanup runs. In
    the hub the signal is handled there (a Python handler would run only
    once the hub next runs Python code) and thrown into this greenlet."""
    if hub:
        main = green.current()

        def stop() -> None:
            green.call_soon(main.throw, SystemExit(0))
        green.on_signal(signal.SIGTERM, stop)
        green.on_signal(signal.SIGINT, stop)
        return

    def on_term(signum: int, frame: object) -> None:
        raise SystemExit(0)
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)


def _exit_now_on_term() -> None:
    """For the blocking relay, which has nothing to clean up: SIGTERM and
    SIGINT end the process at once, from a thread of its own that waits for
    them (both blocked elsewhere). A Python handler is not enough there: a
    signal that comes while libzmq processes commands inside a blocking
    receive (a producer's or a worker's connection closing, as it does right
    before the bench stops the relay) sets Python's flag, and libzmq then
    goes back to waiting without returning to Python -- the relay ignored
    SIGTERM until the bench killed it, five seconds later."""
    stop = {signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop)

    def wait() -> None:
        signal.sigwait(stop)
        os._exit(0)
    threading.Thread(target=wait, name="sigwait", daemon=True).start()


def _ends(sock: Any) -> tuple[Recv, Send]:
    """How a loop receives and sends one message on ``sock``: a plain
    socket blocks in ZeroMQ, a HubSocket waits in the gevent hub."""
    if isinstance(sock, HubSocket):
        hub = sock

        def recv() -> list[bytes]:
            return hub.recv()[0]
        return recv, hub.send
    return sock.recv_multipart, sock.send_multipart


def relay(bind: str, hub: bool = False) -> None:
    """Serve one ROUTER until SIGTERM: ack tasks, pass them to workers with credit."""
    factory = SocketFactory(green=hub, io_threads=NORMAL)
    recv, send = _ends(factory.hub_router(bind) if hub else factory.router(bind))
    pack, unpack = msgpack.Packer(use_bin_type=True).pack, msgpack.unpackb
    queue: deque[list[Any]] = deque()      # tasks waiting for a worker's credit
    ready: deque[bytes] = deque()          # one entry per credit a worker granted
    callers: dict[str, bytes] = {}         # task id -> producer waiting for its result
    workers: set[bytes] = set()
    received = done = 0
    try:
        while True:
            ident, data = recv()
            msg = unpack(data, raw=False)
            kind = msg[0]
            if kind == "T":
                received += 1
                send([ident, pack(["A", msg[1]])])
                if msg[4]:
                    callers[msg[1]] = ident
                queue.append(["T", msg[1], msg[2], msg[3]])
            elif kind == "D":
                done += 1
                ready.append(ident)
                caller = callers.pop(msg[1], None)
                if caller is not None:
                    send([caller, pack(["R", msg[1]])])
            elif kind == "W":
                workers.add(ident)
                ready.extend([ident] * int(msg[1]))
            elif kind == "S":
                send([ident, pack(["S", received, done, len(workers), *msg[1:2]])])
            while queue and ready:
                send([ready.popleft(), pack(queue.popleft())])
    finally:
        factory.close()


def worker(connect: str, credit: int, records: str | None, hub: bool = False) -> None:
    """Run tasks from the relay one after another until SIGTERM."""
    factory = SocketFactory(green=hub, io_threads=NORMAL)
    recv, send = _ends(factory.hub_dealer(connect) if hub else factory.dealer(connect))
    pack, unpack = msgpack.Packer(use_bin_type=True).pack, msgpack.unpackb
    writer = RecordWriter(records) if records else None

    def noop(task_id: str, payload: Any = None) -> None:
        start = time.time()
        if writer is not None:
            writer.write(task_id, start, time.time())

    try:
        send([pack(["W", credit])])
        while True:
            msg = unpack(recv()[0], raw=False)
            args, kwargs = unpack(msg[3], raw=False, strict_map_key=False)
            noop(msg[1], *args, **kwargs)
            send([pack(["D", msg[1], pack(None)])])
    finally:
        if writer is not None:
            writer.close()
        factory.close()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m miyaq.bench.bare")
    sub = parser.add_subparsers(dest="part", required=True)
    r = sub.add_parser("relay")
    r.add_argument("--bind", required=True)
    r.add_argument("--hub", action="store_true", help="wait in the gevent hub, as miyaq's node does")
    w = sub.add_parser("worker")
    w.add_argument("--hub", action="store_true", help="wait in the gevent hub, as miyaq's workers do")
    w.add_argument("--connect", required=True)
    w.add_argument("--credit", type=int, default=16)
    w.add_argument("--records", default=None)
    args = parser.parse_args(argv)
    if args.part == "relay" and not args.hub:
        _exit_now_on_term()
    else:
        _exit_on_term(args.hub)
    if args.part == "relay":
        relay(args.bind, args.hub)
    else:
        worker(args.connect, args.credit, args.records, args.hub)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
