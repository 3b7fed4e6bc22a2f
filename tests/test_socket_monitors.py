"""Each connection monitor has an inproc address of its own
(:meth:`miyaq.runtime.sockets.SocketFactory.connection_monitor`)."""
from __future__ import annotations

import pytest
import zmq

from miyaq.runtime.sockets import SocketFactory

pytestmark = pytest.mark.timeout(60)


def test_dealers_closed_and_made_again_at_once_all_get_their_monitor():
    """Fault: pyzmq names a socket's monitor after its file descriptor
    (``inproc://monitor.s-<FD>``). A DEALER closed frees its descriptor
    before libzmq frees its monitor's name, so a DEALER made at once after
    and given that descriptor failed with EADDRINUSE -- a peer link remade
    after a ring change then logged "no socket to member now" and waited a
    second to relink (218 of 300 batches of 40 failed in a review's run).

    libzmq counts a closed socket against the context's ``MAX_SOCKETS``
    (1,023) until its reaper thread has freed it; on a loaded machine the
    thirty batches of 120 sockets (each DEALER, its monitor and the monitor's
    other end) outran the reaper once, and a creation failed with EMFILE
    (a whole-suite run, 2026-12-07). The test's context allows more."""
    factory = SocketFactory()
    factory.ctx.set(zmq.MAX_SOCKETS, 30 * 120 + 1024)     # set before its first socket
    try:
        for _ in range(30):
            pairs = [factory.watched_dealer("tcp://127.0.0.1:1", ready=False, immediate=True, plain=True)
                     for _ in range(40)]
            for sock, monitor in pairs:
                sock.close(linger=0)
                monitor.close(linger=0)
    finally:
        factory.close()
