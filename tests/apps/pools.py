"""Handlers for the pool tests: blocking the way ordinary code blocks
(``time.sleep``, never ``gevent.sleep``), sync and ``async def`` side by
side. Each records what it did as JSON lines in the file named by
$MIYAQ_TEST_EVENTS (one ``write`` per line with O_APPEND, so the lines of
handlers running in threads, greenlets and child processes interleave whole
and in the order they happened)."""
from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time

import miyaq
from apps.basic import read_events
from miyaq.runtime import green

# Handlers submit tasks too: to the nodes the worker was told (--connect
# reaches a worker process as MIYAQ_CONNECT).
app = miyaq.App(os.environ.get("MIYAQ_CONNECT") or "tcp://127.0.0.1:7450")

#: Whether gevent had patched the standard library when this module was imported.
PATCHED_AT_IMPORT = green.is_patched("socket") and green.is_patched("time")

BARRIER_WAIT = 20.0     # seconds a gathering handler waits for its peers at most


def record(*event) -> None:
    path = os.environ["MIYAQ_TEST_EVENTS"]
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps(event) + "\n").encode())
    finally:
        os.close(fd)


def max_in_flight(events: list[list], tag: str) -> int:
    """The most handlers of ``tag`` between their start and end at once."""
    now = most = 0
    for e in events:
        if e[1] == tag and e[0] == "start":
            now += 1
            most = max(most, now)
        elif e[1] == tag and e[0] == "end":
            now -= 1
    return most


def _started(tag: str) -> int:
    return sum(1 for e in read_events(os.environ["MIYAQ_TEST_EVENTS"]) if e[0] == "start" and e[1] == tag)


@app.task(name="gather")
def gather(n: int, tag: str) -> int:
    """Block (time.sleep) until ``n`` handlers of ``tag`` have started, or
    BARRIER_WAIT passed; return how many had started."""
    record("start", tag, os.getpid())
    end = time.monotonic() + BARRIER_WAIT
    while _started(tag) < n and time.monotonic() < end:
        time.sleep(0.01)
    seen = _started(tag)
    record("end", tag, os.getpid())
    return seen


@app.task(name="agather")
async def agather(n: int, tag: str) -> int:
    """``gather`` as a coroutine (asyncio.sleep)."""
    record("start", tag, os.getpid())
    end = time.monotonic() + BARRIER_WAIT
    while _started(tag) < n and time.monotonic() < end:
        await asyncio.sleep(0.01)
    seen = _started(tag)
    record("end", tag, os.getpid())
    return seen


@app.task(name="hang")
def hang(tag: str) -> None:
    """Never returns by itself: blocks 50 ms at a time, forever."""
    record("start", tag, os.getpid(), miyaq.current_task().attempt)
    while True:
        time.sleep(0.05)


@app.task(name="ahang")
async def ahang(tag: str) -> None:
    record("start", tag, os.getpid(), miyaq.current_task().attempt)
    try:
        await asyncio.sleep(3600)
    except asyncio.CancelledError:
        record("cancelled", tag, os.getpid())
        raise


@app.task(name="overrun_once")
def overrun_once(tag: str) -> int:
    """The first attempt hangs; later ones return their attempt number."""
    ctx = miyaq.current_task()
    record("start", tag, os.getpid(), ctx.attempt)
    while ctx.attempt == 1:
        time.sleep(0.05)
    return ctx.attempt


@app.task(name="aoverrun_once")
async def aoverrun_once(tag: str) -> int:
    ctx = miyaq.current_task()
    record("start", tag, os.getpid(), ctx.attempt)
    if ctx.attempt == 1:
        await asyncio.sleep(3600)
    return ctx.attempt


@app.task(name="slow_first")
def slow_first(tag: str, seconds: float) -> int:
    """The first attempt blocks ``seconds``; later ones return at once."""
    ctx = miyaq.current_task()
    record("start", tag, os.getpid(), ctx.attempt)
    if ctx.attempt == 1:
        time.sleep(seconds)
    record("end", tag, os.getpid(), ctx.attempt)
    return ctx.attempt


