"""Shared fixtures: real nodes and workers (in threads or as processes), and
the ZooKeeper server for cluster tests. On failure, the logs of the real
servers a test started are printed."""
from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from miyaq.client.client import Client  # noqa: E402
from miyaq.testing.harness import NodeProc, ThreadNode, ThreadWorker, WorkerProc  # noqa: E402
from miyaq.testing.inprocess import InProcessCluster  # noqa: E402

try:
    from zk_fixtures import *  # noqa: E402,F401,F403  (zk_server, zk_cluster_name)
except ImportError as exc:  # pragma: no cover - the module ships with the tests
    if exc.name != "zk_fixtures":
        raise

TESTS_DIR = os.path.dirname(__file__)
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (TESTS_DIR, os.environ.get("PYTHONPATH")) if p)

# The tests start many Python processes (nodes, workers, the CLI, the
# documentation's commands). In an environment that sets
# PYTHONDONTWRITEBYTECODE (some CI images and sandboxes do) none of them
# writes bytecode, and each compiled every module of miyaq it imports from
# source again: a node's imports took 0.40 s of CPU instead of 0.21 s. The
# bytecode of miyaq and of the tests' apps is written here, once, beside
# their sources (as any import would without the variable; a module already
# compiled is skipped); everything else still writes none, so a module a
# test writes and imports is never read from a stale cache.
if os.environ.get("PYTHONDONTWRITEBYTECODE"):
    import compileall

    import miyaq

    for _tree in (os.path.dirname(miyaq.__file__), os.path.join(TESTS_DIR, "apps")):
        compileall.compile_dir(_tree, quiet=1)


_limiters: dict[str, list] = {}     # module name -> its module-level log limiters
_seen = [0]                         # len(sys.modules) when they were last looked at


def module_log_limiters() -> list:
    """Every :class:`~miyaq.logs.LogLimiter` a loaded miyaq module keeps at
    module level (``_log = LogLimiter(logger)``): one per process, shared by
    every test the process runs. Each module is looked at once (7 ms for
    every module at each test was 26 s of a suite run)."""
    from miyaq.logs import LogLimiter

    if _seen[0] != len(sys.modules):      # modules were imported since: look at the new ones
        _seen[0] = len(sys.modules)
        for name, module in list(sys.modules.items()):
            if name not in _limiters and name.startswith("miyaq") and module is not None:
                _limiters[name] = [v for v in list(vars(module).values()) if isinstance(v, LogLimiter)]
    return [limiter for found in _limiters.values() for limiter in found]


@pytest.fixture(autouse=True)
def fresh_log_limiters():
    """Each test starts with every module-level log limiter's windows empty.
    A limiter lets 5 lines of a kind through a minute per process, and one
    pytest process runs many tests: a test that waits for a line (a worker
    logging its node's refusal, tests/test_worker_queue_bound.py) timed out
    when the tests run before it in the same process, in the last minute,
    had used up that kind's lines -- which depends on how ``-n`` shares the
    tests out and how fast they run (2026-12-07, under load). A thread node
    or worker of the test shares these limiters too."""
    for limiter in module_log_limiters():
        limiter._rate.windows.clear()
    yield


def _run_order(item) -> int:
    if item.get_closest_marker("chaos_run"):
        return 0
    if item.get_closest_marker("loads_cpu"):
        return 2
    return 1 if item.nodeid.startswith("tests/") else 3


def pytest_collection_modifyitems(config, items):
    """The minute-long chaos runs first: with ``-n 3`` (scripts/test) one
    worker runs them while the others work through the rest, instead of all
    waiting on them at the end. ``loads_cpu`` tests (miyaq bench's full-speed
    runs) come after the other tests, so they do not slow the chaos runs
    down, and before the documentation's pages, whose many short files even
    out the workers' ends. The order is otherwise kept."""
    items.sort(key=_run_order)


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)


def _failed(request) -> bool:
    rep = getattr(request.node, "rep_call", None)
    return rep is None or rep.failed


@pytest.fixture
def ctx():
    """A plain (not green) ZeroMQ context for raw sockets a test speaks through."""
    import zmq
    context = zmq.Context()
    yield context
    context.destroy(linger=0)


# The thread nodes' shutdown_grace: how long a node's stop waits for the
# tasks still running on its workers. A test's raw worker holding a lease
# never reports it, so with the harness's 2 s every such test's teardown
# waited 2 s for nothing (22 tests of the 65 files using these fixtures,
# 40 s of their run). A test about the grace itself passes its own.
TEST_GRACE = 0.2


@pytest.fixture
def node():
    """A standalone node in a thread of the test process."""
    with ThreadNode(heartbeat=0.25, shutdown_grace=TEST_GRACE) as n:
        yield n


