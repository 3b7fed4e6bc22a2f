"""``miyaq chaos``: the checker on synthetic histories (lost, stuck,
duplicated, failed-but-ran tasks; latency phases; fault recovery), the
history files, the nemesis's safety budget and its fault order. The real
runs are in tests/test_chaos_faults.py."""
from __future__ import annotations

import heapq
import json
import os
import random
import struct
import subprocess
import sys
import threading

import pytest

from miyaq.chaos import netdelay
from miyaq.chaos.checker import check
from miyaq.chaos.faults import KINDS_DEFAULT, KINDS_NETWORK, KINDS_ZK, choose, parse_kinds
from miyaq.chaos.history import (
    Activity,
    ExecTail,
    HistoryWriter,
    merge_executions,
    read_history,
)
from miyaq.chaos.metrics import percentiles
from miyaq.chaos.nemesis import Nemesis
from miyaq.errors import ConfigError

T0 = 1_700_000_000.0


class H:
    """A synthetic history, built record by record."""

    def __init__(self) -> None:
        self.records: list[dict] = [{"ev": "run", "t": T0, "nodes": 3, "replicas": 2,
                                     "node_endpoints": {f"n{i}": f"tcp://127.0.0.1:{7000 + i}" for i in range(3)}}]

    def add(self, ev: str, t: float, **fields) -> H:
        self.records.append({"ev": ev, "t": T0 + t, **fields})
        return self

    def task(self, task_id: str, t: float, *, ack: bool = True, runs: list[tuple] = (), final: str | None = "done",
             fail: str | None = None, reject: bool = False) -> H:
        """runs: (start offset, attempt, pid, finished?[, node index]) after the submit;
        ``reject``: submitted to reject itself (``--reject-every``)."""
        self.add("submit", t, id=task_id, **({"reject": True} if reject else {}))
        if ack:
            self.add("ack", t + 0.01, id=task_id)
        if fail:
            self.add("fail", t + 10, id=task_id, code=fail)
        for start, attempt, pid, finished, *node in runs:
            endpoint = f"tcp://127.0.0.1:{7000 + node[0]}" if node else None
            self.add("start", t + start, id=task_id, attempt=attempt, pid=pid, node=endpoint)
            if finished:
                self.add("finish", t + start + 0.05, id=task_id, attempt=attempt, pid=pid, node=endpoint)
        if final is not None:
            self.add("final", 100, id=task_id, state=final)
        return self

    def checked(self) -> H:
        self.add("phase", 90, name="drain")
        return self.add("phase", 101, name="checked")

    def verdict(self):
        return check(sorted(self.records, key=lambda r: r["t"]))


def test_tasks_that_reject_themselves_must_end_dead_lettered():
    """--reject-every: a task submitted to reject itself must end dead, not
    done; a plain task that ends dead is still stuck."""
    h = H()
    h.task("plain", 0, runs=[(0.1, 1, 10, True)])
    h.task("rejecting", 1, runs=[(0.1, 1, 10, True)], final="dead", reject=True)
    s = h.checked().verdict().summary()
    assert (s["accepted"], s["done"], s["stuck"], s["rejected"]) == (2, 1, 0, {"accepted": 1, "dead": 1,
                                                                            "ran_again": 0})
    assert s["ok"]

    h = H()
    h.task("plain-dead", 0, runs=[(0.1, 1, 10, True)], final="dead")
    h.task("rejecting-retried", 1, runs=[(0.1, 1, 10, True)], final="retrying", reject=True)
    s = h.checked().verdict().summary()
    assert (s["stuck"], s["dead"], s["rejected"]["dead"]) == (2, 1, 0)
    assert sorted(s["examples"]) == ["stuck_dead", "stuck_retrying"] and not s["ok"]


