"""How libzmq's I/O threads are scheduled (miyaq.runtime.io_threads): a
client's run SCHED_BATCH, so that, woken by a send, they no longer preempt
the caller that sent and waits for its reply; MIYAQ_IO_THREADS chooses for
every process; a kernel that refuses the policy leaves the default."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
import zmq

from miyaq.errors import ConfigError
from miyaq.runtime import io_threads
from miyaq.runtime.sockets import SocketFactory
from miyaq.testing.ports import free_port

pytestmark = pytest.mark.skipif(not hasattr(os, "SCHED_BATCH"), reason="Linux scheduling policies")


def _thread_ids() -> set[int]:
    return {int(tid) for tid in os.listdir("/proc/self/task")}


def _name(tid: int) -> str:
    try:
        with open(f"/proc/self/task/{tid}/comm") as fh:
            return fh.read().strip()
    except FileNotFoundError:
        return ""


def started_io_threads(factory: SocketFactory) -> dict[str, int]:
    """Make the factory's first socket (its context starts its threads then) and
    return the scheduling policy of each libzmq thread that appeared, by name."""
    before = _thread_ids()
    sock = factory.ctx.socket(zmq.DEALER)
    try:
        return _named_io_threads(before)
    finally:
        sock.close(linger=0)


def _named_io_threads(before: set[int]) -> dict[str, int]:
    """The policies of the libzmq threads started since ``before``, once both
    have named themselves: a libzmq thread takes its policy, then its name,
    as its first steps, so a thread seen by name has its policy."""
    deadline = time.monotonic() + 10
    while True:
        named = {_name(tid): tid for tid in _thread_ids() - before}
        named = {name: tid for name, tid in named.items() if name.startswith("ZMQbg/")}
        if {"ZMQbg/IO/0", "ZMQbg/Reaper"} <= set(named) or time.monotonic() > deadline:
            return {name: os.sched_getscheduler(tid) for name, tid in named.items()}
        time.sleep(0.01)


@pytest.fixture
def factories():
    made: list[SocketFactory] = []

    def make(**kwargs) -> SocketFactory:
        factory = SocketFactory(green=False, **kwargs)
        made.append(factory)
        return factory
    yield make
    for factory in made:
        factory.close()


def test_a_factory_keeps_libzmqs_default_unless_told(monkeypatch, factories):
    monkeypatch.delenv(io_threads.ENV, raising=False)
    factory = factories()
    assert factory.io_threads == io_threads.NORMAL
    policies = started_io_threads(factory)
    assert "ZMQbg/IO/0" in policies
    assert set(policies.values()) == {os.SCHED_OTHER}


def test_miyaq_io_threads_batch_gives_every_factory_sched_batch(monkeypatch, factories):
    monkeypatch.setenv(io_threads.ENV, "batch")
    factory = factories()
    assert factory.io_threads == io_threads.BATCH
    policies = started_io_threads(factory)
    assert "ZMQbg/IO/0" in policies
    assert set(policies.values()) == {os.SCHED_BATCH}


@pytest.mark.parametrize("setting, policy", [(None, os.SCHED_BATCH), ("normal", os.SCHED_OTHER),
                                             ("", os.SCHED_BATCH)])
def test_a_clients_io_threads_run_sched_batch_unless_miyaq_io_threads_says_normal(monkeypatch, setting, policy):
    """A client whose caller waits for its reply at once (submit(wait=True),
    call()) no longer loses its core to its own I/O thread after each send."""
    import miyaq
    if setting is None:
        monkeypatch.delenv(io_threads.ENV, raising=False)
    else:
        monkeypatch.setenv(io_threads.ENV, setting)
    before = _thread_ids()
    client = miyaq.Client(f"tcp://127.0.0.1:{free_port()}", green=False)
    try:
        policies = _named_io_threads(before)
        assert "ZMQbg/IO/0" in policies, "the client's context started no I/O thread"
        assert set(policies.values()) == {policy}
        assert client._io.factory.io_threads == (io_threads.NORMAL if setting == "normal" else io_threads.BATCH)
    finally:
        client.close()


def test_the_asyncio_client_runs_its_io_threads_sched_batch(monkeypatch):
    import asyncio

    from miyaq.aio import Client as AsyncClient
    monkeypatch.delenv(io_threads.ENV, raising=False)

    async def open_and_close() -> str | None:
        client = AsyncClient(f"tcp://127.0.0.1:{free_port()}")
        try:
            return client._io.factory.io_threads
        finally:
            await client.close()
    assert asyncio.run(open_and_close()) == io_threads.BATCH


def test_an_unknown_miyaq_io_threads_value_is_a_clear_error_before_any_context(monkeypatch):
    monkeypatch.setenv(io_threads.ENV, "realtime")
    with pytest.raises(ConfigError, match="MIYAQ_IO_THREADS must be one of batch, normal, not 'realtime'"):
        SocketFactory(green=False)
    with pytest.raises(ValueError, match="unknown I/O thread policy"):
        SocketFactory(green=False, io_threads="fifo")


def test_a_kernel_that_refuses_sched_batch_leaves_the_threads_as_they_were(monkeypatch, factories):
    """Fault: a seccomp profile (or another kernel) refuses the policy. libzmq
    aborts the process when an I/O thread cannot take the policy it was
    given, so the context must not be given it."""
    def refuse(pid, policy, param):
        raise PermissionError(1, "Operation not permitted")
    monkeypatch.setattr(os, "sched_setscheduler", refuse)
    io_threads.batch_allowed.cache_clear()
    try:
        factory = factories(io_threads=io_threads.BATCH)
        assert factory.io_threads == io_threads.NORMAL
        assert set(started_io_threads(factory).values()) == {os.SCHED_OTHER}
    finally:
        io_threads.batch_allowed.cache_clear()


def test_a_context_passed_in_is_left_as_it_is(factories):
    ctx = zmq.Context()
    try:
        factory = factories(ctx=ctx)
        assert factory.io_threads is None
        assert set(started_io_threads(factory).values()) == {os.SCHED_OTHER}
    finally:
        ctx.destroy(linger=0)


def _process_io_policies(pid: int) -> dict[str, int]:
    policies = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/comm") as fh:
                name = fh.read().strip()
        except FileNotFoundError:
            continue
        if name.startswith("ZMQbg/"):
            policies[name] = os.sched_getscheduler(int(tid))
    return policies


def _wait_for_io_threads(pid: int, proc: subprocess.Popen) -> dict[str, int]:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and proc.poll() is None:
        policies = _process_io_policies(pid)
        if "ZMQbg/IO/0" in policies:
            return policies
        time.sleep(0.05)
    stderr = proc.stderr.read().decode(errors="replace") if proc.poll() is not None else "(still running)"
    raise AssertionError(f"no libzmq I/O thread in process {pid} (exit status {proc.poll()}): {stderr}")


@pytest.mark.parametrize("part, setting, policy", [
    ("node", None, os.SCHED_OTHER), ("node", "batch", os.SCHED_BATCH), ("relay", "batch", os.SCHED_OTHER)])
def test_a_node_follows_miyaq_io_threads_and_the_bench_relay_keeps_libzmqs_default(part, setting, policy):
    """A node keeps libzmq's default unless told; the bench's baseline is a
    bare relay, and miyaq's choice is not given to it."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != io_threads.ENV}
    if setting is not None:
        env[io_threads.ENV] = setting
    if part == "relay":
        argv = [sys.executable, "-m", "miyaq.bench.bare", "relay", "--bind", f"tcp://127.0.0.1:{port}"]
    else:
        argv = [sys.executable, "-m", "miyaq.cli.main", "node", "--port", str(port), "--http-port", "0",
                "--peer-port", str(free_port()), "--pub-port", str(free_port())]
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        assert set(_wait_for_io_threads(proc.pid, proc).values()) == {policy}
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        proc.stderr.close()
