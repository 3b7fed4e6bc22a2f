"""pytest fixtures for tests that need a real ZooKeeper.

Use with ``from zk_fixtures import *`` in ``tests/conftest.py`` (this imports
the fixtures *and* the report hook below), or ``pytest -p zk_fixtures`` with
``tests`` on ``PYTHONPATH`` — not both, or the log tail is attached twice.

* ``zk_server`` (session): one ZooKeeperServer for the whole run. It FAILS,
  never skips, when ZooKeeper is not installed: a cluster test that did not
  run must not look like a pass.
* ``zk_ensemble`` (function): a real 3-server ensemble, one per test module
  (its JVMs take a few seconds to start), with every server running and
  serving when the test starts and again after it (a test may kill some).
  Fails, never skips, like ``zk_server``. Its operations block the calling
  thread: with coordinators in the test's hub, call them through
  ``green.run_in_thread`` so kazoo keeps running meanwhile.
* ``zk_cluster_name`` (function): a unique cluster name, so each test has its
  own ``/miyaq/<cluster>/`` tree on the shared server.
* ``zk_client`` (function): a plain kazoo client of the shared server;
  ``zk_clients`` makes more, of any hosts, with or without credentials.
* ``zk_supervisor`` (function): the Supervisor a test hands its
  coordinators (as a node hands its own). At teardown it kills what is
  left and fails the test if any greenlet crashed: tests that inject a
  crash on purpose make their own supervisor.
* ``wait_until`` (a bounded poll that fails the test at its deadline, never
  a timing assertion) and ``member`` (a Member with loopback endpoints) are
  helpers for the ZooKeeper tests.
* ``Recorder`` (what a coordinator told its listeners), ``leaders``,
  ``agreed`` and ``assert_epochs_increase`` check what coordinators agree on.
* When a test that used ``zk_server`` or ``zk_ensemble`` fails, the tail of
  the servers' logs is added to the report as "ZooKeeper log (tail)".
"""
from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterator

import pytest
from kazoo.client import KazooClient

from miyaq.cluster.membership import Coordinator
from miyaq.cluster.ring_view import Member, RingView
from miyaq.cluster.zk_auth import ZkAuth
from miyaq.cluster.zk_coordinator import ZooKeeperCoordinator
from miyaq.errors import MiyaqError
from miyaq.runtime import Supervisor, green, monotonic
from miyaq.runtime.zookeeper import kazoo_handler
from miyaq.testing.zk_ensemble import ZooKeeperEnsemble
from miyaq.testing.zookeeper import ZooKeeperServer

__all__ = ["zk_server", "zk_ensemble_module", "zk_ensemble", "zk_cluster_name", "zk_supervisor", "zk_client",
           "zk_clients", "make_coordinator", "pytest_runtest_makereport"]

_LOG_TAIL_BYTES = 12_000
DEADLINE = 15.0


def wait_until(predicate: Callable[[], object], what: str, timeout: float = DEADLINE) -> None:
    """Poll ``predicate`` (yielding to other greenlets) until true; fail the test after ``timeout`` s."""
    deadline = monotonic() + timeout
    while not predicate():
        if monotonic() >= deadline:
            pytest.fail(f"timed out after {timeout:g}s waiting for {what}")
        green.sleep(0.05)


def member(node_id: str, weight: float = 1.0) -> Member:
    """A Member with loopback endpoints derived from its id (nothing listens there)."""
    base = 7400 + sum(node_id.encode()) % 500
    return Member(
        node_id=node_id,
        service=f"tcp://127.0.0.1:{base}",
        peer=f"tcp://127.0.0.1:{base + 1000}",
        pub=f"tcp://127.0.0.1:{base + 2000}",
        http=f"http://127.0.0.1:{base + 3000}",
        weight=weight,
    )


class Recorder:
    """Everything a coordinator told its listeners."""

    def __init__(self, coordinator: Coordinator) -> None:
        self.views: list[RingView] = []
        self.leadership: list[tuple[bool, int]] = []
        coordinator.add_listener(self.views.append)
        coordinator.add_leader_listener(lambda is_leader, epoch: self.leadership.append((is_leader, epoch)))


def leaders(coordinators: list[Coordinator]) -> list[Coordinator]:
    return [c for c in coordinators if c.is_leader]


def agreed(coordinators: list[Coordinator], members: set[str]) -> bool:
    """All hold the same epoch, with ``members`` in the ring and one leader among them."""
    views = [c.view for c in coordinators]
    current = [c.local.node_id for c in leaders(coordinators) if c.local is not None]
    return (
        len({v.epoch for v in views}) == 1
        and all(set(v.members) == members for v in views)
        and len(current) == 1
        and all(v.leader == current[0] for v in views)
    )