def test_a_rejected_task_that_ran_again_is_counted_and_must_be_explained():
    """Fault: the node that read a task's rejection (FAILED, not to be
    retried) was killed before it told the other holder, and the other
    holder ran the task again: counted in rejected.ran_again, and explained
    (holder-kill) like any other extra start, or the run fails."""
    h = H()
    h.task("rejected-twice", 0, runs=[(0.1, 1, 10, True, 0), (4.0, 2, 11, True, 1)], final="dead", reject=True)
    h.add("fault", 0.2, phase="begin", fault=1, kind="kill", target="n0")
    h.add("fault", 3.0, phase="heal", fault=1, kind="kill", target="n0")
    h.add("fault", 3.5, phase="recovered", fault=1, kind="kill", target="n0")
    s = h.checked().verdict().summary()
    assert s["rejected"] == {"accepted": 1, "dead": 1, "ran_again": 1}
    assert s["duplicates"]["classes"] == {"holder-kill": 1} and s["ok"]
    assert s["examples"]["rejected_ran_again"] == ["rejected-twice"]


def test_every_accepted_task_done_is_ok():
    h = H()
    for i in range(5):
        h.task(f"t{i}", i, runs=[(0.1, 1, 10, True)])
    v = h.checked().verdict()
    s = v.summary()
    assert (s["accepted"], s["done"], s["lost"], s["stuck"]) == (5, 5, 0, 0)
    assert s["duplicates"]["ran_more_than_once"] == 0
    assert v.exit_code() == 0 and s["ok"]


def test_accepted_then_unknown_everywhere_is_lost():
    """The failure the run exists to find: an ack came back, no node knows the task."""
    v = H().task("ok", 0, runs=[(0.1, 1, 10, True)]).task("gone", 1, final="unknown").checked().verdict()
    s = v.summary()
    assert s["lost"] == 1 and s["examples"]["lost"] == ["gone"]
    assert s["never_ran"] == 1
    assert v.exit_code() == 1 and not s["ok"]


def test_a_finished_task_forgotten_fails_the_run_unless_a_data_dir_was_wiped():
    """Only a wiped data dir may make the cluster forget a finished task
    within a run; otherwise the forgetting is a loss of state (a chaos kill
    run found dead-lettered tasks forgotten after handoffs)."""
    def verdict(wipe: bool):
        h = H().task("kept", 0, runs=[(0.1, 1, 10, True)]).task("forgot", 1, runs=[(0.1, 1, 10, True)],
                                                               final="unknown")
        if wipe:
            h.add("fault", 5, phase="begin", fault=1, kind="wipe", target="n0")
            h.add("fault", 6, phase="heal", fault=1)
        return h.checked().verdict()
    s = verdict(wipe=False).summary()
    assert (s["forgotten"], s["forgotten_unexplained"], s["lost"], s["exit_code"]) == (1, 1, 0, 1)
    s = verdict(wipe=True).summary()
    assert (s["forgotten"], s["forgotten_unexplained"], s["exit_code"]) == (1, 0, 0)


def test_accepted_but_still_held_after_the_drain_is_stuck_not_lost():
    v = H().task("late", 0, final="scheduled").task("dl", 1, runs=[(0.1, 1, 10, False)], final="dead") \
        .checked().verdict()
    s = v.summary()
    assert (s["lost"], s["stuck"], s["dead"]) == (0, 2, 1)
    assert v.exit_code() == 3


def test_without_a_final_check_a_finish_record_counts_as_done():
    v = H().task("a", 0, runs=[(0.1, 1, 10, True)], final=None).task("b", 1, final=None).verdict()
    s = v.summary()
    assert not s["final_checked"]
    assert (s["done"], s["lost"]) == (1, 1)


def test_rerun_after_a_worker_died_mid_task():
    """Attempt 1 started on pid 10 and never finished (killed); attempt 2 ran on pid 11."""
    h = H().add("fault", 0.5, phase="begin", fault=1, kind="worker", target="worker1", pid=10)
    h.task("t", 0, runs=[(0.2, 1, 10, False), (2.0, 2, 11, True)])
    s = h.add("fault", 1.5, phase="heal", fault=1).add("fault", 1.5, phase="recovered", fault=1, recover_s=0) \
        .checked().verdict().summary()
    d = s["duplicates"]
    assert (d["ran_more_than_once"], d["after_crash"], d["completed_twice"], d["unexplained"]) == (1, 1, 0, 0)
    row = s["faults"][0]
    assert row["kind"] == "worker" and row["interrupted_tasks"] == 1 and row["rerun_s"] == pytest.approx(1.55)
    assert s["lost"] == 0


