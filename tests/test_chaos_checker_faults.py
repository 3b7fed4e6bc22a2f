"""``miyaq chaos``'s checker on damaged and misleading histories: each test
names the fault of the history (or of the checker) it simulates, and
asserts the verdict a run must get. Hand-made histories, written into
tmp_path; the real runs are in tests/test_chaos_faults.py."""
from __future__ import annotations

import json
import subprocess
import sys
import tracemalloc
from pathlib import Path
from typing import Any

import pytest

from miyaq.chaos.checker import Verdict, check
from miyaq.chaos.history import HistoryWriter, NotAHistory, ReadStats, merge_executions, read_history
from miyaq.chaos.metrics import MAX_BUCKETS

T0 = 1_800_000_000.0
EP = [f"tcp://127.0.0.1:{7000 + i}" for i in range(3)]
RUN = {"ev": "run", "t": T0, "nodes": 3, "replicas": 2, "duration": 300,
       "node_endpoints": {f"n{i}": EP[i] for i in range(3)}}


def rec(ev: str, t: float, **fields: Any) -> dict[str, Any]:
    return {"ev": ev, "t": T0 + t, **fields}


def task(task_id: str, t: float, *, runs: list[tuple] = (), final: str | None = "done",
         reject: bool = False) -> list[dict[str, Any]]:
    """submit, ack, runs (start offset, attempt, pid, finished?, node index), final."""
    out = [rec("submit", t, id=task_id, **({"reject": True} if reject else {})), rec("ack", t + 0.01, id=task_id)]
    for start, attempt, pid, finished, node in runs:
        out.append(rec("start", t + start, id=task_id, attempt=attempt, pid=pid, node=EP[node]))
        if finished:
            out.append(rec("finish", t + start + 0.05, id=task_id, attempt=attempt, pid=pid, node=EP[node]))
    if final is not None:
        out.append(rec("final", 390, id=task_id, state=final))
    return out


def fault(fid: int, kind: str, target: str, begin: float, heal: float, pid: int | None = None) -> list[dict]:
    return [rec("fault", begin, phase="begin", fault=fid, kind=kind, target=target, pid=pid),
            rec("fault", heal, phase="heal", fault=fid, kind=kind, target=target),
            rec("fault", heal + 1, phase="recovered", fault=fid, kind=kind, target=target, recover_s=1.0)]


def history(*parts: list[dict[str, Any]], good: int = 5) -> list[dict[str, Any]]:
    """A run with ``good`` plain tasks done, the given records, and the end phases."""
    records = [RUN, rec("phase", 0.1, name="load")]
    for i in range(good):
        records += task(f"good{i}", 1 + i, runs=[(0.02, 1, 100, True, 0)])
    for part in parts:
        records += part
    records += [rec("phase", 380, name="drain"), rec("phase", 395, name="checked")]
    return sorted(records, key=lambda r: r["t"])


def lines_of(records: list[dict[str, Any]]) -> list[str]:
    return [json.dumps(r, separators=(",", ":")) + "\n" for r in records]


def lines_torn_at(records: list[dict[str, Any]], ev: str, task_id: str, keep: int) -> tuple[list[str], int]:
    """The history's lines with the ``ev`` record of ``task_id`` cut after
    ``keep`` characters, and that line's index."""
    lines = lines_of(records)
    at = next(i for i, r in enumerate(records) if r["ev"] == ev and r["id"] == task_id)
    lines[at] = lines[at][:keep] + "\n"
    return lines, at


def judge(path: Path) -> Verdict:
    read = ReadStats()
    return check(read_history(str(path), read), read=read)


def write(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(lines))
    return path


def check_command(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "miyaq.cli.main", "chaos", "--check", str(path), "--json"],
                          capture_output=True, text=True, timeout=120, check=False)


# -- 1. no history at all --------------------------------------------------------------------
@pytest.mark.parametrize("content", [
    "",                                                             # an empty file
    '{\n  "ok": true,\n  "lost": 5\n}\n',                           # summary.json given by mistake
    json.dumps(RUN) + "\n",                                         # only the run record
    "hello\nworld\n" * 5 + json.dumps(RUN) + "\n" + json.dumps(rec("submit", 1, id="a")) + "\n",  # mostly not records
], ids=["empty", "summary_json", "only_run_record", "mostly_not_records"])
def test_a_file_with_no_history_is_refused_with_exit_2_and_no_picture_drawn(tmp_path, content):
    """Fault: ``--check`` given a file that is no history (empty, the run's
    summary.json, a run cut before its first submit). Before, each was
    "VERDICT: OK", exit 0, and the run's timeline.png was drawn over."""
    path = write(tmp_path / "history.jsonl", [content])
    picture = tmp_path / "timeline.png"
    picture.write_bytes(b"the run's own picture")
    done = check_command(path)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "VERDICT" not in done.stdout + done.stderr and "Traceback" not in done.stderr
    assert "miyaq: error:" in done.stderr
    assert picture.read_bytes() == b"the run's own picture"


