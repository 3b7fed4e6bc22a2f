"""``miyaq dev-cluster``: a whole cluster on this machine for development.

- :mod:`~miyaq.devcluster.cluster`: :class:`~miyaq.devcluster.cluster.DevCluster`, which starts
  ZooKeeper, the nodes and the workers, and stops them in order;
- :mod:`~miyaq.devcluster.ports`: the blocks of ports its nodes listen on;
- :mod:`~miyaq.devcluster.node`: one node process and its endpoints;
- :mod:`~miyaq.devcluster.busy`: whether a node exited at start because
  another process took one of its ports (it is then started again);
- :mod:`~miyaq.devcluster.ready`: the waits until the ring is whole.

What it started is recorded in ``.miyaq-dev.json`` by :mod:`miyaq.devstate`,
which stays outside this package: clients and the CLI read it to find the
cluster, and must not import anything that starts one. The package itself
loads :class:`DevCluster` only when it is asked for, so importing one of
its light modules (its ports) does not load the cluster's.
"""

from typing import Any

__all__ = ["DevCluster"]


def __getattr__(name: str) -> Any:
    """``miyaq.devcluster.DevCluster``, as before this was a package: loaded
    on first use, not when a light module of the package is imported."""
    if name == "DevCluster":
        from miyaq.devcluster.cluster import DevCluster
        return DevCluster
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