def test_completed_twice_with_no_fault_is_unexplained_and_fails_the_run():
    v = H().task("t", 0, runs=[(0.1, 1, 10, True), (0.3, 1, 11, True)]).checked().verdict()
    s = v.summary()
    d = s["duplicates"]
    assert (d["ran_more_than_once"], d["completed_twice"], d["unexplained"]) == (1, 1, 1)
    assert d["rate"] == 1.0 and d["classes"] == {"unexplained": 1}
    assert s["examples"]["duplicate_unexplained"] == ["t"]
    assert v.exit_code() == 4 and not s["ok"]


def test_duplicate_while_its_node_was_killed_mid_run_is_explained_and_a_cancelled_copy_is_counted():
    """The first run was leased by n1 and in flight when n1 was killed: a
    standby copy re-ran it (docs/cluster.md, failure modes)."""
    h = H().add("fault", 1, phase="begin", fault=1, kind="kill", target="n1")
    h.task("t", 0, runs=[(0.5, 1, 10, True, 1), (3.0, 1, 11, False, 2)])
    h.add("fault", 6, phase="heal", fault=1).add("fault", 7, phase="recovered", fault=1, recover_s=1.0)
    v = h.checked().verdict()
    d = v.summary()["duplicates"]
    assert (d["ran_more_than_once"], d["unexplained"], d["aborted"], d["completed_twice"]) == (1, 0, 1, 0)
    assert d["classes"] == {"holder-kill": 1} and d["by_fault"] == {"1": 1}
    assert "docs/cluster.md" in d["rules"]["holder-kill"]
    assert v.exit_code() == 0


def test_duplicate_whose_first_run_had_finished_before_the_fault_is_unexplained():
    """n1 was killed 3 s after the first run finished: its DONE had been
    announced long before, so nothing allows the second start."""
    h = H().add("fault", 4, phase="begin", fault=1, kind="kill", target="n1")
    h.task("t", 0, runs=[(0.5, 1, 10, True, 1), (5.0, 2, 11, True, 2)])
    h.add("fault", 9, phase="heal", fault=1).add("fault", 10, phase="recovered", fault=1, recover_s=1.0)
    d = h.checked().verdict().summary()["duplicates"]
    assert d["classes"] == {"unexplained": 1} and d["unexplained_after"] == {"1": 1}


def test_duplicate_after_a_fault_on_another_node_is_unexplained():
    """A fault on n2 does not explain a re-run of a task n0 ran."""
    h = H().add("fault", 1, phase="begin", fault=1, kind="pause", target="n2")
    h.task("t", 0, runs=[(0.5, 1, 10, False, 0), (3.0, 2, 11, True, 1)])
    h.add("fault", 9, phase="heal", fault=1).add("fault", 10, phase="recovered", fault=1, recover_s=1.0)
    assert h.checked().verdict().summary()["duplicates"]["classes"] == {"unexplained": 1}


def test_duplicate_of_a_killed_workers_run_and_of_a_run_past_its_lease():
    """worker-killed: the earlier run's pid is the killed worker's; lease-expired: it ran over 30 s."""
    h = H().add("fault", 1, phase="begin", fault=1, kind="worker", target="worker1", pid=10)
    h.task("w", 0, runs=[(0.5, 1, 10, False, 0), (3.0, 2, 11, True, 0)])
    h.add("fault", 2, phase="heal", fault=1).add("fault", 2, phase="recovered", fault=1, recover_s=0)
    h.task("slow", 200, runs=[(0.5, 1, 12, False, 0), (31.0, 2, 11, True, 0)], final=None)
    h.add("final", 300, id="slow", state="done")
    d = h.checked().verdict().summary()["duplicates"]
    assert d["classes"] == {"worker-killed": 1, "lease-expired": 1}


