"""The bench's producer: a process of its own that submits through a public API.

Started by the bench as ``PYTHON agent.py --system miyaq|bare --connect EP
--queue Q --name NAME``
(by path, so another build's interpreter can run it: ``--python``). It
connects, prints one JSON line ``{"ready": true, "pid": PID}``, then reads
one JSON command per line from stdin and answers each with one JSON line:

``{"op": "load", "mode": M, "tag": T, "tasks": N, "payload": B, "rate": R,
"seconds": S, "times": PATH, "countdown": C}``
    submits N tasks with ids ``T-0 .. T-(N-1)``. ``mode`` is ``bulk``
    (pipelined ``submit()`` then ``flush()``), ``rate`` (the same, paced to R
    per second on the monotonic clock; a submit behind schedule goes at
    once), ``confirmed`` (``submit(..., wait=True)`` one at a time) or
    ``call`` (``call()`` one at a time: submit and wait for the result).
    The load ends by S seconds: each submit (and call) may wait only what
    is left of them -- a node that stalls makes the submit fail with a
    timeout in time for the bench to read the answer, not after the
    client's own ``submit_timeout``.
    Each submit's ``time.time()``, read just before the call, is written to
    PATH as native doubles (``array('d')``). Answers with what was
    submitted and accepted, when, and the CPU seconds this process used
    while loading (``getrusage``: every thread, the client's I/O thread too).
``{"op": "cancel", "tag": T, "first": I, "count": K}``
    cancels ``T-I .. T-(I+K-1)`` one request at a time.
``{"op": "quit"}``
    closes the connection and exits.

A failure is reported in the answer's ``errors``, never as a traceback.
This file imports only the standard library at module level, and of
miyaq only its public ``Client`` (the ``miyaq`` driver), so the same file
drives older builds.
"""
from __future__ import annotations

import sys
import os

if sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
    del sys.path[0]     # run by path: this directory is not a package root

import argparse  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import time  # noqa: E402
from array import array  # noqa: E402
from typing import Any, Protocol  # noqa: E402


class Driver(Protocol):
    """How the agent talks to one system (miyaq's Client, or the bare relay)."""

    def submit(self, task_id: str, body: bytes, wait: bool, countdown: float | None,
               timeout: float) -> None: ...
    def call(self, task_id: str, body: bytes, timeout: float) -> None: ...
    def flush(self, timeout: float) -> int: ...
    def cancel(self, task_id: str) -> bool: ...
    def close(self) -> None: ...


class MiyaqDriver:
    """Drives a miyaq node through ``miyaq.Client`` (pipelined submits)."""

    def __init__(self, endpoints: str, name: str, queue: str) -> None:
        from miyaq import Client
        self.client = Client(endpoints, request_timeout=10.0)
        self.name = name
        self.queue = queue
        self.accepted = 0
        self.handles: list[Any] = []
        deadline = time.monotonic() + 30.0
        while True:           # connected and answering before "ready"
            try:
                self.client.status()
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def submit(self, task_id: str, body: bytes, wait: bool, countdown: float | None,
               timeout: float) -> None:
        """Submit, waiting at most ``timeout`` seconds for room in the window
        and, with ``wait``, for the acknowledgement: the client's
        ``submit_timeout`` is set to it (the public attribute each submit
        reads; a per-call argument older builds do not have)."""
        self.client.submit_timeout = timeout
        if countdown:
            handle = self.client.submit(self.name, (body,), id=task_id, wait=wait, queue=self.queue,
                                        countdown=countdown)
        else:
            handle = self.client.submit(self.name, (body,), id=task_id, wait=wait, queue=self.queue)
        if not wait:
            self.handles.append(handle)

    def call(self, task_id: str, body: bytes, timeout: float) -> None:
        self.client.submit_timeout = timeout
        self.client.call(self.name, (body,), id=task_id, timeout=timeout, queue=self.queue)

    def flush(self, timeout: float) -> int:
        handles, self.handles = self.handles, []
        try:
            self.client.flush(timeout)
        finally:
            self.accepted = sum(1 for h in handles if h.accepted)
        return self.accepted

    def cancel(self, task_id: str) -> bool:
        return bool(self.client.cancel(task_id))

    def close(self) -> None:
        self.client.close(flush=False)


def cpu_now() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def error_text(exc: BaseException) -> str:
    return getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"


