"""``miyaq chaos``: a fault-injection run against a miyaq cluster, and the
checker that says whether any accepted task was lost.

Parts, one job each:

- :mod:`.tasks`: the task app the run's workers execute; its handler
  records every start and finish in a per-process file.
- :mod:`.history`: the run's history (JSON lines) and the reader that
  follows the workers' files while the run goes on.
- :mod:`.procs`: child processes that die with the run; :mod:`.ports`:
  ports a restarted node can have again.
- :mod:`.cluster`: the local cluster (ZooKeeper, nodes, workers) a run
  starts and faults; :mod:`.external`: someone else's cluster (``--zk``).
- :mod:`.netns`: each node and ZooKeeper server in its own network
  namespace, for partitions; :mod:`.firewall`: iptables rules inside them.
- :mod:`.zkfaults`: the run's ZooKeeper (a server or an ensemble) and the
  ensemble's faults.
- :mod:`.faults` and :mod:`.nemesis`: what can go wrong, and when.
- :mod:`.producer`: submits at a fixed rate and records every answer.
- :mod:`.final`: asks the cluster for every task's state at the end.
- :mod:`.checker`: reads a history and finds lost and duplicated tasks;
  :mod:`.metrics`: throughput, latency and recovery from the same history.
- :mod:`.report` and :mod:`.timeline`: the terminal table and the PNG.
- :mod:`.runner`: one run from start to report.

How to run one and read its report: docs/chaos.md.
"""