def test_failed_submits_that_ran_anyway():
    """The client was told the submit failed, but the task had been stored and ran."""
    h = H().task("f1", 0, ack=False, fail="timeout", runs=[(0.5, 1, 10, True)])
    h.task("f2", 1, ack=False, fail="not_enough_replicas", final="unknown")
    h.task("f3", 2, ack=False, fail="timeout", final="scheduled")
    s = h.checked().verdict().summary()
    f = s["failed_submits"]
    assert f["total"] == 3 and f["by_code"] == {"timeout": 2, "not_enough_replicas": 1}
    assert (f["ran"], f["done"], f["held"]) == (1, 1, 1)
    assert s["accepted"] == 0 and s["lost"] == 0          # a failed submit is never "lost"
    assert s["examples"]["failed_but_ran"] == ["f1"]


def test_latency_phases_and_fault_recovery():
    h = H()
    for i in range(40):                     # 4 submits a second for 10 s
        t = i * 0.25
        slow = 3.0 <= t < 5.0               # acks over 1 s while the fault is in place
        h.add("submit", t, id=f"t{i}").add("ack", t + (2.0 if slow else 0.01), id=f"t{i}")
        h.add("start", t + 2.1, id=f"t{i}", attempt=1, pid=1).add("finish", t + 2.2, id=f"t{i}", attempt=1, pid=1)
        h.add("final", 100, id=f"t{i}", state="done")
    h.add("fault", 3.0, phase="begin", fault=1, kind="pause", target="n2")
    h.add("fault", 5.0, phase="heal", fault=1).add("fault", 6.0, phase="recovered", fault=1, recover_s=1.0)
    s = h.checked().verdict().summary()
    assert set(s["latency"]) == {"calm", "pause"}
    assert s["latency"]["pause"]["ack"]["n"] == 12            # submitted from 3.0 s to 6.0 s
    assert s["latency"]["pause"]["ack"]["p99"] == 2.0
    assert s["latency"]["calm"]["ack"]["p50"] == 0.01
    row = s["faults"][0]
    assert (row["begin_s"], row["heal_s"], row["recover_s"]) == (3.0, 5.0, 1.0)
    assert row["unhealthy_s"] == 2.0 and row["client_recovery_s"] == 2.0


def test_percentiles():
    assert percentiles([]) == {"n": 0}
    p = percentiles([float(i) for i in range(1, 101)])
    assert (p["n"], p["p50"], p["p90"], p["p99"], p["max"]) == (100, 50.0, 90.0, 99.0, 100.0)


def test_history_files_merge_and_torn_lines(tmp_path):
    """A worker killed mid-write leaves a torn last line: it is skipped, never half-read."""
    writer = HistoryWriter(str(tmp_path / "history.jsonl"))
    writer.write("submit", t=T0, id="a")
    exec_file = tmp_path / "exec-10.jsonl"
    exec_file.write_text(json.dumps({"ev": "start", "t": T0 + 1, "id": "a", "attempt": 1, "pid": 10}) + "\n"
                         + '{"ev": "finish", "t": 17000')
    tail = ExecTail(str(tmp_path))
    first = tail.poll()
    assert [r["ev"] for r in first] == ["start"] and tail.poll() == []
    activity = Activity()
    activity.feed(first)
    assert activity.busy_workers() == {10}
    with open(exec_file, "a") as fh:
        fh.write('00001.0, "id": "a", "attempt": 1, "pid": 10}\n')
    second = tail.poll()
    assert [r["ev"] for r in second] == ["finish"]
    activity.feed(second)
    assert activity.busy_workers() == set() and activity.finished == {"a"}
    assert merge_executions(str(tmp_path), writer) == 2
    writer.close()
    records = list(read_history(str(tmp_path / "history.jsonl")))
    assert [r["ev"] for r in records] == ["submit", "start", "finish", "merge"]
    assert (records[-1]["records"], records[-1]["bad_lines"]) == (2, 0)


