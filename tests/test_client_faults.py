"""The threaded client against real nodes that misbehave."""
from __future__ import annotations

import threading

import pytest

import miyaq
from miyaq.testing.harness import ThreadNode, free_port
from own_interpreter import run_script
from raw_nodes import CountingNode


def test_node_restarting_mid_pipeline_every_submit_is_accepted_by_the_new_node(client_for):
    """Fault: the node stops while a burst of submits is in flight and a new
    one comes up on the same port (an in-memory node: what was not
    acknowledged is gone). The client resends what was not acknowledged, to
    the new node, with the same ids; every handle ends accepted."""
    port = free_port()
    first = ThreadNode(port=port, heartbeat=0.25, shutdown_grace=0.2).start()
    second = None
    client = client_for(first.endpoint, submit_timeout=30.0, ack_timeout=0.5)
    try:
        client.status()                       # reached once: later failures are retried, not first contact
        handles = [client.submit("echo", [i]) for i in range(3000)]
        first.stop()
        late = [client.submit("echo", [i]) for i in range(3000, 3100)]
        second = ThreadNode(port=port, heartbeat=0.25).start()
        client.flush(timeout=30.0)
        assert all(h.accepted for h in handles + late)
        # The new node holds at least what was submitted after the stop, at most everything.
        assert 100 <= client.status()["totals"]["live"] <= 3100
        assert all(client.status(h.id)["state"] == "ready" for h in late[:5])
    finally:
        first.stop()
        if second is not None:
            second.stop()


def test_client_as_a_context_manager_refuses_submits_after_close(node):
    with miyaq.Client(node.endpoint) as client:
        client.submit("echo", [1], wait=True)
    with pytest.raises(miyaq.MiyaqError, match="client is closed"):
        client.submit("echo", [2])


def _ends_in_a_thread(call) -> list[BaseException]:
    """Run ``call`` in a thread, bounded: the errors it raised (a call that never
    ends fails the test)."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            call()
        except BaseException as err:    # noqa: BLE001 -- the test asserts on it
            errors.append(err)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(30)
    assert not thread.is_alive(), "the call still waits on a closed client"
    return errors


@pytest.mark.parametrize("green", [False, True], ids=["threads", "gevent"])
def test_requests_on_a_closed_client_fail_at_once_with_a_clear_error(node, green):
    """Fault: status, result, receive and a handle's status asked of a client
    already closed. Before, each was queued for an I/O loop that had ended
    and waited its whole timeout (a ``result(timeout=None)``: an hour), then
    raised a Timeout that did not say why. Now MiyaqError("... closed")."""
    client = miyaq.Client(node.endpoint, request_timeout=600.0, green=green)
    handle = client.submit("echo", [1], wait=True)
    client.close()
    for call in (client.status, lambda: client.result(handle.id, timeout=None), lambda: client.receive("q"),
                 handle.status):
        errors = _ends_in_a_thread(call) if not green else [_raised(call)]
        assert len(errors) == 1 and isinstance(errors[0], miyaq.MiyaqError), errors
        assert "closed" in str(errors[0])


def _raised(call) -> BaseException:
    with pytest.raises(miyaq.MiyaqError) as caught:
        call()
    return caught.value


def test_a_submit_queued_after_the_io_loop_stopped_fails_instead_of_waiting_for_ever(node):
    """Fault: a thread submits with ``wait=True`` while another closes the
    client, after the I/O loop took its last calls but before the client
    counts as closed (its ``close()`` flushes first, for up to ``timeout``).
    Before, the submit was queued for a loop that had ended and its caller
    waited for ever; now it fails with the error the close gives every
    waiting call."""
    client = miyaq.Client(node.endpoint)
    try:
        client.submit("echo", [1], wait=True)
        client._io.close()                   # the loop ends; the client is not closed yet
        errors = _ends_in_a_thread(lambda: client.submit("echo", [2], wait=True))
        assert len(errors) == 1 and "client was closed" in str(errors[0]), errors
    finally:
        client.close(flush=False)


FORKED_CHILD = """
import os, sys
import miyaq
client = miyaq.Client(sys.argv[1], request_timeout=600.0)
app = miyaq.App(sys.argv[1])
app.client.status()
client.submit("echo", [1], wait=True)
client.submit("echo", [2], countdown=600)        # perhaps not acknowledged yet: the parent's to flush
pid = os.fork()
if pid == 0:
    for call in (client.status, lambda: client.submit("echo", [3], wait=True),
                 lambda: client.submit("echo", [4]), client.flush,
                 lambda: client.call("echo", [5], timeout=None)):
        try:
            call()
            print("answered")
        except miyaq.MiyaqError as err:
            print("refused" if "fork" in str(err) else repr(err))
    print(app.client.status()["totals"]["live"])    # an App makes a client of the child's own
    sys.stdout.flush()
    sys.exit(0)                                  # atexit: nothing of the parent's to flush here