def test_check_refuses_a_history_without_run_or_submit_records():
    with pytest.raises(NotAHistory):
        check([])
    with pytest.raises(NotAHistory):
        check([RUN, rec("phase", 1, name="load")])


# -- 2. one damaged line ---------------------------------------------------------------------
def test_a_torn_submit_line_does_not_hide_a_lost_task(tmp_path):
    """Fault: the submit line of a task that was then lost is torn in the
    middle of the history; its ack and final records remain. Before, the
    task vanished from the count and the run was OK."""
    lines, _ = lines_torn_at(history(task("lost1", 50, final="unknown")), "submit", "lost1", 25)
    v = judge(write(tmp_path / "history.jsonl", lines))
    s = v.summary()
    assert (s["accepted"], s["lost"], s["malformed_lines"]) == (6, 1, 1)
    assert s["examples"]["lost"] == ["lost1"] and v.exit_code() == 1


def test_a_torn_ack_line_keeps_the_verdict_from_ok(tmp_path):
    """Fault: the ack line of a lost task is torn: the task reads as a failed
    submit (not lost), so only the damage can fail the run: exit status 5.
    Before, exit 0."""
    lines, at = lines_torn_at(history(task("lost1", 50, final="unknown")), "ack", "lost1", 30)
    v = judge(write(tmp_path / "history.jsonl", lines))
    s = v.summary()
    assert (s["lost"], s["failed_submits"]["total"], s["malformed_lines"]) == (0, 1, 1)
    assert v.exit_code() == 5 and not v.ok and s["malformed_examples"] == [f"line {at + 1}: not JSON"]


def test_only_a_torn_last_line_is_no_damage(tmp_path):
    """A run killed mid-write leaves its last line torn: skipped, noted, OK."""
    lines = lines_of(history())
    v = judge(write(tmp_path / "history.jsonl", [*lines, '{"ev":"stats","t":1800000399.0,"no']))
    s = v.summary()
    assert s["torn_last_line"] and s["malformed_lines"] == 0 and v.exit_code() == 0


# -- 3. done on the cluster's word -----------------------------------------------------------
def test_done_without_any_finish_record_fails_the_run():
    """Fault: the cluster reports a task done (or a rejecting task dead) that
    no worker ran: no start, no finish record. The handler flushes its
    finish record before the outcome goes back, so this is a false claim.
    Before, it counted as done and the run was OK."""
    v = check(history(task("ghost", 50, final="done"), task("ghost-reject", 51, final="dead", reject=True),
                      task("started-only", 52, runs=[(0.1, 1, 100, False, 0)], final="done")))
    s = v.summary()
    assert s["done_unverified"] == 3 and s["done"] == 5 and s["rejected"]["dead"] == 0
    assert sorted(s["examples"]["done_without_finish_record"]) == ["ghost", "ghost-reject", "started-only"]
    assert v.exit_code() == 4


# -- 4. a re-run long after the earlier run ended --------------------------------------------
@pytest.mark.parametrize("kind,target", [("partition", "n1"), ("pause", "n0")])
def test_a_rerun_200s_after_the_task_finished_is_not_put_down_to_a_later_fault(kind, target):
    """Fault: a task that finished at 1 s runs again at 205 s, during a
    partition of the re-runner (or a pause of the node that ran it). Every
    holder had heard of the finish minutes before: nothing allows the
    re-run. Before, it was explained (rerun-partition / rerun-pause)."""
    v = check(history(fault(1, kind, target, 200, 210),
                      task("again", 1, runs=[(0.02, 1, 100, True, 0), (204, 1, 101, True, 1)])))
    d = v.summary()["duplicates"]
    assert d["classes"] == {"unexplained": 1} and v.exit_code() == 4


def test_a_dead_lettered_task_that_runs_again_200s_later_is_unexplained():
    """Fault: a task that rejected itself (dead-lettered) runs again 200 s
    later, during a partition. Before, explained as rerun-partition."""
    v = check(history(fault(1, "partition", "n1", 200, 210),
                      task("reject1", 1, runs=[(0.02, 1, 100, True, 0), (204, 1, 101, True, 1)], final="dead",
                           reject=True)))
    s = v.summary()
    assert s["rejected"]["ran_again"] == 1 and s["duplicates"]["classes"] == {"unexplained": 1}
    assert v.exit_code() == 4