def test_fault_kinds_from_the_flag():
    assert parse_kinds(None, partitions=False) == list(KINDS_DEFAULT)
    assert parse_kinds("", partitions=True)[len(KINDS_DEFAULT):] == list(KINDS_NETWORK)
    assert {"partition", "isolate", "deaf", "mute", "zkcut", "lossy", "delay", "slow", "duplicate",
            "split"} == set(KINDS_NETWORK)
    assert parse_kinds("", partitions=False, zk_servers=3) == [*KINDS_DEFAULT, *KINDS_ZK]
    assert parse_kinds("", partitions=True, zk_servers=3)[-1] == "zkminority"
    assert {"zkserver", "zkleader", "zkquorum", "zkminority", "clock", "diskfull"} <= set(parse_kinds("all", False))
    assert parse_kinds("kill, pause,kill", partitions=False) == ["kill", "pause"]
    assert parse_kinds("none", partitions=False) == []
    with pytest.raises(ConfigError):
        parse_kinds("kill,meteor", partitions=False)


def test_cycle_order_goes_in_rounds_of_every_kind():
    """A kind that has to wait (its node budget is used) is waited for: the
    kinds that already had their turn this round are not tried before it."""
    kinds = ["split", "zkcut", "duplicate"]
    order = lambda injected: [k.name for k in choose(kinds, random.Random(1), injected)]  # noqa: E731
    assert order({}) == kinds
    assert order({"split": 1, "duplicate": 1}) == ["zkcut"]
    assert order({"split": 1, "zkcut": 1, "duplicate": 1}) == kinds


class FakeCluster:
    """Records what the nemesis does; every node can be killed."""

    def __init__(self, nodes: int = 3) -> None:
        self.node_ids = [f"n{i}" for i in range(nodes)]
        self.killed: set[str] = set()
        self.calls: list[tuple[str, str]] = []
        self.procs = {n: type("P", (), {"pid": 100 + i})() for i, n in enumerate(self.node_ids)}
        self.is_whole = threading.Event()

    def up(self, node_id: str) -> bool:
        return node_id not in self.killed

    def kill_node(self, node_id: str) -> None:
        self.killed.add(node_id)
        self.calls.append(("kill", node_id))

    def start_node(self, node_id: str, wipe: bool = False) -> None:
        self.killed.discard(node_id)
        self.calls.append(("start", node_id))

    def whole(self) -> tuple[bool, str]:
        return self.is_whole.is_set(), "waiting"


def test_nemesis_never_takes_more_than_n_minus_1_nodes_down(tmp_path):
    """Safety budget: with N=2 one node down blocks every further node fault
    until the first one healed and the cluster is whole again; --unsafe lifts it."""
    cluster = FakeCluster()
    writer = HistoryWriter(str(tmp_path / "h.jsonl"))
    nemesis = Nemesis(cluster, writer, ["kill"], duration=0.05, replicas=2, settle=0.0, recover_timeout=5)
    try:
        assert nemesis.inject() is not None
        assert nemesis.inject() is None                    # budget: 1 of 1 down
        assert len(cluster.calls) == 1
        cluster.is_whole.set()
        for _ in range(100):
            if not nemesis.active():
                break
            threading.Event().wait(0.05)
        assert nemesis.active() == [] and cluster.calls[-1][0] == "start"
        assert nemesis.inject() is not None                # budget free again
    finally:
        cluster.is_whole.set()
        nemesis.stop(timeout=5)
    unsafe = Nemesis(FakeCluster(), writer, ["kill"], duration=5, replicas=2, unsafe=True)
    try:
        assert all(unsafe.inject() is not None for _ in range(3))
        assert unsafe.inject() is None                     # nothing left up to kill
    finally:
        unsafe.cluster.is_whole.set()
        unsafe.stop(timeout=5)
    writer.close()
    phases = [r["phase"] for r in read_history(str(tmp_path / "h.jsonl"))]
    assert phases.count("skipped") == 2 and phases.count("recovered") >= 4