_, status = os.waitpid(pid, 0)
print("child", os.waitstatus_to_exitcode(status))
print(client.status()["totals"]["live"])        # the parent's client works on: its two tasks, none of the child's
client.close()
"""


def test_a_client_used_in_a_forked_child_refuses_at_once_instead_of_hanging(node):
    """Fault: a process forks (multiprocessing's default on Linux, a
    pre-forking server) and the child uses the client it inherited. Its I/O
    thread stayed with the parent and its sockets are the parent's ZeroMQ
    context's: before, a status or ``submit(wait=True)`` in the child hung
    for good, and the child's exit waited 10 s flushing the parent's submits
    and logged them as failed. Now every call in the child raises a
    MiyaqError saying to make a client there, an App makes a new one there,
    and the parent's client is untouched. In an interpreter of its own,
    bounded."""
    code, out, err = run_script(FORKED_CHILD, node.endpoint, timeout=40, hung="a call in the forked child hung")
    assert code == 0, err
    assert out.split() == ["refused"] * 5 + ["2", "child", "0", "2"], (out, err)
    assert "unflushed" not in err


@pytest.mark.parametrize("bad_id", [5, b"raw-bytes", ["a"]], ids=["int", "bytes", "list"])
def test_a_submit_with_an_id_that_is_not_a_string_is_refused_at_once(node, bad_id):
    """Bad input: ``submit(..., id=5)``. The node refuses such an id, but its
    refusal names an id that is not a string, which the client matched to
    no submit: before, the caller waited its whole ``submit_timeout`` and got
    a Timeout ("not acknowledged"). Now InvalidField naming ``id``, at once,
    and nothing is sent; an empty id goes to the node, which refuses it."""
    client = miyaq.Client(node.endpoint, submit_timeout=600.0)
    try:
        with pytest.raises(miyaq.errors.InvalidField, match="'id' must be a string") as refused:
            client.submit("echo", [1], id=bad_id, wait=True)
        assert refused.value.details == {"field": "id"}
        with pytest.raises(miyaq.errors.InvalidField):
            client.submit("echo", [1], id="", wait=True)
        assert client.status()["totals"]["live"] == 0
    finally:
        client.close(flush=False)


UNENCODABLE = {
    "queue": lambda c: c.submit("echo", [1], queue=object(), wait=True),
    "eta": lambda c: c.submit("echo", [1], eta={1}, wait=True),
    "priority": lambda c: c.submit("echo", [1], priority=2 ** 70),
    "name": lambda c: c.submit(object(), [1]),
    "url_body": lambda c: c.submit_url("http://example.com/hook", 5, wait=True),
    "url_headers": lambda c: c.submit_url("http://example.com/hook", b"", headers={"X": object()}),
}


@pytest.mark.parametrize("what", sorted(UNENCODABLE))
def test_a_submit_with_a_field_msgpack_cannot_encode_raises_at_once_and_loses_nothing(client_for, node, what):
    """Bad input: a task option, name or webhook field msgpack cannot encode
    (a set, an object, an int past 64 bits), or a webhook body that is not
    bytes, from a client busy with other submits (so its I/O loop batches
    them). Before, the I/O loop failed encoding the batch: the submits of
    that batch were lost -- their callers, a ``wait=True`` one included,
    waited for ever -- and every later call failed. Now TypeError at once,
    nothing queued: the other submits are accepted and the client works on."""
    client = client_for(node.endpoint, submit_timeout=600.0)
    client.status()
    others = [client.submit("echo", [i]) for i in range(200)]
    with pytest.raises(TypeError):
        UNENCODABLE[what](client)
    client.flush(timeout=30)
    assert all(h.accepted for h in others)
    assert client.submit("echo", ["after"], wait=True).accepted
    assert client._io.in_flight == 0


UNENCODABLE_ARGS = {
    "int-past-64-bits": lambda: ([2 ** 64], None),
    "list-that-contains-itself": lambda: (_self_containing(), None),
    "nested-too-deep": lambda: (_nested(2000), None),
    "object-in-kwargs": lambda: ([], {"x": object()}),
}


def _self_containing() -> list:
    loop: list = []
    loop.append(loop)
    return [loop]


def _nested(depth: int) -> list:
    value: list = []
    for _ in range(depth):
        value = [value]
    return [value]


@pytest.mark.parametrize("what", sorted(UNENCODABLE_ARGS))
def test_task_arguments_msgpack_cannot_encode_are_a_type_error_before_anything_is_sent(node, what):
    """Bad input: task arguments msgpack cannot encode -- an int past 64
    bits, a list that contains itself, one nested 2,000 deep. The docs
    promise TypeError; msgpack's own OverflowError and ValueError came out
    of ``submit()`` and ``call()`` (an audit). Nothing is sent; the client works on."""
    client = miyaq.Client(node.endpoint, request_timeout=5.0)
    try:
        args, kwargs = UNENCODABLE_ARGS[what]()
        with pytest.raises(TypeError, match="msgpack cannot encode"):
            client.submit("echo", args, kwargs)
        with pytest.raises(TypeError, match="msgpack cannot encode"):
            client.call("echo", args, kwargs, timeout=5)
        assert client.status()["totals"]["live"] == 0
    finally:
        client.close(flush=False)


@pytest.mark.parametrize("green", [False, True], ids=["threads", "gevent"])
def test_a_finite_timeout_past_what_a_thread_can_wait_is_no_bound_not_an_overflow(node, green):
    """Bad input (an audit): ``flush``, ``request`` and a handle's
    ``wait_accepted`` given a finite timeout past ``threading.TIMEOUT_MAX``
    (10**10 s) raised OverflowError from the wait -- neither a MiyaqError nor
    the documented ValueError. The docs say any number of at least 0 is
    valid: it means no bound now, as infinity."""
    client = miyaq.Client(node.endpoint, request_timeout=5.0, green=green)
    try:
        handle = client.submit("echo", [1])
        assert handle.wait_accepted(timeout=1e10)
        client.flush(timeout=1e10)
        assert client.request(b"STATUS", {}, timeout=1e10)["totals"]["live"] >= 0
    finally:
        client.close(flush=False, timeout=1e10)


def test_a_ctrl_c_just_after_the_short_path_took_the_clients_lock_does_not_wedge_the_client(node):
    """Fault (an audit's stress loop wedged 3 runs in 5): a KeyboardInterrupt
    raised in a caller just after its short path took the client's lock,
    before the ``try`` that gives it back. The lock stayed held by nobody:
    the I/O thread waited on it for good and every later call timed out --
    ``call()`` waited past its own timeout. Here the interrupt is raised at
    exactly that point; the next calls answer."""
    client = miyaq.Client(node.endpoint, request_timeout=5.0)
    loop = client._io
    try:
        client.status()
        real = loop.lock

        class InterruptedAfterAcquire:
            """The loop's lock; the first non-blocking acquire that succeeds raises KeyboardInterrupt."""

            armed = True

            def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
                got = real.acquire(blocking, timeout)
                if got and not blocking and self.armed:
                    self.armed = False
                    raise KeyboardInterrupt
                return got

            def release(self) -> None:
                real.release()

            def __enter__(self) -> bool:
                return real.__enter__()

            def __exit__(self, *exc) -> None:
                real.__exit__(*exc)

        lock = InterruptedAfterAcquire()
        loop.lock = lock
        for _ in range(50):            # until a call takes the short path (the I/O thread may hold the lock)
            try:
                client.status()
            except KeyboardInterrupt:
                break
        assert not lock.armed, "no call took the short path"
        assert client.status()["totals"]["live"] == 0
        assert client.submit("echo", [1], wait=True).accepted
    finally:
        client.close(flush=False)


def test_a_ctrl_c_that_lands_in_the_gevent_clients_io_greenlet_reaches_the_program_and_loses_no_submit(node):
    """Fault (an audit: 0 of 5,000 submits reached the node, 5 runs in 5): a
    gevent program gets Ctrl-C while the client's I/O greenlet is running --
    Python raises a signal's KeyboardInterrupt in whichever greenlet runs --
    and catches it to ``close()`` the client. The interrupt ended the I/O
    loop: ``close()`` raised "the client was closed" and every submit not
    yet acknowledged was lost. Now the interrupt is raised in the main
    greenlet and the loop goes on. Here it is raised in the loop at its next
    turn: the program gets it, and ``close()`` delivers every submit."""
    from miyaq.runtime import green

    client = miyaq.Client(node.endpoint, green=True)
    core = client._io.core
    real = core.on_timer
    armed = False

    def interrupted(now: float) -> None:
        nonlocal armed
        if armed:
            armed = False
            raise KeyboardInterrupt
        real(now)

    core.on_timer = interrupted
    try:
        for i in range(500):
            client.submit("echo", [i], queue="ctrl-c")
        armed = True
        with pytest.raises(KeyboardInterrupt):
            green.sleep(30)        # the program waits; the interrupt comes here
        assert not armed
        client.close(timeout=30)
    finally:
        client.close(flush=False)
    with miyaq.Client(node.endpoint) as counter:
        assert counter.status()["queues"]["ctrl-c"]["ready"] == 500


def test_a_ctrl_c_just_after_the_gevent_clients_io_greenlet_sent_a_batch_loses_no_submit(node):
    """Fault (a review audit: 1 run in 20 lost the 7 submits of a batch): a
    real Ctrl-C whose handler runs in the gevent client's I/O greenlet just
    after it sent a batch of submits and before it recorded them as sent.
    Caught there and passed on, the interrupt still cost the batch: in
    neither the waiting list nor the sent one, never resent, and ``close()``
    timed out. Ctrl-C's ``KeyboardInterrupt`` is now kept out of the I/O
    greenlet altogether (raised in the main greenlet from the hub): here the
    signal is raised at exactly that point; the program gets it, and
    ``close()`` delivers every submit."""
    import signal

    import gevent

    from miyaq.protocol import commands as c
    from miyaq.runtime import green

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)    # Python's own, as a program has
    client = miyaq.Client(node.endpoint, green=True)
    submits = client._io.core.submits
    real_send = submits._send
    armed = True

    def send(node_index: int, command: bytes, body: dict) -> bool:
        nonlocal armed
        sent = real_send(node_index, command, body)
        if armed and command == c.SUBMIT and gevent.getcurrent() is client._io._handle:
            armed = False
            signal.raise_signal(signal.SIGINT)     # its handler runs here, before the batch is recorded
        return sent

    submits._send = send
    try:
        with pytest.raises(KeyboardInterrupt):
            for i in range(500):
                client.submit("echo", [i], queue="ctrl-c-batch")
            green.sleep(30)        # the program waits; the interrupt comes here
        assert not armed
        client.close(timeout=30)
    finally:
        client.close(flush=False)
        signal.signal(signal.SIGINT, previous)
    with miyaq.Client(node.endpoint) as counter:
        assert counter.status()["queues"]["ctrl-c-batch"]["ready"] == 500