@app.task(name="until_file")
def until_file(tag: str, path: str) -> bool:
    """Block (time.sleep, 10 ms at a time) until ``path`` exists, or
    BARRIER_WAIT passed; an ``end`` record only if it appeared."""
    record("start", tag, os.getpid())
    end = time.monotonic() + BARRIER_WAIT
    while not os.path.exists(path) and time.monotonic() < end:
        time.sleep(0.01)
    if os.path.exists(path):
        record("end", tag, os.getpid())
        return True
    return False


@app.task(name="touchy")
def touchy(seconds: float, every: float) -> int:
    """Runs past its timeout, touching in time."""
    ctx = miyaq.current_task()
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        time.sleep(every)
        ctx.touch()
    return ctx.attempt


@app.task(name="atouchy")
async def atouchy(seconds: float, every: float) -> int:
    ctx = miyaq.current_task()
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        await asyncio.sleep(every)
        ctx.touch()
    return ctx.attempt


@app.task(name="pid")
def pid() -> int:
    return os.getpid()


@app.task(name="ignored_in_subprocess")
def ignored_in_subprocess() -> int:
    """The mask of signals a subprocess this handler starts ignores
    (``SigIgn`` of its ``/proc/self/status``)."""
    import subprocess
    out = subprocess.run([sys.executable, "-c", "print(open('/proc/self/status').read())"],
                         capture_output=True, text=True, check=True).stdout
    line = next(row for row in out.splitlines() if row.startswith("SigIgn:"))
    return int(line.split()[1], 16)


@app.task(name="where")
def where() -> str | None:
    """The node that leased this task, as the handler sees it."""
    return miyaq.current_task().node


@app.task(name="aadd")
async def aadd(a: int, b: int) -> int:
    await asyncio.sleep(0)
    return a + b


@app.task(name="patched_at_import")
def patched_at_import() -> bool:
    return PATCHED_AT_IMPORT


@app.task(name="spin")
def spin(seconds: float) -> int:
    """CPU-bound: never yields, never blocks."""
    end = time.monotonic() + seconds
    n = 0
    while time.monotonic() < end:
        n += 1
    return n


@app.task(name="add")
def add(a: int, b: int) -> int:
    return a + b


@app.task(name="run_program")
def run_program(tag: str) -> int:
    """Runs a program and waits for it (``sleep 60``, as a handler waits
    for ffmpeg or a shell script), recording the program's pid."""
    proc = subprocess.Popen(["sleep", "60"])
    record("program", tag, proc.pid)
    return proc.wait()


@app.task(name="process_pool_map")
def process_pool_map(n: int, method: str) -> int:
    """Maps over a ``multiprocessing.Pool`` of two processes started by
    ``method`` (fork, spawn), as CPU-bound code does."""
    import multiprocessing
    with multiprocessing.get_context(method).Pool(2) as workers:
        return sum(workers.map(abs, range(-n, n)))


@app.task(name="thread_pool_map")
def thread_pool_map(n: int) -> int:
    from multiprocessing.pool import ThreadPool
    with ThreadPool(2) as workers:
        return sum(workers.map(abs, range(-n, n)))


@app.task(name="signal_forked_helper")
def signal_forked_helper(signame: str) -> bool:
    """Forks a helper that sleeps, sends it ``signame`` and says whether it
    ended within 10 s (killed otherwise), as ``multiprocessing.Process
    .terminate()`` on a forked process does."""
    import signal
    ready, tell = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(ready)
        os.write(tell, b"x")        # started, its signals set (the fork's first instant has the inherited ones)
        time.sleep(60)
        os._exit(0)
    os.close(tell)
    try:
        os.read(ready, 1)
    finally:
        os.close(ready)
    os.kill(pid, getattr(signal, signame))
    end = time.monotonic() + 10.0
    while time.monotonic() < end:
        if os.waitpid(pid, os.WNOHANG)[0]:
            return True
        time.sleep(0.02)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return False


@app.task(name="call_add")
def call_add(a: int, b: int, wait: float) -> int:
    """Waits in its handler for another task's result, as a sync team's
    first handler that needs one does: ``add.call()`` on its own queue."""
    return add.call(a, b, timeout=wait)


@app.task(name="chain")
def chain(a: int, b: int) -> int:
    """Submits another task from a handler and waits for its result."""
    return add.call(a, b, timeout=20)