# -- 5. a re-run before the fault ------------------------------------------------------------
def test_a_rerun_before_the_fault_began_is_not_put_down_to_it():
    """Fault: a task's second start came 0.9 s before n0 (which leased the
    first run) was killed. The nemesis stamps the begin before it kills, so
    the kill cannot have caused it. Before, the 1 s slack blamed the kill
    (holder-kill)."""
    v = check(history(fault(1, "kill", "n0", 20, 25),
                      task("early", 9.9, runs=[(0.1, 1, 100, False, 0), (9.2, 1, 101, True, 1)])))
    assert v.summary()["duplicates"]["classes"] == {"unexplained": 1} and v.exit_code() == 4
    v = check(history(fault(1, "kill", "n0", 20, 25),
                      task("after", 9.9, runs=[(0.1, 1, 100, False, 0), (10.2, 1, 101, True, 1)])))
    assert v.summary()["duplicates"]["classes"] == {"holder-kill": 1} and v.exit_code() == 0


def test_a_finish_held_back_by_a_slow_link_then_its_node_killed_is_a_holder_kill():
    """Fault (CI of 2026-12-07, test_large_tasks_and_results_over_slow_links
    with a random seed): n1's link was narrowed to 1 Mbit/s (1 s to 4 s);
    a task of 500 KB ran on n0 at 2 s, its finish announced behind the
    REPLICATE of large tasks to n1 on that link; n0 was killed at 5.5 s,
    1.5 s after the heal, before n1 had heard; n1 ran its copy again. The
    holder rule counted the run in flight only ``REPORT_GRACE`` (2 s) past
    its end, and the re-run was "unexplained" -- 10 of them failed the run.
    A network fault on either node holds the announcement back to its heal
    plus ``HEAL_GRACE``. The same history with the kill after that is
    still unexplained. (With the slow link on n2 it is explained too since
    2026-12-08: the history does not say n2 held no copy, see
    test_a_finish_held_back_from_a_third_node_that_handed_its_copy_on_then_the_runner_killed_is_a_holder_kill.)"""
    def run(slow_target: str, kill_at: float) -> dict[str, Any]:
        return check(history(fault(1, "slow", slow_target, 1.0, 4.0),
                             fault(2, "kill", "n0", kill_at, kill_at + 3),
                             task("held", 1.9, runs=[(0.1, 1, 100, True, 0), (8.0, 1, 101, True, 1)]))).summary()
    assert run("n1", 5.5)["duplicates"]["classes"] == {"holder-kill": 1}
    assert run("n2", 5.5)["duplicates"]["classes"] == {"holder-kill": 1}
    assert run("n1", 7.5)["duplicates"]["classes"] == {"unexplained": 1}


def test_a_finish_held_back_from_a_third_node_that_handed_its_copy_on_then_the_runner_killed_is_a_holder_kill():
    """Fault (chaos seed 495032380, test_large_tasks_and_results_over_slow_links,
    twice: a loaded suite run and by hand): n1's link at 1 Mbit/s (1 s to
    4.03 s); three tasks ran on n2 at 1.4 s, their finish queued to n1
    behind large copies; the slow link cost n1 its ZooKeeper session, so
    out of the ring it handed its copies -- live by its record -- to n0;
    n2 was killed at 6 s (2 s after the heal), and n0's copies heard
    silence from it and ran at 9.7 s. Neither run's node was slowed, so
    the holder rule took the finish as heard 2 s after it and called the
    re-runs "unexplained" (the run failed, exit 4). The holder that missed
    the finish was the third node: a network fault on any node holds a
    finish back. A kill later than ``HEAL_GRACE`` after the heal is still
    unexplained."""
    def classes(kill_at: float) -> dict[str, int]:
        return check(history(fault(1, "slow", "n1", 1.0, 4.03),
                             fault(2, "kill", "n2", kill_at, kill_at + 3.05),
                             task("third", 1.3, runs=[(0.07, 1, 100, True, 2), (8.4, 1, 101, True, 0)])
                             )).summary()["duplicates"]["classes"]
    assert classes(6.0) == {"holder-kill": 1}
    assert classes(7.1) == {"unexplained": 1}


