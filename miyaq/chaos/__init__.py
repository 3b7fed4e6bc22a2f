"""``miyaq chaos``: a fault-injection run against a miyaq cluster, and the
checker that says whether any accepted task was lost.

Parts, one job each:

- :mod:`.tasks`: the task app the run's workers execute; its handler
  records every start and finish in a per-process file.
- :mod:`.history`: the run's history (JSON lines) and the reader that
  follows the workers' files while the run goes on.
- :mod:`.schema`: the fields of each history record kind, checked once.
- :mod:`.procs`: child processes that die with the run (ports come from
  :mod:`miyaq.testing.ports`).
- :mod:`.cluster`: the local cluster (ZooKeeper, nodes, workers) a run
  starts and faults, each node a :mod:`.nodespec`; :mod:`.external`:
  someone else's cluster (``--zk``).
- :mod:`.netns`: each node and ZooKeeper server in its own network
  namespace, for partitions; :mod:`.firewall`: iptables rules inside them;
  :mod:`.cluster_network`: the network faults applied by node id;
  :mod:`.netdelay`: a delaying link in user space.
- :mod:`.zkfaults`: the run's ZooKeeper (a server or an ensemble) and the
  ensemble's faults; :mod:`.disk`: small filesystems under the data
  directories, for disk faults.
- :mod:`.fault_kind` (what a fault kind is), :mod:`.faults` (the kinds by
  name and the mix), :mod:`.nodefaults`, :mod:`.netfaults` and
  :mod:`.hostfaults` (the kinds themselves), and :mod:`.nemesis`: what can
  go wrong, and when; :mod:`.rolling`: the operator's procedures under
  load instead (``--rolling``).
- :mod:`.producer`: submits at a fixed rate and records every answer.
- :mod:`.final`: asks the cluster for every task's state at the end.
- :mod:`.checker`: reads a history and finds lost and duplicated tasks,
  :mod:`.explain`: puts every extra start down to a fault and a documented
  rule; :mod:`.metrics`: throughput, latency and recovery from the same
  history.
- :mod:`.report` and :mod:`.timeline`: the terminal table and the PNG.
- :mod:`.runner`: one run from start to report.

How to run one and read its report: docs/chaos.md.
"""