@app.task(name="achain")
async def achain(a: int, b: int) -> int:
    """The same from a coroutine (the app's client of the asyncio thread)."""
    await asyncio.sleep(0)
    return add.call(a, b, timeout=20)


@app.task(name="stuck")
def stuck(tag: str) -> None:
    """One long C call: no bytecode runs in it for an hour."""
    record("start", tag, os.getpid())
    time.sleep(3600)


@app.task(name="acall_async")
async def acall_async(a: int, b: int) -> int:
    """Submits from a coroutine through the app's asyncio client (awaits, never blocks the loop)."""
    return await add.call_async(a, b, timeout=20)


class Escape(BaseException):
    """An application's own BaseException (not an Exception)."""


@app.task(name="leave")
def leave(how: str) -> None:
    """Code that would stop the process running it: ``sys.exit(3)``, a
    ``KeyboardInterrupt``, another ``BaseException``, or the one that ends
    a greenlet quietly (``greenlet.GreenletExit``)."""
    if how == "exit":
        sys.exit(3)
    if how == "base":
        raise Escape("out")
    if how == "greenlet":
        import greenlet
        raise greenlet.GreenletExit()
    raise KeyboardInterrupt


@app.task(name="aleave")
async def aleave(how: str) -> None:
    """``leave`` from a coroutine."""
    await asyncio.sleep(0)
    leave(how)


class Undescribable(Exception):
    """An exception whose ``__str__`` and ``__repr__`` raise."""

    def __str__(self) -> str:
        raise RuntimeError("no str for you")

    def __repr__(self) -> str:
        raise RuntimeError("no repr for you")


class UndescribableEscape(BaseException):
    """A BaseException whose ``__repr__`` raises."""

    def __repr__(self) -> str:
        raise RuntimeError("no repr for you")


class ExitingStr(Exception):
    """An exception whose ``__str__`` raises ``SystemExit`` (or, with
    ``how``, ``KeyboardInterrupt`` or ``GreenletExit``)."""

    def __init__(self, how: str) -> None:
        super().__init__(how)
        self.how = how

    def __str__(self) -> str:
        if self.how == "greenlet":
            import greenlet
            raise greenlet.GreenletExit()
        raise KeyboardInterrupt() if self.how == "interrupt" else SystemExit("from __str__")


@app.task(name="undescribable")
def undescribable(how: str) -> None:
    """Raises an exception that cannot be turned into text."""
    if how in ("exit", "interrupt", "greenlet"):
        raise ExitingStr(how)
    raise UndescribableEscape() if how == "base" else Undescribable()


@app.task(name="unsendable")
def unsendable(how: str) -> None:
    """Fails with an error a node cannot take as given: a message that is
    not a string, one msgpack cannot encode, a delay that is no number."""
    if how == "bytes":
        raise miyaq.Retry(b"a message in bytes")
    if how == "int":
        raise miyaq.Reject(42)
    if how == "surrogate":
        raise ValueError(b"caf\xe9".decode("utf-8", "surrogateescape"))
    raise miyaq.Retry("later", delay=object() if how == "object" else 10 ** 100)


@app.task(name="astop_loop")
async def astop_loop() -> str:
    """Stops the event loop it runs on, then goes on awaiting."""
    asyncio.get_running_loop().stop()
    await asyncio.sleep(0.01)
    return "went on"


async def _exit_aside(how: str) -> None:
    raise KeyboardInterrupt() if how == "interrupt" else SystemExit("from a side task")


@app.task(name="aexit_aside")
async def aexit_aside(how: str) -> str:
    """Starts a side task (or a loop callback) that raises SystemExit or
    KeyboardInterrupt -- asyncio lets those two out of the loop -- then goes
    on awaiting."""
    loop = asyncio.get_running_loop()
    if how == "callback":
        def interrupt() -> None:
            raise KeyboardInterrupt()
        loop.call_soon(interrupt)
    else:
        loop.create_task(_exit_aside(how))
    await asyncio.sleep(0.05)
    return "went on"


@app.task(name="sized")
def sized(n: int) -> bytes:
    """A result of ``n`` bytes."""
    return b"x" * n


@app.task(name="unpackable_result")
def unpackable_result(tag: str) -> set[int]:
    """Records its attempt and returns a set, which msgpack cannot pack."""
    record("start", tag, os.getpid(), miyaq.current_task().attempt)
    return {1, 2}


