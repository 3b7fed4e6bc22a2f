"""A data dir belongs to one cluster (:mod:`miyaq.node.data_dir`).

Fault simulated throughout: a node restarted with its data dir under
another ``--cluster`` (a typo in ``MIYAQ_CLUSTER`` during a rolling change,
a directory restored to the wrong machine), or standalone. Before
2026-12-06 it started, formed a ring of its own and ran every copy it held
while its own cluster ran them too (the rolling audit: 215 of 215 due tasks
ran twice)."""
from __future__ import annotations

from pathlib import Path

import pytest
from test_startup_errors import error_line, start_node

from miyaq.config import NodeConfig
from miyaq.errors import ConfigError
from miyaq.node.data_dir import CLUSTER_FILE, check_cluster, cluster_of, record_cluster
from miyaq.testing.harness import ThreadNode, free_port


def config(data_dir: Path, cluster: str | None) -> NodeConfig:
    """A clustered node's settings (``cluster`` None: standalone)."""
    if cluster is None:
        return NodeConfig(data_dir=str(data_dir))
    return NodeConfig(data_dir=str(data_dir), zk="127.0.0.1:2181", cluster=cluster)


def test_a_clustered_data_dir_is_refused_by_another_cluster_and_by_a_standalone_node(tmp_path):
    record_cluster(config(tmp_path, "prod"))
    assert (tmp_path / CLUSTER_FILE).read_text() == "prod\n" and cluster_of(str(tmp_path)) == "prod"
    check_cluster(config(tmp_path, "prod"))                       # its own cluster: fine
    with pytest.raises(ConfigError, match=r"holds the tasks of cluster 'prod' .*starts cluster 'prdo'.*"
                                          r"--cluster prod"):
        check_cluster(config(tmp_path, "prdo"))
    with pytest.raises(ConfigError, match=r"starts standalone \(no --zk\)"):
        check_cluster(config(tmp_path, None))
    assert (tmp_path / CLUSTER_FILE).read_text() == "prod\n"      # nothing changed


def test_a_standalone_data_dir_may_join_a_cluster_and_a_new_one_any(tmp_path):
    """A standalone node's tasks are held nowhere else: its data dir (no
    cluster file, as a build before 2026-12-06 left any data dir) may join a
    cluster, which then claims it."""
    record_cluster(config(tmp_path, None))
    assert not (tmp_path / CLUSTER_FILE).exists()
    check_cluster(config(tmp_path, "prod"))
    check_cluster(config(tmp_path / "not-made-yet", "prod"))
    record_cluster(config(tmp_path, "prod"))
    assert cluster_of(str(tmp_path)) == "prod"


@pytest.mark.parametrize("content, message", [(b"", "is empty"), (b"\xff\xfe", "not UTF-8")])
def test_a_damaged_cluster_file_is_a_clear_error(tmp_path, content, message):
    (tmp_path / CLUSTER_FILE).write_bytes(content)
    with pytest.raises(ConfigError, match=message):
        check_cluster(config(tmp_path, "prod"))


@pytest.mark.parametrize("argv, starts", [(["--cluster", "prdo", "--zk", "ZK"], "starts cluster 'prdo'"),
                                          ([], "starts standalone")])
def test_miyaq_node_with_another_clusters_data_dir_is_a_one_line_error(tmp_path, argv, starts):
    """Refused before ZooKeeper is reached (nothing listens at ``--zk``
    here): the data dir is checked first, and the error says what to do."""
    data = tmp_path / "data"
    data.mkdir()
    (data / CLUSTER_FILE).write_text("prod\n")
    argv = [f"127.0.0.1:{free_port()}" if a == "ZK" else a for a in argv]
    line = error_line(start_node("--http-port", "0", "--data-dir", str(data), *argv))
    assert f"data dir {data} holds the tasks of cluster 'prod'" in line and starts in line
    assert "--cluster prod" in line and sorted(p.name for p in data.iterdir()) == [CLUSTER_FILE]


def test_a_clustered_node_writes_its_cluster_in_its_data_dir(zk_server, zk_cluster_name, tmp_path):
    data = tmp_path / "data"
    with ThreadNode(zk=zk_server.hosts, cluster=zk_cluster_name, data_dir=str(data), replicas=1, heartbeat=0.25):
        assert cluster_of(str(data)) == zk_cluster_name
    with pytest.raises(ConfigError, match="holds the tasks of cluster"):
        ThreadNode(zk=zk_server.hosts, cluster=zk_cluster_name + "x", data_dir=str(data), replicas=1).start()
