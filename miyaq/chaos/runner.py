"""One chaos run from start to verdict.

Phases, each recorded in the history as ``{"ev": "phase", "name": ...}``:
``load`` (the producer submits at ``rate`` for ``duration`` seconds while
the nemesis injects faults), ``drain`` (the nemesis stops and heals, the
producer waits for its last answers, then the run waits up to
``drain_timeout`` for every accepted task to finish), ``checked`` (every
task's state asked of the cluster: ``final`` records). Then the cluster is
stopped, the workers' records merged into the history, and the checker,
the report and the timeline run on the history alone.

Every process and namespace the run made is removed on every exit path
(``finally``; children also die with the run if it is SIGKILLed, see
:mod:`.procs`). A KeyboardInterrupt (Ctrl-C or SIGTERM from the CLI)
skips to the cleanup and still reports what the history holds.
"""
from __future__ import annotations

import json
import logging
import os
import random
import time
from dataclasses import dataclass, field
from typing import IO, Any

from .. import __version__
from ..errors import ConfigError, MiyaqError, Timeout
from . import timeline
from .checker import Verdict, check
from .cluster import LocalCluster
from .final import final_states
from .history import (
    HISTORY,
    Activity,
    ExecTail,
    HistoryWriter,
    ReadStats,
    merge_executions,
    read_history,
)
from ..worker.config import POOLS, processes_concurrency
from .faults import KINDS, KINDS_NETWORK
from .nemesis import Nemesis
from .rolling import Rolling
from .producer import Producer
from .report import Progress
from .notes import start_notes
from .sizes import SizeSpec

logger = logging.getLogger(__name__)

TICK = 0.25
CANNOT = {**{kind: "needs --partitions" for kind in KINDS_NETWORK},
          "clock": "needs faketime: apt-get install faketime",
          "zkserver": "needs --zk-servers 3", "zkleader": "needs --zk-servers 3",
          "zkquorum": "needs --zk-servers 3", "zkminority": "needs --partitions and --zk-servers 3",
          "diskfull": "needs root (it mounts a small tmpfs per node)", "zk": "not against --zk",
          "wipe": "not against --zk"}


CONCURRENCY = 32
"""Handlers each worker runs at once, unless told (``--concurrency``); with
the processes pool, where each is a child process, the number of CPUs."""


def default_concurrency(pool: str) -> int:
    """``--concurrency`` when not given: :data:`CONCURRENCY` for the gevent
    and threads pools, one child per CPU for the processes pool (as
    ``miyaq worker`` does): 32 children per worker would take a small
    machine's memory and, at every replacement, its CPU."""
    return processes_concurrency() if pool == "processes" else CONCURRENCY


@dataclass
class ChaosConfig:
    """Every setting of a run; docs/chaos.md explains each flag."""

    nodes: int = 3
    replicas: int = 2
    workers: int = 2
    concurrency: int = CONCURRENCY
    pool: str = "gevent"
    duration: float = 60.0
    rate: float = 200.0
    task_time: float = 0.05
    reject_every: int = 0
    busy: bool = False      # tasks compute for their time instead of sleeping (--busy)
    payload: SizeSpec | None = None
    result: SizeSpec | None = None
    faults: list[str] = field(default_factory=list)
    fault_order: str = "random"
    interval: float = 10.0
    fault_duration: float = 5.0
    pause_duration: float = 8.0
    unsafe: bool = False
    partitions: bool = False
    zk_servers: int = 1
    rolling: bool = False
    secure: bool = False
    zk: str | None = None
    cluster: str = "chaos"
    fsync: str = "interval"
    node_args: list[str] = field(default_factory=list)
    submit_timeout: float = 10.0
    drain_timeout: float = 120.0
    recover_timeout: float = 60.0
    ready_timeout: float = 90.0
    out: str | None = None
    seed: int | None = None

    def validate(self) -> None:
        if self.nodes < 1 or self.workers < 1 or self.concurrency < 1:
            raise ConfigError("--nodes, --workers and --concurrency must be at least 1")
        if self.pool not in POOLS:
            raise ConfigError(f"--pool must be one of {', '.join(POOLS)}, not {self.pool!r}")
        if not 1 <= self.replicas <= self.nodes:
            raise ConfigError("--replicas must be between 1 and --nodes")
        if self.rate <= 0 or self.duration <= 0 or self.interval <= 0:
            raise ConfigError("--rate, --duration and --interval must be positive")
        if min(self.fault_duration, self.pause_duration, self.drain_timeout, self.recover_timeout) < 0:
            raise ConfigError("durations and timeouts must not be negative")
        if self.rolling and (self.zk or self.partitions):
            raise ConfigError("--rolling runs on its own local cluster: not with --zk or --partitions")
        if self.secure and self.zk:
            raise ConfigError("--secure makes the keys of its own local cluster: not with --zk")
        if not 1 <= self.zk_servers <= 9:
            raise ConfigError("--zk-servers must be between 1 and 9")
        if self.zk and self.zk_servers != 1:
            raise ConfigError("--zk-servers starts the run's own ZooKeeper: not with --zk")
        if self.rolling and self.nodes < 2:
            raise ConfigError("--rolling needs at least 2 nodes")
        if self.reject_every < 0:
            raise ConfigError("--reject-every must be 0 (no task rejects itself) or more")