@pytest.mark.parametrize("kind,length,rerun_after_heal,cls", [
    ("deaf", 5.14, 3.43, "rerun-deaf"),          # chaos seed 87: unexplained before
    ("deaf", 5.14, 8.0, "rerun-deaf"),           # within the fault's length plus HEAL_GRACE
    ("deaf", 5.14, 8.5, "unexplained"),          # past it
    ("deaf", 0.5, 3.6, "unexplained"),           # a short fault: little more than HEAL_GRACE
    ("lossy", 5.14, 3.43, "unexplained"),        # one packet in ten: nothing stalls for the fault's length
])
def test_a_rerun_while_a_connection_stalled_by_a_one_way_drop_resumes_is_put_down_to_it(kind, length,
                                                                                          rerun_after_heal, cls):
    """Fault (chaos seed 87, task 70df215e...): n2 was deaf for 5.14 s;
    3.35 s after the heal its standby copy, having heard silence from n0
    (which held the task ready behind a backlog), ran the task, and n0 ran
    its own copy 75 ms later on the same worker process, not having heard
    n2's start: n0 heard nothing of n2's stream until 6.1 s after the heal
    (a TCP connection whose packets were all dropped resends at a timeout
    doubled at each try, so its next try can be as far off as it stalled).
    The checker allowed ``HEAL_GRACE`` (3 s) after the heal and called the
    run "unexplained". Now a fault that drops every packet allows its own
    length more; a short one, or a ``lossy`` link, still only 3 s."""
    begin = 40.0
    heal = begin + length
    n2_start = heal + rerun_after_heal - 0.08 - 31.0
    v = check(history(fault(1, kind, "n2", begin, heal),
                      task("stalled", 31.0, runs=[(n2_start, 1, 31091, True, 2),
                                                  (n2_start + 0.08, 1, 31091, False, 0)])))
    assert v.summary()["duplicates"]["classes"] == {cls: 1}
    assert v.exit_code() == (0 if cls != "unexplained" else 4)


# -- 6. forgotten after the wipe was over ----------------------------------------------------
def test_a_wipe_over_before_the_task_finished_does_not_excuse_forgetting_it():
    """Fault: a finished task forgotten by the cluster, in a run whose only
    wipe was over before the task even started. Nothing took its tombstone.
    Before, any wipe in the run excused it."""
    v = check(history(fault(1, "wipe", "n2", 10, 15),
                      task("forgot", 50, runs=[(0.02, 1, 100, True, 0)], final="unknown")))
    s = v.summary()
    assert (s["forgotten"], s["forgotten_unexplained"]) == (1, 1) and v.exit_code() == 1
    v = check(history(fault(1, "wipe", "n2", 60, 65),
                      task("forgot", 50, runs=[(0.02, 1, 100, True, 0)], final="unknown")))
    s = v.summary()
    assert (s["forgotten"], s["forgotten_unexplained"]) == (1, 0) and v.exit_code() == 0


# -- 7. wrong types --------------------------------------------------------------------------
BAD_LINES = {
    "t_null": '{"ev":"submit","t":null,"id":"x"}',
    "t_string": '{"ev":"submit","t":"soon","id":"x"}',
    "t_infinity": '{"ev":"submit","t":Infinity,"id":"x"}',
    "t_nan": '{"ev":"submit","t":NaN,"id":"x"}',
    "attempt_null": '{"ev":"start","t":1800000002.0,"id":"good1","attempt":null,"pid":1,"node":null}',
    "worker_pid_string": '{"ev":"fault","t":1800000002.0,"phase":"begin","fault":9,"kind":"worker",'
                         '"target":"worker1","pid":"abc"}',
    "deep_nesting": '{"ev":"x","a":' + "[" * 100_000 + "]" * 100_000 + "}",
    "id_a_list": '{"ev":"ack","t":1800000002.0,"id":["a"]}',
}


@pytest.mark.parametrize("name", sorted(BAD_LINES))
def test_a_record_of_the_wrong_types_is_counted_as_malformed_not_a_traceback(tmp_path, name):
    """Fault: one record of wrong types in the middle of a history. Before:
    a traceback (TypeError, ValueError, OverflowError, RecursionError) and
    exit status 1, which means LOST."""
    lines = lines_of(history())
    lines.insert(10, BAD_LINES[name] + "\n")
    v = judge(write(tmp_path / "history.jsonl", lines))
    assert v.summary()["malformed_lines"] == 1 and v.exit_code() == 5


def test_a_run_record_of_the_wrong_types_is_refused_by_the_command(tmp_path):
    """Fault: ``node_endpoints`` a list. Before: AttributeError, exit 1."""
    records = history()
    lines = lines_of(records)
    lines[0] = json.dumps({**RUN, "node_endpoints": ["a"]}) + "\n"
    done = check_command(write(tmp_path / "history.jsonl", lines))
    assert done.returncode == 2 and "node_endpoints" in done.stderr and "Traceback" not in done.stderr


