"""How the kernel schedules libzmq's I/O threads: whether a send may stop its sender.

Every message an application thread sends to an idle connection wakes the
context's I/O thread (libzmq's mailbox: a write to an ``eventfd``). As an
ordinary thread (``SCHED_OTHER``) the woken I/O thread may *preempt* the
sender on its own core at once -- Linux's wake-up preemption. In a node at
500 tasks/s the acknowledgement of a lone submit took 41 µs of wall time
for 14 µs of CPU: the node's main thread was switched out during two sends
in three (docs/performance-log.md, "The I/O thread that preempted its sender").

``SCHED_BATCH`` keeps the thread's share of the CPU (same weight, same
fairness) and gives up only wake-up preemption: the sender finishes what it
is doing and the I/O thread runs on another core, or as soon as the sender
waits. Measured on the bench's two cores, in turns with the build before:
a client that waits for its reply at once (``submit(wait=True)``,
``call()``) spends 13-34% less CPU and makes 9-16% more round trips a
second, with nothing else moved; in the node and the workers the same
policy moved their sum within the noise (workers less CPU, the node more),
so they keep libzmq's default.

``MIYAQ_IO_THREADS`` chooses for every process that reads it: ``batch`` or
``normal``; unset, each part takes its own default (:data:`CLIENT_DEFAULT`
for the clients, ``normal`` for the rest; docs/configuration.md). Linux
only; a kernel that refuses the policy leaves the threads as they were.
"""
from __future__ import annotations

import functools
import logging
import os
import threading
from typing import Any, Mapping

import zmq

from ..errors import ConfigError

logger = logging.getLogger(__name__)

ENV = "MIYAQ_IO_THREADS"
BATCH = "batch"
NORMAL = "normal"
POLICIES = (BATCH, NORMAL)
#: What the clients' contexts run with when ``MIYAQ_IO_THREADS`` is unset.
CLIENT_DEFAULT = BATCH


def chosen(default: str = NORMAL, environ: Mapping[str, str] | None = None) -> str:
    """The policy ``MIYAQ_IO_THREADS`` asks for, ``default`` when it is unset or
    empty. Raises :class:`~miyaq.errors.ConfigError` for any other value."""
    value = (os.environ if environ is None else environ).get(ENV, "").strip().lower() or default
    if value not in POLICIES:
        raise ConfigError(f"{ENV} must be one of {', '.join(POLICIES)}, not {value!r}")
    return value


def for_client() -> str:
    """The policy of a client's context: ``MIYAQ_IO_THREADS``, else :data:`CLIENT_DEFAULT`."""
    return chosen(CLIENT_DEFAULT)


@functools.cache
def batch_allowed() -> bool:
    """Whether this kernel lets a thread of this process take ``SCHED_BATCH``:
    tried once, on a thread made for the purpose. libzmq aborts the process
    if an I/O thread cannot take the policy it was given, so a context is
    given it only after this has succeeded (a seccomp profile or another
    operating system may refuse it)."""
    set_scheduler = getattr(os, "sched_setscheduler", None)
    policy = getattr(os, "SCHED_BATCH", None)
    if set_scheduler is None or policy is None:
        return False
    outcome: list[bool] = []

    def attempt() -> None:
        try:
            set_scheduler(0, policy, os.sched_param(0))
            outcome.append(True)
        except (OSError, ValueError) as exc:
            logger.debug("SCHED_BATCH refused (%s): libzmq's I/O threads keep the default policy", exc)
            outcome.append(False)

    probe = threading.Thread(target=attempt, name="miyaq-sched-probe", daemon=True)
    probe.start()
    probe.join()
    return bool(outcome and outcome[0])


def apply(ctx: Any, policy: str) -> str:
    """Give ``ctx``'s I/O threads ``policy`` (one of :data:`POLICIES`) and return the
    policy they will run with: ``normal`` where ``batch`` is not allowed here.
    Must be called before the context's first socket (its threads start then)."""
    if policy not in POLICIES:
        raise ValueError(f"unknown I/O thread policy {policy!r} (one of {', '.join(POLICIES)})")
    if policy == BATCH and batch_allowed():
        ctx.set(zmq.THREAD_SCHED_POLICY, os.SCHED_BATCH)
        return BATCH
    return NORMAL