@app.task(name="aunpackable_result")
async def aunpackable_result(tag: str) -> set[int]:
    record("start", tag, os.getpid(), miyaq.current_task().attempt)
    return {1, 2}


def _wait_for_event(tag: str, what: str) -> bool:
    """Block (time.sleep) until an event ``[what, tag]`` is recorded, or BARRIER_WAIT passed."""
    end = time.monotonic() + BARRIER_WAIT
    while time.monotonic() < end:
        if any(e[:2] == [what, tag] for e in read_events(os.environ["MIYAQ_TEST_EVENTS"])):
            return True
        time.sleep(0.02)
    return False


@app.task(name="await_helper")
def await_helper(tag: str) -> bool:
    """Block until another handler's forked helper has started, then record
    "bystander done" and return (in the worker, and in the helper's copy of
    this handler when the helper yields to its hub)."""
    record("start", tag, os.getpid())
    seen = _wait_for_event(tag, "helper")
    record("bystander done", tag, os.getpid())
    return seen


@app.task(name="fork_helper")
def fork_helper(tag: str) -> int:
    """Fork a helper that waits (time.sleep) until "bystander done" is
    recorded, then exits with status 7; return its exit code."""
    pid = os.fork()
    if pid == 0:
        record("helper", tag, os.getpid())
        _wait_for_event(tag, "bystander done")
        os._exit(7)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


@app.task(name="fork_and_return")
def fork_and_return(tag: str) -> str:
    """Forks, and both copies return (the forked one does not exit)."""
    if os.fork() == 0:
        record("forked", tag, os.getpid())
        return "the forked copy"
    return "the child"


#: What a forked copy's probe records: the worker's calls into its sockets.
_SOCKET_CALLS = ("_zmq_poll", "recv_frames", "recv_with_user", "recv_bounded", "send_frames", "has_message")


@app.task(name="fork_and_wake_readers")
def fork_and_wake_readers(tag: str) -> int:
    """Fork a copy that counts every call into the worker's sockets made
    through :mod:`miyaq.runtime.hub_socket`, wakes each reader waiting on
    one (as the descriptor it shares with the worker does when a message
    comes to the worker) and each greenlet waiting on a ``zmq.green``
    socket (a link's monitor: as its watcher does), yields to its hub
    (``green.sleep``) and records ``["copy", tag, readers woken, monitor
    readers woken, green sockets still watched, calls, their names]``
    before it exits; return the
    copy's exit code (-9: it did not get back to its probe within
    ``BARRIER_WAIT`` and was killed). Gevent pool only."""
    import gc

    import zmq.green as zmq_green

    from miyaq.runtime import hub_socket

    pid = os.fork()
    if pid == 0:
        try:
            calls: list[str] = []

            def counted(name: str, fn):
                def call(*args, **kwargs):
                    calls.append(name)
                    return fn(*args, **kwargs)
                return call

            for name in _SOCKET_CALLS:
                setattr(hub_socket, name, counted(name, getattr(hub_socket, name)))
            gc.unfreeze()       # the worker froze its start-up objects (miyaq.runtime.heap): see them all
            readers = [o for o in gc.get_objects() if isinstance(o, hub_socket.HubSocket) and o._fd.waiting]
            for reader in readers:
                reader._fd.wake()
            # The link monitors (zmq.green): a watcher on the shared descriptor
            # asks libzmq for the socket's state; a reader waits for it to say "readable".
            greens = [o for o in gc.get_objects() if isinstance(o, zmq_green.Socket) and not o.closed]
            watching = sum(1 for o in greens if o._state_event is not None and o._state_event.active)
            monitors = [o for o in greens if not o._Socket__readable.ready()]
            for monitor in monitors:
                monitor._Socket__readable.set()
            for _ in range(20):     # the woken readers run at the first; the others let the copy's hub go round
                green.sleep(0.01)
            record("copy", tag, len(readers), len(monitors), watching, len(calls), sorted(set(calls)))
        finally:
            os._exit(0)
    end = time.monotonic() + BARRIER_WAIT
    while time.monotonic() < end:       # bounded: a copy that spins never gets back to its probe
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