def test_a_malformed_record_gives_exit_5_from_the_command_not_a_traceback(tmp_path):
    lines = lines_of(history())
    lines.insert(10, BAD_LINES["t_null"] + "\n")
    done = check_command(write(tmp_path / "history.jsonl", lines))
    assert done.returncode == 5, done.stderr
    assert "Traceback" not in done.stderr and json.loads(done.stdout)["malformed_lines"] == 1


# -- 8. a far-future time --------------------------------------------------------------------
@pytest.mark.timeout(30)
def test_a_time_in_milliseconds_is_malformed_and_the_series_stay_bounded(tmp_path):
    """Fault: a record stamped in milliseconds (~1.8e12). Before, ``series()``
    looped over every second up to it: --check hung, its memory growing."""
    lines = lines_of(history())
    lines.insert(10, '{"ev":"submit","t":1800000000000.0,"id":"x"}\n')
    lines.insert(11, '{"ev":"submit","t":1900000000.0,"id":"y"}\n')       # 3 years on: plausible, not this run
    v = judge(write(tmp_path / "history.jsonl", lines))
    assert v.summary()["malformed_lines"] == 2 and v.exit_code() == 5
    assert len(v.metrics.series()["t"]) <= 400


@pytest.mark.timeout(30)
def test_the_per_second_series_end_at_the_runs_last_phase():
    """Fault (in the checker's input, past the schema): a finish record 1.5
    days after the run's last phase. The series stop at the run's end."""
    v = check(history(task("late", 50, runs=[(130_000, 1, 100, True, 0)])))
    assert len(v.metrics.series()["t"]) <= 400 and MAX_BUCKETS >= 400
    assert all(row["unhealthy_s"] <= 400 for row in v.metrics.fault_rows())


# -- 9. the end-of-run merge -----------------------------------------------------------------
def test_the_merge_of_the_workers_files_streams_in_time_order(tmp_path):
    """Fault: an hour's worker files at 300/s (millions of records) were read
    whole into dicts and sorted: gigabytes. The merge now streams (k-way):
    its memory does not grow with the records. 3 files x 20,000 records
    interleaved in time: the history gets them in time order, and the merge
    never holds more than a few of them (peak traced memory well under what
    20,000 parsed records take)."""
    n = 20_000
    for k in range(3):
        with open(tmp_path / f"exec-{100 + k}.jsonl", "w") as fh:
            for i in range(n):
                fh.write(json.dumps({"ev": "start", "t": T0 + i + k / 3, "id": f"t{k}-{i}", "attempt": 1,
                                     "pid": 100 + k, "node": EP[0]}) + "\n")
        if k == 0:
            with open(tmp_path / "exec-100.jsonl", "a") as fh:
                fh.write("{torn, mid-file}\n" + '{"ev":"finish","t":1')        # one bad line, one torn last
    writer = HistoryWriter(str(tmp_path / "history.jsonl"))
    tracemalloc.start()
    try:
        merged = merge_executions(str(tmp_path), writer)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        writer.close()
    assert merged == 3 * n
    assert peak < 8_000_000, peak           # the old merge held 60,000 dicts: ~40 MB
    times = [r["t"] for r in read_history(str(tmp_path / "history.jsonl")) if r["ev"] == "start"]
    assert len(times) == 3 * n and times == sorted(times)
    last = list(read_history(str(tmp_path / "history.jsonl")))[-1]
    assert last["ev"] == "merge" and (last["records"], last["bad_lines"]) == (3 * n, 1)


def test_a_bad_line_in_a_workers_file_keeps_the_verdict_from_ok():
    """Fault: a worker's file had a damaged line (not its torn last one): the
    merge counts it in its ``merge`` record and the checker counts it as
    malformed (exit 5)."""
    v = check(history([rec("merge", 396, records=5, bad_lines=1, files=1)]))
    assert v.summary()["malformed_lines"] == 1 and v.exit_code() == 5


# -- 10. two finishes, one start -------------------------------------------------------------
def test_two_finishes_with_one_start_count_as_ran_more_than_once():
    """Fault: a task finished twice (two runs, on two workers) but one start
    record is missing. Before, only start records counted: not a duplicate,
    OK. It is a run more, and with no fault to explain it the run fails."""
    records = task("twice", 1, runs=[(0.02, 1, 100, True, 0)])
    records.append(rec("finish", 30, id="twice", attempt=2, pid=101, node=EP[1]))
    v = check(history(records))
    d = v.summary()["duplicates"]
    assert (d["ran_more_than_once"], d["completed_twice"], d["unexplained"]) == (1, 1, 1)
    assert v.exit_code() == 4