def make_cluster(config: ChaosConfig, run_dir: str, rng: random.Random) -> Any:
    if config.zk:
        from .external import ExternalCluster
        return ExternalCluster(run_dir, config.zk, config.cluster, workers=config.workers,
                               concurrency=config.concurrency, replicas=config.replicas, pool=config.pool)
    net: Any = None
    if config.partitions:
        from .netns import Namespaces
        net = Namespaces(config.nodes, rng, zk_servers=config.zk_servers).setup()
    disks = None
    if "diskfull" in config.faults and os.geteuid() == 0:
        from .disk import SmallDisks
        disks = SmallDisks()
    return LocalCluster(run_dir, nodes=config.nodes, replicas=config.replicas, workers=config.workers,
                        concurrency=config.concurrency, fsync=config.fsync, node_args=config.node_args,
                        name=config.cluster, net=net, disks=disks, secure=config.secure,
                        zk_servers=config.zk_servers, pool=config.pool)


def wait_whole(cluster: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    why = ""
    while time.monotonic() < deadline:
        dead = [n for n, p in getattr(cluster, "procs", {}).items() if not p.alive()]
        if dead:
            proc = cluster.procs[dead[0]]
            raise MiyaqError(f"node {dead[0]} exited during start; its log ends:\n{proc.log_tail()}")
        whole, why = cluster.whole()
        if whole:
            return
        time.sleep(TICK)
    raise Timeout(f"the cluster was not whole within {timeout:g}s: {why}")


class ChaosRun:
    def __init__(self, config: ChaosConfig, out: IO[str]) -> None:
        config.validate()
        self.config = config
        self.out = out
        self.seed = config.seed if config.seed is not None else random.randrange(2 ** 31)
        self.rng = random.Random(self.seed)
        self.run_dir = os.path.abspath(config.out or time.strftime("miyaq-chaos-%Y%m%d-%H%M%S"))
        os.makedirs(self.run_dir, exist_ok=True)
        self.history_path = os.path.join(self.run_dir, HISTORY)
        if os.path.exists(self.history_path):
            raise ConfigError(f"{self.history_path} exists already; give --out a new directory")
        self.history = HistoryWriter(self.history_path)
        self.activity = Activity()
        self.tail = ExecTail(self.run_dir)
        self.interrupted = False
        self.cleaning = False

    def run(self) -> Verdict:
        cluster = producer = nemesis = None
        try:
            cluster = make_cluster(self.config, self.run_dir, self.rng)
            self.out.write(f"miyaq chaos: starting in {self.run_dir} (seed {self.seed})\n")
            for note in start_notes(self.config):
                if note:
                    self.out.write(note)
            cluster.start()
            wait_whole(cluster, self.config.ready_timeout)
            producer, nemesis = self._load(cluster)
            self._drain(cluster, producer, nemesis)
            self._final(cluster, producer)
        except KeyboardInterrupt:
            self.interrupted = True
            self.out.write("\nmiyaq chaos: interrupted; cleaning up\n")
        finally:
            self.cleaning = True       # the CLI's signal handler leaves the cleanup alone
            if nemesis is not None:
                nemesis.stop(timeout=5.0 if self.interrupted else None)
            if producer is not None:
                producer.finish(timeout=5.0 if self.interrupted else None)
            if cluster is not None:
                cluster.close()
            merge_executions(self.run_dir, self.history)
            self.history.close()
        return self.verdict()

    # -- phases ------------------------------------------------------------------------
    def _progress(self, phase: str, progress: Progress, producer: Producer | None, nemesis: Any) -> None:
        records = self.tail.poll()
        self.activity.feed(records)
        if producer is not None:
            producer.finished([str(r.get("id")) for r in records if r["ev"] == "finish"])
        counters = {"finished": len(self.activity.finished)}
        faults: list[str] = []
        if producer is not None:
            counters.update(producer.summary(), in_flight=producer.in_flight)
        if nemesis is not None:
            counters["faults"] = nemesis.injected
            faults = nemesis.describe(time.time())
        progress.update(phase, counters, faults)

    def _load(self, cluster: Any) -> tuple[Producer, Any]:
        c = self.config
        self.history.write("run", version=__version__, seed=self.seed, nodes=len(cluster.node_ids),
                           node_endpoints={n: cluster.endpoints[i] for i, n in enumerate(cluster.node_ids)},
                           replicas=c.replicas, rate=c.rate, duration=c.duration, faults=",".join(c.faults),
                           interval=c.interval, fault_duration=c.fault_duration, pause_duration=c.pause_duration,
                           workers=c.workers, concurrency=c.concurrency, pool=c.pool, task_time=c.task_time,
                           busy=c.busy,
                           reject_every=c.reject_every, payload=str(c.payload or 0), result=str(c.result or 0),
                           partitions=c.partitions, unsafe=c.unsafe, fsync=c.fsync,
                           external=bool(c.zk), secure=c.secure,
                           rolling=c.rolling, zk_servers=c.zk_servers, run_dir=self.run_dir)
        self.history.write("phase", name="load")
        key, server_key = cluster.credentials("producer")
        producer = Producer(cluster.endpoints, self.history, rate=c.rate, duration=c.duration,
                            task_time=c.task_time, submit_timeout=c.submit_timeout,
                            rng=random.Random(self.rng.random()), key=key, server_key=server_key,
                            reject_every=c.reject_every, payload=c.payload, result=c.result,
                            busy=c.busy).start()
        kinds = [k for k in c.faults if k in cluster.capabilities]
        for kind in c.faults:
            if kind not in cluster.capabilities:
                why = CANNOT.get(kind, "not supported here")
                self.out.write(f"miyaq chaos: no '{kind}' faults in this run ({why})\n")
        end = time.monotonic() + c.duration
        progress = Progress(self.out, c.duration)
        if c.rolling:
            rolling = Rolling(cluster, self.history, recover_timeout=c.recover_timeout).start()
            while time.monotonic() < end:
                self._progress("load", progress, producer, rolling)
                time.sleep(TICK)
            if not rolling.done():
                self.out.write("miyaq chaos: the load ended before the rolling restart; give a longer --duration\n")
            progress.done()
            return producer, rolling
        longest = max([c.pause_duration] + [KINDS[k].lasts(c.fault_duration) for k in kinds])
        nemesis = Nemesis(cluster, self.history, kinds, interval=c.interval, duration=c.fault_duration,
                          pause_duration=c.pause_duration, recover_timeout=c.recover_timeout,
                          replicas=c.replicas, unsafe=c.unsafe, busy_workers=self.activity.busy_workers,
                          rng=random.Random(self.rng.random()),
                          last_start=end - longest - 1.0, cycle=c.fault_order == "cycle").start()
        while time.monotonic() < end:
            self._progress("load", progress, producer, nemesis)
            time.sleep(TICK)
        progress.done()
        return producer, nemesis

    def _drain(self, cluster: Any, producer: Producer, nemesis: Any) -> None:
        self.history.write("phase", name="drain")
        self.out.write("miyaq chaos: load done; healing, then draining\n")
        nemesis.stop()
        producer.finish()
        progress = Progress(self.out, self.config.drain_timeout)
        deadline = time.monotonic() + self.config.drain_timeout
        while time.monotonic() < deadline:
            self._progress("drain", progress, producer, None)
            if producer.accepted <= self.activity.finished:
                break
            time.sleep(TICK)
        progress.done()
        self.history.write("phase", name="drained", unfinished=len(producer.accepted - self.activity.finished),
                           reads_dropped=producer.reads_dropped)

    def _final(self, cluster: Any, producer: Producer) -> None:
        ids = sorted(producer.accepted) + sorted(producer.refused)
        self.out.write(f"miyaq chaos: asking the cluster for the state of {len(ids)} task(s)\n")
        deadline = time.monotonic() + max(10.0, min(60.0, self.config.drain_timeout))
        endpoints = cluster.live_endpoints()
        if not endpoints:
            raise MiyaqError("no node answers: the final check cannot be made")
        def progress(n: int, total: int) -> None:
            self.out.write(f"  ... {n}/{total}\n")

        key, server_key = cluster.credentials("admin")
        states = final_states(endpoints, ids, deadline, progress, key=key, server_key=server_key,
                              refused=producer.refused - producer.accepted, rejecting=producer.rejecting)
        for task_id, state in states.items():
            self.history.write("final", id=task_id, state=state)
        self.history.write("phase", name="checked")
        self.history.write("stats", nodes=cluster.stats())

    # -- verdict ------------------------------------------------------------------------
    def verdict(self) -> Verdict:
        read = ReadStats()
        verdict = check(read_history(self.history_path, read), read=read)
        summary = verdict.summary()
        summary["interrupted"] = self.interrupted
        summary["history"] = self.history_path
        picture: str | None = os.path.join(self.run_dir, "timeline.png")
        try:
            timeline.draw(verdict.metrics, str(picture), title=f"miyaq chaos {os.path.basename(self.run_dir)}")
            summary["timeline"] = picture
        except (ConfigError, OSError, ValueError) as exc:
            logger.error("no timeline picture: %s", exc)
            picture = None
        with open(os.path.join(self.run_dir, "summary.json"), "w", encoding="utf-8") as fh:
            json.dump(summary, fh, indent=2, default=str)
        self.summary = summary
        self.picture = picture
        return verdict


