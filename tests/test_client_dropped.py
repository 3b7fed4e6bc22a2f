"""A client dropped without ``close()``.

Fault: a program makes a :class:`miyaq.Client` per request (or per job) and
lets it go out of scope without closing it. Each one kept its I/O thread
(or greenlet) and its sockets for the life of the process. Now its loop ends
once the submits it holds are acknowledged -- what ``close()`` would have
waited for -- so nothing submitted through it is lost either.
"""
from __future__ import annotations

import gc
import threading

import pytest

import miyaq
from miyaq.testing.harness import wait_for

pytestmark = pytest.mark.timeout(60)


def test_a_dropped_threaded_client_ends_its_thread_after_its_submits(node, client_for):
    threads_before = set(threading.enumerate())
    client = miyaq.Client(node.endpoint, green=False, submit_timeout=10.0)
    task_id = client.submit("job", queue="dropped").task_id      # not flushed, not waited for
    io = client._io
    mine = set(threading.enumerate()) - threads_before
    assert mine, "a threaded client runs an I/O thread"
    del client
    gc.collect()
    wait_for(lambda: io.stopped, timeout=30, what="the dropped client's I/O loop to end")
    wait_for(lambda: not any(t.is_alive() for t in mine), timeout=30, what="its I/O thread to end")
    status = client_for(node.endpoint).status(task_id)
    assert status["state"] == "ready" and status["queue"] == "dropped"


def test_a_closed_client_is_not_closed_again_when_collected(node):
    """close() detaches the finalizer: collecting a closed client does nothing more."""
    client = miyaq.Client(node.endpoint, green=False)
    client.close()
    finalizer = client._abandoned
    del client
    gc.collect()
    assert not finalizer.alive