def assert_epochs_increase(recorder: Recorder) -> None:
    epochs = [v.epoch for v in recorder.views]
    assert epochs == sorted(set(epochs)), f"views went back or repeated: {epochs}"


@pytest.fixture(scope="session")
def zk_server() -> Iterator[ZooKeeperServer]:
    server = ZooKeeperServer()
    problem = None
    try:
        server.start()
    except MiyaqError as exc:
        problem = str(exc)
    if problem is not None:
        server.close()
        pytest.fail(f"these tests need a real ZooKeeper and none could be started: {problem}", pytrace=False)
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="module")
def zk_ensemble_module(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ZooKeeperEnsemble]:
    ensemble = ZooKeeperEnsemble(3, tmp_path_factory.mktemp("zk-ensemble"))
    problem = None
    try:
        ensemble.start()
    except MiyaqError as exc:
        problem = str(exc)
    if problem is not None:
        ensemble.close()
        pytest.fail(f"these tests need a real ZooKeeper ensemble and none could be started: {problem}",
                    pytrace=False)
    try:
        yield ensemble
    finally:
        ensemble.close()


@pytest.fixture
def zk_ensemble(zk_ensemble_module: ZooKeeperEnsemble) -> Iterator[ZooKeeperEnsemble]:
    zk_ensemble_module.start()          # every server running and serving
    yield zk_ensemble_module
    zk_ensemble_module.start()


@pytest.fixture
def zk_cluster_name(request: pytest.FixtureRequest) -> str:
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", request.node.name)[:80]
    return f"{name}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def zk_clients() -> Iterator[Callable[..., KazooClient]]:
    """Plain kazoo clients of any server or ensemble, with or without credentials; closed at teardown."""
    made: list[KazooClient] = []

    def connect(hosts: str, auth: ZkAuth | None = None) -> KazooClient:
        options = auth.client_options() if auth is not None else {}
        client = KazooClient(hosts=hosts, handler=kazoo_handler(), **options)
        client.start(timeout=10)
        made.append(client)
        return client

    yield connect
    for client in made:
        client.stop()
        client.close()


@pytest.fixture
def zk_client(zk_server: ZooKeeperServer, zk_clients: Callable[..., KazooClient]) -> KazooClient:
    """A plain kazoo client of the shared server, to look at znodes (or change them) behind a node's back."""
    return zk_clients(zk_server.hosts)


@pytest.fixture
def zk_supervisor() -> Iterator[Supervisor]:
    fatal: list[str] = []
    supervisor = Supervisor("test", on_fatal=lambda name, exc: fatal.append(f"{name}: {exc!r}"))
    yield supervisor
    supervisor.kill()
    crashes = dict(supervisor.crashes)
    if crashes or fatal:
        pytest.fail(f"greenlets crashed during the test: {crashes} (fatal: {fatal}); see the log above",
                    pytrace=False)


@pytest.fixture
def make_coordinator(zk_server: ZooKeeperServer, zk_cluster_name: str,
                     zk_supervisor: Supervisor) -> Iterator[Callable[..., ZooKeeperCoordinator]]:
    """Start ZooKeeper coordinators of this test's cluster on the session's
    server (a 2 s session unless ``session_timeout`` says otherwise); all
    stopped at teardown."""
    made: list[ZooKeeperCoordinator] = []

    def _make(node_id: str, **options: object) -> ZooKeeperCoordinator:
        options = {"session_timeout": 2.0, "connect_timeout": 5.0, "op_timeout": 5.0,
                   "reconcile_interval": 1.0, **options}
        coordinator = ZooKeeperCoordinator(zk_server.hosts, zk_cluster_name, member(node_id),
                                           supervisor=zk_supervisor, **options)
        made.append(coordinator)
        coordinator.start()
        return coordinator

    yield _make
    for coordinator in made:
        coordinator.stop()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if not report.failed:
        return
    funcargs = getattr(item, "funcargs", {})
    server = funcargs.get("zk_server")
    if isinstance(server, ZooKeeperServer):
        tail = server.log_text(_LOG_TAIL_BYTES)
        report.sections.append(("ZooKeeper log (tail)", tail or "(empty)"))
    ensemble = funcargs.get("zk_ensemble")
    if isinstance(ensemble, ZooKeeperEnsemble):
        report.sections.append(("ZooKeeper ensemble logs (tail)", ensemble.log_text(_LOG_TAIL_BYTES // 3)))