def test_every_gevent_client_of_a_program_is_shielded_from_ctrl_c_and_python_s_handler_comes_back(node):
    """Fault (a review audit): the Ctrl-C shield compared the SIGINT handler
    with a bound method read anew, never the same object: its handler was
    never put back when the first gevent client closed, and every later
    client -- a short-lived one for a health check, then the main one --
    took it for a handler of the program's own and went unshielded. Here
    two clients one after the other: each is shielded while it lives, and
    Python's own handler is back after each."""
    import signal

    from miyaq.runtime import green

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)    # Python's own, as a program has
    from miyaq.runtime import interrupts

    shield = interrupts._ctrl_c_shield
    try:
        for _ in range(2):
            client = miyaq.Client(node.endpoint, green=True)
            client.status()
            assert client._io._handle in shield.shielded
            assert signal.getsignal(signal.SIGINT) is not signal.default_int_handler    # the shield's
            client.close()
            green.sleep(0)              # the loop's end is linked: the shield hears it
            assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, previous)


UNENCODABLE_REQUESTS = {
    "status": lambda c: c.status({1}),
    "dead": lambda c: c.dead("retry", ids={"a"}),
    "tasks": lambda c: c.tasks(limit=object()),
    "receive": lambda c: c.receive([object()]),
    "request": lambda c: c.request("STATUS", {}),         # a str command, not bytes
}