def load(driver: Driver, cmd: dict[str, Any]) -> dict[str, Any]:
    """Run one ``load`` command (see the module doc)."""
    mode, tag, n = cmd["mode"], cmd["tag"], int(cmd["tasks"])
    rate = float(cmd.get("rate") or 0)
    countdown = cmd.get("countdown")
    body = b"x" * int(cmd.get("payload", 100))
    monotonic, wall = time.monotonic, time.time
    deadline = monotonic() + float(cmd.get("seconds", 120.0))
    times = array("d")
    errors: list[str] = []
    submitted = accepted_inline = 0
    cpu0, t0 = cpu_now(), monotonic()
    first = wall()
    try:
        for i in range(n):
            if rate:
                now = monotonic()
                if now >= deadline:
                    break
                delay = t0 + i / rate - now
                if delay > 0:
                    time.sleep(min(delay, deadline - now))
            left = deadline - monotonic()
            if left <= 0:
                break
            times.append(wall())
            if mode == "call":
                driver.call(f"{tag}-{i}", body, left)
                accepted_inline += 1
            else:
                driver.submit(f"{tag}-{i}", body, mode == "confirmed", countdown, left)
                accepted_inline += mode == "confirmed"
            submitted = i + 1
    except Exception as exc:   # a driver's error ends the load; it is reported
        del times[submitted:]
        errors.append(f"submit stopped after {submitted} tasks: {error_text(exc)}")
    if submitted < n and not errors:
        errors.append(f"timeout: only {submitted} of {n} tasks submitted")
    accepted = accepted_inline
    if mode in ("bulk", "rate"):
        try:
            accepted = driver.flush(max(0.0, deadline - monotonic()))
        except Exception as exc:
            accepted = getattr(driver, "accepted", 0)
            errors.append(f"not every submit was acknowledged in time: {error_text(exc)}")
    acked_at = wall()
    cpu = cpu_now() - cpu0
    with open(cmd["times"], "wb") as fh:
        times.tofile(fh)
    return {"submitted": submitted, "accepted": accepted, "first_submit": first, "acked_at": acked_at,
            "cpu_seconds": round(cpu, 6), "errors": errors}


def cancel(driver: Driver, cmd: dict[str, Any]) -> dict[str, Any]:
    tag, first, count = cmd["tag"], int(cmd["first"]), int(cmd["count"])
    cpu0, t0 = cpu_now(), time.monotonic()
    cancelled, errors = 0, []
    try:
        for i in range(first, first + count):
            cancelled += driver.cancel(f"{tag}-{i}")
    except Exception as exc:
        errors.append(f"cancel stopped after {cancelled}: {error_text(exc)}")
    return {"cancelled": cancelled, "seconds": round(time.monotonic() - t0, 6),
            "cpu_seconds": round(cpu_now() - cpu0, 6), "errors": errors}


def make_driver(args: argparse.Namespace) -> Driver:
    if args.system == "bare":
        from miyaq.bench.bare_client import BareDriver
        return BareDriver(args.connect)
    return MiyaqDriver(args.connect, args.name, args.queue)


#: miyaq.bench.TASK_NAME, written out: the agent runs by path against
#: whichever build ``--compare-python`` imports, which may not have it.
TASK_NAME = "miyaq.bench.noop"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="agent.py")
    parser.add_argument("--system", choices=("miyaq", "bare"), default="miyaq")
    parser.add_argument("--connect", required=True)
    parser.add_argument("--name", default=TASK_NAME)
    parser.add_argument("--queue", default="default")
    args = parser.parse_args(argv)
    out = sys.stdout
    try:
        driver = make_driver(args)
    except Exception as exc:
        out.write(json.dumps({"ready": False, "error": error_text(exc)}) + "\n")
        out.flush()
        return 2
    out.write(json.dumps({"ready": True, "pid": os.getpid()}) + "\n")
    out.flush()
    try:
        for line in sys.stdin:
            cmd = json.loads(line)
            op = cmd.get("op")
            if op == "quit":
                break
            answer = load(driver, cmd) if op == "load" else cancel(driver, cmd) if op == "cancel" else {
                "errors": [f"unknown op {op!r}"]}
            out.write(json.dumps(answer) + "\n")
            out.flush()
    finally:
        driver.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
