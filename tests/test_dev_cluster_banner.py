"""What ``miyaq dev-cluster`` prints once its ring is whole, when the port
a reader's code names is taken (the newcomer audit of 2026-12-06)."""
from __future__ import annotations

from types import SimpleNamespace

from miyaq.cli.dev_cluster_cmd import banner
from miyaq.devcluster.node import DevNode


def fake_cluster(first_port: int, base_port: int = 7450) -> SimpleNamespace:
    """A started dev cluster as the banner reads it: three nodes from ``first_port``."""
    nodes = [DevNode(f"n{i}", first_port + 10 * i, SimpleNamespace(pid=100 + i, log_path=f"/tmp/n{i}.log"))
             for i in range(3)]
    return SimpleNamespace(nodes=nodes, base_port=base_port, first_block=first_port, notes=[],
                           endpoints=[n.service for n in nodes],
                           zk_hosts="127.0.0.1:2181", zookeeper=None, workers=None, key=None, cluster="dev",
                           state_path="/home/ann/.miyaq-dev.json", log_dir="/tmp/logs", key_dir=None)


def test_a_cluster_moved_off_the_busy_base_port_says_who_answers_there():
    """Mistake: the README's standalone node left running (port 7450), then
    ``miyaq dev-cluster``: its nodes took 7460, 7470, 7480, and the
    README's ``App("tcp://127.0.0.1:7450")`` -- its worker and its submits --
    went on talking to the standalone node while ``miyaq status`` in that
    directory showed the cluster with no worker. Before, nothing said so."""
    lines = banner(fake_cluster(7460))
    note = next((line for line in lines if line.startswith("note: ")), None)
    assert note == ("note: tcp://127.0.0.1:7450 was in use (a node already running? `miyaq status --connect "
                    "tcp://127.0.0.1:7450`), so the nodes took other ports: code that names "
                    "tcp://127.0.0.1:7450 (an App or Client given it) reaches that, not this cluster; stop it "
                    "first, or give no endpoints"), lines
    assert lines[-1].startswith("ready zk=127.0.0.1:2181 cluster=dev connect=tcp://127.0.0.1:7460,"), lines


def test_no_note_when_the_base_port_was_free_and_the_state_line_says_which_app():
    """Not a fault: the first node at 7450, no note; the state-file line
    says a worker finds the cluster for an App made without endpoints (an
    App given endpoints uses them: before, the line said any worker did)."""
    lines = banner(fake_cluster(7450))
    assert not any(line.startswith("note: ") for line in lines), lines
    assert any("miyaq.App() / miyaq.Client() without endpoints (so `miyaq worker yourmodule:app` for such an "
               "App) use this cluster" in line for line in lines), lines