@pytest.mark.parametrize("green", [False, True], ids=["threads", "gevent"])
@pytest.mark.parametrize("what", sorted(UNENCODABLE_REQUESTS))
def test_a_request_with_a_field_msgpack_cannot_encode_raises_at_once_and_the_client_works_on(node, green, what):
    """Bad input: a status, dead-letter, tasks or receive call with an argument
    msgpack cannot encode (a set, an object). Before, the I/O loop that sent
    it (always, for a gevent client: every handler's client in a gevent
    worker) failed encoding it, and every later call of the client failed
    ("the client was closed"). Now TypeError in the caller; the client works on."""
    client = miyaq.Client(node.endpoint, request_timeout=5.0, green=green)
    try:
        with pytest.raises(TypeError, match="msgpack cannot encode|command must be bytes"):
            UNENCODABLE_REQUESTS[what](client)
        assert client.status()["totals"]["live"] == 0
    finally:
        client.close(flush=False)


def test_a_task_is_not_found_only_when_every_node_said_so(node, client_for):
    """Fault: in a cluster the node asked first does not answer (frozen,
    overloaded) and the next, which does not hold the task, answers "not
    found". ``status()`` raised NotFound -- an answer a caller may take as
    "the task is gone, submit it again" while the silent node holds it. Now
    the silent node's Timeout is raised; NotFound stays for every node
    saying so."""
    silent = CountingNode()           # reads every request and never answers
    try:
        client = client_for(f"{silent.endpoint},{node.endpoint}", request_timeout=1.0)
        with pytest.raises(miyaq.Timeout):
            client.status("held-by-the-silent-node", node=0)
        alone = client_for(node.endpoint, request_timeout=1.0)
        with pytest.raises(miyaq.NotFound):
            alone.status("nowhere")
    finally:
        silent.close()