@pytest.fixture
def make_node():
    """Factory for thread nodes with settings; all are stopped at the end."""
    nodes: list[ThreadNode] = []

    def make(**settings) -> ThreadNode:
        settings.setdefault("heartbeat", 0.25)
        settings.setdefault("shutdown_grace", TEST_GRACE)
        n = ThreadNode(**settings).start()
        nodes.append(n)
        return n

    yield make
    for n in nodes:
        n.stop()


@pytest.fixture
def sockets():
    """Raw client sockets a test opens (appends), all closed at the end."""
    opened: list = []
    yield opened
    for sock in opened:
        sock.close()


@pytest.fixture
def client_for():
    clients: list[Client] = []

    def make(endpoint: str, **options) -> Client:
        options.setdefault("submit_timeout", 10.0)
        c = Client(endpoint, **options)
        clients.append(c)
        return c

    yield make
    for c in clients:
        c.close(flush=False)


@pytest.fixture
def client(node, client_for):
    return client_for(node.endpoint)


@pytest.fixture
def thread_worker():
    """Factory: run a Worker for an App in a thread; stopped at the end."""
    workers: list[ThreadWorker] = []

    def make(app, endpoint: str | list[str], **options) -> ThreadWorker:
        options.setdefault("heartbeat", 0.25)
        options.setdefault("grace", 2.0)
        w = ThreadWorker(app, [endpoint] if isinstance(endpoint, str) else endpoint, **options).start()
        workers.append(w)
        return w

    yield make
    for w in workers:
        w.stop()


@pytest.fixture
def procs(request, tmp_path):
    """Factory for node/worker subprocesses; killed at the end, logs shown on
    failure. Their logs are in the test's ``tmp_path`` (pytest keeps the last
    few runs' and removes older ones)."""
    started: list = []
    logs = str(tmp_path)

    class Factory:
        def node(self, *extra: str, port: int | None = None, env=None, wait: bool = True) -> NodeProc:
            """A node process, once it answers; with ``wait=False`` as soon as
            it is started (the caller calls ``wait_ready``: nodes started
            together become ready together, as ``miyaq dev-cluster``'s do)."""
            p = NodeProc(port=port, extra=list(extra), env=env, log_dir=logs).start()
            started.append(p)
            return p.wait_ready() if wait else p

        def worker(self, app: str, endpoint: str, concurrency: int = 4, *extra: str, env=None) -> WorkerProc:
            p = WorkerProc(app, [endpoint], concurrency=concurrency, extra=list(extra), env=env,
                           log_dir=logs).start()
            started.append(p)
            return p

    yield Factory()
    failed = _failed(request)
    for p in started:
        p.kill()
        if failed:
            sys.stderr.write(f"\n----- log of {p.name} -----\n{p.log_tail()}\n")


@pytest.fixture
def inproc(request):
    """Factory: an in-process cluster (miyaq.testing.inprocess), started;
    closed at the end. On failure the nodes' state and the last messages on
    its in-memory network are shown."""
    clusters: list[InProcessCluster] = []

    def make(nodes=3, ring=True, **settings) -> InProcessCluster:
        cluster = InProcessCluster(nodes, **settings)
        clusters.append(cluster)
        return cluster.start(ring)

    yield make
    failed = _failed(request)
    for cluster in clusters:
        if failed:
            sys.stderr.write(f"\n----- in-process cluster -----\n{cluster.describe()}\n")
        cluster.close()


@pytest.fixture
def short_first_contact(monkeypatch):
    """A client gives up on a node it never reached after 2 s instead of
    ``FIRST_CONTACT``'s 5 s, for tests of what the first-contact error says
    (tests/test_client_core.py checks the 5 s itself, on a fake clock). Not
    shorter: ``miyaq.aio.Client`` probes the endpoint only once a call has
    waited 0.5 s, and the message names what the probe found."""
    from miyaq.client import submits
    monkeypatch.setattr(submits, "FIRST_CONTACT", 2.0)


@pytest.fixture
def umask_000():
    """The most permissive umask a program may start with (put back after the test)."""
    from file_modes import umask
    with umask(0o000):
        yield


@pytest.fixture
def umask_022():
    """The usual umask: files 0644 and directories 0755 unless made otherwise (put back after)."""
    from file_modes import umask
    with umask(0o022):
        yield


@pytest.fixture
def quick_key_watch(monkeypatch):
    """A thread node looks for changes in its keys' ``authorized/`` every
    50 ms instead of ``zap.WATCH_INTERVAL``'s 2 s, for tests that add or
    revoke a key while it runs and wait for the reload (the interval is not
    their point; tests/test_security_keys.py tests the watch). Request it
    before the fixture that makes the node: the watch reads the interval at
    each of its waits, and one begun before would still last 2 s."""
    from miyaq.security import zap
    monkeypatch.setattr(zap, "WATCH_INTERVAL", 0.05)