def test_check_command_on_a_history_reports_lost_and_draws_the_timeline(tmp_path):
    """``miyaq chaos --check``: exit 1 and the lost task in the JSON when an accepted task is gone."""
    h = H().task("ok", 0, runs=[(0.1, 1, 10, True)]).task("gone", 1, final="unknown").checked()
    path = tmp_path / "history.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in h.records))
    done = subprocess.run([sys.executable, "-m", "miyaq.cli.main", "chaos", "--check", str(path), "--json"],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 1, done.stderr
    summary = json.loads(done.stdout)
    assert summary["lost"] == 1 and summary["examples"]["lost"] == ["gone"]
    assert "LOST" in done.stderr
    assert (tmp_path / "timeline.png").stat().st_size > 10_000


def test_a_split_minority_that_keeps_starting_tasks_fails_the_fencing_check():
    """n2 was the minority of a split (cut off from ZooKeeper): a start it
    leased 2 s in is before it could know; one 20 s in breaks fencing."""
    h = H().add("fault", 10, phase="begin", fault=1, kind="split", target="n2")
    h.task("early", 11, runs=[(1.0, 1, 10, True, 2)])
    h.task("late", 29, runs=[(1.0, 1, 10, True, 2)])
    h.task("majority", 29, runs=[(1.0, 1, 11, True, 0)])
    h.add("fault", 40, phase="heal", fault=1).add("fault", 42, phase="recovered", fault=1, recover_s=2.0)
    v = h.checked().verdict()
    s = v.summary()
    assert s["started_while_fenced"] == 1 and s["examples"]["started_while_fenced"] == ["late"]
    assert v.exit_code() == 4


def test_a_node_cut_off_from_zookeeper_while_all_of_it_was_away_fences_once_it_is_back():
    """Seen in a long chaos run: all of ZooKeeper was stopped (``zk``) and,
    just before it came back, n0's own link to it was cut (``zkcut``). No
    node fences while the whole ensemble is away -- the cluster keeps
    serving on its ring -- so n0's deadline counts from the ensemble's
    return: a start 7 s into the cut, 2 s after ZooKeeper came back, is
    not a violation (the run was failed for 4 such starts); one 7.5 s after
    it is."""
    h = H().add("fault", 0, phase="begin", fault=1, kind="zk", target="zookeeper")
    h.add("fault", 10, phase="begin", fault=2, kind="zkcut", target="n0")
    h.add("fault", 15, phase="heal", fault=1).add("fault", 16, phase="recovered", fault=1, recover_s=1.0)
    h.task("after-the-ensemble", 17, runs=[(0.0, 1, 10, True, 0)])
    h.task("late", 22.5, runs=[(0.0, 1, 10, True, 0)])
    h.add("fault", 30, phase="heal", fault=2).add("fault", 31, phase="recovered", fault=2, recover_s=1.0)
    s = h.checked().verdict().summary()
    assert s["started_while_fenced"] == 1 and s["examples"]["started_while_fenced"] == ["late"]


def test_a_rerun_of_a_task_the_split_minority_started_before_it_fenced_is_explained():
    """The minority n2 started the task 1 s into the split, before it could
    know; the majority's copy ran it again: holder-split. A start by a node
    cut off from its peers only (partition) counts until the heal."""
    h = H().add("fault", 10, phase="begin", fault=1, kind="split", target="n1+n2")
    h.task("a", 10.5, runs=[(0.5, 1, 10, True, 2), (8.0, 2, 11, True, 0)])
    h.add("fault", 40, phase="heal", fault=1).add("fault", 42, phase="recovered", fault=1, recover_s=2.0)
    h.add("fault", 50, phase="begin", fault=2, kind="partition", target="n1")
    h.task("b", 55, runs=[(0.5, 1, 10, True, 1), (3.0, 2, 11, True, 0)])
    h.add("fault", 60, phase="heal", fault=2).add("fault", 61, phase="recovered", fault=2, recover_s=1.0)
    d = h.checked().verdict().summary()["duplicates"]
    assert d["classes"] == {"holder-split": 1, "holder-partition": 1} and d["unexplained"] == 0


def test_a_rerun_by_a_node_that_could_not_hear_the_others_is_explained():
    """n1 was deaf (it heard no other node): its standby copy heard silence
    and ran a task n2 had started — docs/cluster.md allows it; the same
    re-run by n0, which heard everything, is unexplained."""
    h = H().add("fault", 10, phase="begin", fault=1, kind="deaf", target="n1")
    h.task("a", 9, runs=[(0.5, 1, 10, True, 2), (3.0, 1, 11, True, 1)])
    h.task("b", 9, runs=[(0.5, 1, 10, True, 2), (3.0, 1, 11, True, 0)])
    h.add("fault", 13, phase="heal", fault=1).add("fault", 13.1, phase="recovered", fault=1, recover_s=0.1)
    s = h.checked().verdict().summary()
    assert s["duplicates"]["classes"] == {"rerun-deaf": 1, "unexplained": 1}
    assert s["examples"]["duplicate_unexplained"] == ["b"]
    assert "silence" in s["duplicates"]["rules"]["rerun-deaf"]


def test_a_rerun_asked_of_a_node_that_could_not_answer_is_explained():
    """n0 ran the task, then went deaf (it heard no request): another
    holder's standby copy asked it, heard silence and ran the task again."""
    h = H().add("fault", 10, phase="begin", fault=1, kind="deaf", target="n0")
    h.task("a", 5, runs=[(0.5, 1, 10, True, 0), (7.0, 1, 11, True, 1)])
    h.add("fault", 13, phase="heal", fault=1).add("fault", 13.1, phase="recovered", fault=1, recover_s=0.1)
    assert h.checked().verdict().summary()["duplicates"]["classes"] == {"rerun-deaf": 1}


def _queued_packet(packet_id: int) -> bytes:
    """One nfnetlink_queue "packet" message as the kernel sends it (header attribute only)."""
    attr = struct.pack("HH", 8 + 4, netdelay.PACKET_HDR) + struct.pack(">IHB", packet_id, 0x0800, 3) + b"\0"
    body = struct.pack("BBH", 0, 0, 0) + attr
    kind = (netdelay.NFNL_SUBSYS_QUEUE << 8) | netdelay.MSG_PACKET
    return struct.pack("IHHII", 16 + len(body), kind, 0, 0, 0) + body


def test_delaying_queue_reads_packet_ids_and_releases_them_in_time_order():
    """The ``delay`` fault's user-space queue: the ids of every queued packet
    in one netlink read (a torn or foreign message is skipped), and packets
    let go in the order their hold ends, not the order they came -- jitter
    reorders them, as netem's does."""
    data = _queued_packet(7) + _queued_packet(9) + struct.pack("IHHII", 16, 3, 0, 0, 0) + b"\x05\x00"
    assert netdelay.packet_ids(data) == [7, 9]
    queue = netdelay.DelayQueue.__new__(netdelay.DelayQueue)     # no netlink socket: only the heap
    sent: list[bytes] = []
    queue.queue, queue.held = 3, [(2.0, 7), (1.0, 9), (3.0, 11)]
    queue.sock = type("S", (), {"send": lambda self, b: sent.append(b)})()
    heapq.heapify(queue.held)
    queue.release(2.5)
    assert [struct.unpack_from(">II", m, 24)[1] for m in sent] == [9, 7] and queue.held == [(3.0, 11)]


def test_a_rerun_asked_of_the_paused_node_that_ran_it_is_explained_not_one_by_the_paused_node():
    """n0 ran and finished the task, then was paused: another holder's
    standby copy asked it, heard silence and ran the task again (rerun-pause,
    seen in CI with a holder restarted after a kill). A re-run by the paused
    node itself after it resumed is not explained by its pause: it must
    catch up before it runs anything."""
    h = H().add("fault", 6, phase="begin", fault=1, kind="pause", target="n0")
    h.task("a", 3, runs=[(0.5, 1, 10, True, 0), (8.0, 1, 11, True, 2)])
    h.task("b", 3, runs=[(0.5, 1, 10, True, 1), (10.5, 1, 11, True, 0)])
    h.add("fault", 10, phase="heal", fault=1).add("fault", 10.1, phase="recovered", fault=1, recover_s=0.1)
    s = h.checked().verdict().summary()
    assert s["duplicates"]["classes"] == {"rerun-pause": 1, "unexplained": 1}
    assert s["examples"]["duplicate_unexplained"] == ["b"]


def test_the_faults_help_names_every_network_kind_and_the_flag_table_every_flag():
    """Fault: ``miyaq chaos --help`` listed the --partitions kinds without
    ``delay`` and ``duplicate`` (both in the default mix), and docs/chaos.md's
    "Every flag" table left out ``--secure``. The help now names every
    network kind, and the table every flag of the command."""
    import argparse
    from pathlib import Path

    from miyaq.cli.main import build_parser

    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    chaos = commands.choices["chaos"]
    faults = next(a for a in chaos._actions if "--faults" in a.option_strings)
    assert faults.help is not None
    for kind in KINDS_NETWORK:
        assert kind in faults.help, kind
    table = (Path(__file__).resolve().parent.parent / "docs" / "chaos.md").read_text().split("## Every flag")[1]
    for action in chaos._actions:
        for flag in action.option_strings:
            if flag.startswith("--") and flag != "--help":
                assert f"`{flag}" in table, flag


def test_the_clock_fault_runs_a_process_whose_wall_clock_is_skewed():
    """Fault: the ``clock`` fault was meant to run a node 20 s ahead (then
    behind); through the ``faketime`` command the launch shim could not find
    it (so no node ever ran skewed), and once found, the command forked and
    waited: the fault's SIGTERM ended the wrapper and left the skewed node
    running. The fault now preloads libfaketime into the node itself; a
    process started with that environment reads a clock about 20 s off
    (the margin is the skew itself, not a timing bound)."""
    import time

    from miyaq.chaos.cluster import faketime_library, skewed_clock_env

    if faketime_library() is None:
        pytest.fail("Debian's faketime is part of the test machine (scripts/test installs it)", pytrace=False)
    for skew in (20.0, -20.0):
        env = {**os.environ, **skewed_clock_env(skew)}
        before = time.time()
        out = subprocess.run([sys.executable, "-c", "import time; print(time.time())"], env=env,
                             capture_output=True, text=True, timeout=60)
        seen = float(out.stdout)
        assert abs(seen - before - skew) < 10, (skew, seen - before)


def test_the_runs_end_stops_each_process_with_one_sigterm(tmp_path):
    """Fault: the end of a run (``stop_all``: workers, then nodes) sent
    every process SIGTERM, then SIGTERM again while it waited for it; a
    node and a worker take a second SIGTERM for "stop waiting for running
    tasks" (``asked again to stop`` in their logs), so no run ended with the
    graceful stop it meant. Each process now gets one."""
    import signal as signals

    from miyaq.chaos.procs import Child, stop_all

    class Running:
        """A process that runs until it has read a SIGTERM, counting them."""

        def __init__(self) -> None:
            self.pid = 4242
            self.terms = 0

        def poll(self):
            return None

        def send_signal(self, sig: int) -> None:
            self.terms += sig == signals.SIGTERM

        def wait(self, timeout: float | None = None) -> int:
            return 0

    children = [Child(f"c{i}", ["true"], str(tmp_path / f"c{i}.log")) for i in range(2)]
    for child in children:
        child.proc = Running()
    stop_all(children, grace=5.0)
    assert [child.proc.terms for child in children] == [1, 1]
    lone = Child("lone", ["true"], str(tmp_path / "lone.log"))
    lone.proc = Running()
    lone.stop(5.0)
    assert lone.proc.terms == 1, "a child stopped on its own is still told"