def test_the_clients_answers_carry_no_protocol_request_number(client):
    """Fault: ``client.dead()``, ``status()`` and the other calls that return
    a node's answer as a dict returned it with the protocol's own ``req``
    number in it -- an internal of the wire, not part of the answer, that
    callers printing or comparing answers tripped over. Now it is left out
    (``Client.request``, the raw call, still returns the reply as it came)."""
    assert "req" not in client.status()
    assert "req" not in client.dead("list")
    assert "req" not in client.ring()


@pytest.mark.parametrize("how", ["submit", "call"])
def test_flush_waits_for_a_submit_or_call_whose_wait_was_interrupted_and_raises_its_failure(make_node, client_for,
                                                                                           how):
    """Fault: a gevent program stops waiting for a ``submit(wait=True)`` or a
    ``call()`` (a ``gevent.Timeout`` around it) while the node is full; the
    submit then fails at its deadline (busy). flush() waits for it like any
    other submit and raises the failure. Before, flush() did not know the
    submit (``call()``'s, a review audit found, not even after the first
    fix): it returned at once and the task was lost unsaid."""
    import gevent

    node = make_node(max_tasks=1)
    client = miyaq.Client(node.endpoint, green=True, submit_timeout=0.5)
    try:
        client_for(node.endpoint).submit("echo", [0], wait=True)    # full: a patient client (a stall past 0.5 s)
        with pytest.raises(gevent.Timeout):
            with gevent.Timeout(0.05):     # well within the 0.5 s the full node keeps it waiting
                if how == "call":
                    client.call("echo", [1], id="g" * 32)
                else:
                    client.submit("echo", [1], id="i" * 32, wait=True)
        with pytest.raises(miyaq.Busy, match="full"):
            client.flush()
        client.flush()      # told once: the next flush has nothing left to raise
    finally:
        client.close(flush=False)


@pytest.mark.parametrize("how", ["submit", "call"])
def test_flush_waits_for_a_waited_submit_or_call_interrupted_by_ctrl_c_on_the_threaded_client(make_node, client_for,
                                                                                               how):
    """Fault (a review audit): Ctrl-C lands while a threaded client's
    ``submit(wait=True)`` reads the sockets itself (the short path of an
    idle client) or while ``call()`` waits for the acknowledgement, the
    node full; the submit then fails at its deadline (busy). flush() waits
    for it and raises the failure. Before, neither was known to flush(): it
    returned at once and the task was lost unsaid."""
    import signal
    import threading

    node = make_node(max_tasks=1)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    client = miyaq.Client(node.endpoint, green=False, submit_timeout=2.0)
    ctrl_c = threading.Timer(0.1, signal.pthread_kill, (threading.main_thread().ident, signal.SIGINT))
    try:
        client_for(node.endpoint).submit("echo", [0], wait=True)    # full: a patient client (a stall past 2 s)
        ctrl_c.start()
        with pytest.raises(KeyboardInterrupt):
            if how == "call":
                client.call("echo", [1], id="c" * 32)
            else:
                client.submit("echo", [1], id="s" * 32, wait=True)
        with pytest.raises(miyaq.Busy, match="full"):
            client.flush()
        client.flush()      # told once
    finally:
        ctrl_c.cancel()
        signal.signal(signal.SIGINT, previous)
        client.close(flush=False)
