"""``miyaq chaos --payload`` and ``--result``: the size parser and its bounds,
the producer's padded submits and byte-bounded window, and the handler's
large result. The ``slow`` fault's link is in tests/test_chaos_slow.py."""
from __future__ import annotations

import math
import os
import random
import threading

import msgpack
import pytest
from fuzz_inputs import pack
from played_node import PlayedNode

from miyaq.chaos import tasks
from miyaq.chaos.history import HistoryWriter, read_history
from miyaq.chaos.producer import MIN_WINDOW, WINDOW, WINDOW_BYTES, Producer, window_for
from miyaq.chaos.sizes import (
    SizeSpec,
    largest_payload,
    largest_result,
    node_max_payload,
    parse_size,
    parse_spec,
    task_body,
)
from miyaq.cli.main import main
from miyaq.errors import ConfigError
from miyaq.protocol import commands as c
from miyaq.testing.harness import ThreadWorker, wait_for

MIB = 1024 * 1024


def test_sizes_read_with_binary_suffixes():
    assert [parse_size(t) for t in ("0", "512", "200k", "200K", "1m", "1.5m", " 2k ")] == [
        0, 512, 204_800, 204_800, MIB, 1_572_864, 2048]


@pytest.mark.parametrize("text", ["", "k", "-5", "12x", "1g", "1e6", "1,000", "1kb", "5-", "1-2-3", "nan"])
def test_a_spec_that_is_no_size_is_refused_naming_the_flag(text):
    with pytest.raises(ConfigError, match="--payload"):
        parse_spec(text, "--payload", MIB)


def test_a_range_runs_up_and_stays_under_the_nodes_bound():
    assert parse_spec("100-1m", "--payload", MIB) == SizeSpec(100, MIB)
    assert parse_spec("200k", "--result", MIB) == SizeSpec(204_800, 204_800)
    assert parse_spec("1k-max", "--payload", 5000) == SizeSpec(1024, 5000) == parse_spec("1k-MAX ", "-", 5000)
    assert parse_spec("max", "--result", 5000) == SizeSpec(5000, 5000)
    with pytest.raises(ConfigError, match="larger than its last"):
        parse_spec("1m-1k", "--payload", MIB)
    with pytest.raises(ConfigError, match=f"at most {MIB - 1}"):
        parse_spec("1k-1m", "--payload", MIB - 1)


def test_the_largest_payload_and_result_are_exactly_what_a_node_takes():
    """The bound is the encoding's, not a guess: the largest padding with
    the largest time, sequence number and result size a task can carry
    makes a body of exactly ``max_payload`` (2 bytes under below 64 KiB,
    where msgpack's header of the padding is shorter); a result of the
    largest size packs to exactly ``max_payload``."""
    for max_payload in (MIB, 4096, 70_000):
        pad = largest_payload(max_payload)
        worst = len(task_body(-1.5, 2 ** 63 - 1, True, bytes(pad), 2 ** 32 - 1))
        assert worst == max_payload if pad >= 65536 else max_payload - 2 <= worst <= max_payload
        assert len(task_body(0.05, 3, False, bytes(pad), 0)) <= max_payload
        packed = len(msgpack.packb(bytes(largest_result(max_payload)), use_bin_type=True))
        assert packed == max_payload if max_payload > 65536 else max_payload - 2 <= packed <= max_payload
    assert largest_payload(10) == 0


def test_the_nodes_max_payload_is_read_from_their_arguments():
    assert node_max_payload([], MIB) == MIB
    assert node_max_payload(["--fsync=always", "--max-payload=4096"], MIB) == 4096
    assert node_max_payload(["--max-payload", "2000", "--max-payload=3000"], MIB) == 3000
    assert node_max_payload(["--max-payload=lots"], MIB) == MIB


def test_a_range_is_drawn_log_uniformly_within_its_bounds():
    """As many sizes in each decade of 1k-1m: the large ones are a steady
    share, not one in a thousand."""
    spec = SizeSpec(1024, MIB)
    rng = random.Random(5)
    sizes = [spec.pick(rng) for _ in range(30_000)]
    assert min(sizes) >= 1024 and max(sizes) <= MIB
    decades = [sum(1 for s in sizes if 1024 * 10 ** d <= s < 1024 * 10 ** (d + 1)) for d in range(3)]
    assert all(abs(n - 30_000 * math.log(10) / math.log(1024)) < 600 for n in decades), decades
    assert SizeSpec(7, 7).pick(rng) == 7 and 0 <= SizeSpec(0, 1).pick(rng) <= 1
    with pytest.raises(ConfigError):
        SizeSpec(5, 4)


def test_the_producers_window_is_bounded_in_bytes():
    assert window_for(None) == WINDOW == window_for(SizeSpec(0, 0))
    assert window_for(SizeSpec(10, 1000)) == WINDOW
    assert window_for(SizeSpec(10, MIB)) == WINDOW_BYTES // MIB
    assert window_for(SizeSpec(10, 64 * MIB)) == MIN_WINDOW


class _Sent:
    """Stands for the producer's client: keeps what each submit asked."""

    def __init__(self) -> None:
        self.args: list[list] = []
        self.kwargs: list[dict | None] = []

    def submit(self, name, args, kwargs=None, **options):
        self.args.append(list(args))
        self.kwargs.append(kwargs)
        raise ConfigError("not sent")     # the producer records it as a failed submit


def test_each_submit_carries_padding_of_a_drawn_size_and_asks_for_a_result(tmp_path):
    """With --payload and --result each task's args are the time, the
    sequence number, the reject flag, padding of a size drawn from the
    spec and the result size drawn from the other; the submit record has
    both sizes. Without them the task is as before."""
    history = HistoryWriter(str(tmp_path / "h.jsonl"))
    producer = Producer(["tcp://127.0.0.1:9"], history, rate=1, duration=1, rng=random.Random(1),
                        payload=SizeSpec(1000, 5000), result=SizeSpec(300, 300), reject_every=2)
    plain = Producer(["tcp://127.0.0.1:9"], history, rate=1, duration=1, rng=random.Random(1))
    try:
        assert producer.client.window == window_for(SizeSpec(1000, 5000))
        for p in (producer, plain):
            p.client.close(flush=False)
            p.client = _Sent()      # type: ignore[assignment]
        for seq in range(4):
            producer._submit_one(seq)
        plain._submit_one(0)
    finally:
        history.close()
    sent = producer.client.args    # type: ignore[attr-defined]
    assert [(a[1], a[2], a[4]) for a in sent] == [(0, False, 300), (1, True, 300), (2, False, 300), (3, True, 300)]
    assert all(1000 <= len(a[3]) <= 5000 for a in sent) and len({len(a[3]) for a in sent}) > 1
    assert len(plain.client.args[0]) == 2       # type: ignore[attr-defined]
    submits = [r for r in read_history(str(tmp_path / "h.jsonl")) if r["ev"] == "submit"]
    assert [(r["size"], r["result"]) for r in submits[:4]] == [(len(a[3]), 300) for a in sent]
    assert "size" not in submits[4]


def test_the_handler_returns_a_result_of_the_size_asked(monkeypatch):
    """A real worker runs the chaos task with padding and a result size:
    its DONE carries a result of that many bytes."""
    monkeypatch.delenv(tasks.ENV_DIR, raising=False)
    monkeypatch.setattr(tasks, "_opened", False)
    monkeypatch.setattr(tasks, "_file", None)
    node = PlayedNode()
    running = ThreadWorker(tasks.app, [node.endpoint], pool="threads", app_spec="miyaq.chaos.tasks:app",
                           concurrency=1, heartbeat=0.25, grace=5.0).start()
    try:
        wait_for(lambda: node.pump() or node.link is not None, what="the worker's READY")
        node.send([c.TAG, c.DISPATCH, pack({"tasks": [
            ["t1", tasks.QUEUE, tasks.TASK_NAME, pack([[0.0, 7, False, bytes(50_000), 200_000], {}]), 1, 30.0]]})])
        wait_for(lambda: node.pump() or node.reports, timeout=30.0, what="the task's outcome")
    finally:
        running.stop()
        node.close()
    kind, task_id, _, result = node.reports[0]
    assert (kind, task_id) == ("done", "t1")
    assert msgpack.unpackb(result) == bytes(200_000)


def test_the_command_refuses_a_payload_the_nodes_would_not_take(tmp_path, capsys):
    """Bad input changes nothing: exit 2, the bound named, no run directory made."""
    out = tmp_path / "run"
    assert main(["chaos", "--payload", "2m", "--out", str(out)]) == 2
    assert "at most" in capsys.readouterr().err
    assert main(["chaos", "--result", "1k-3x", "--out", str(out)]) == 2
    assert "no size" in capsys.readouterr().err
    assert main(["chaos", "--payload", "5000", "--node-arg=--max-payload=4096", "--out", str(out)]) == 2
    assert f"at most {largest_payload(4096)}" in capsys.readouterr().err
    assert not out.exists()


def test_a_spec_reads_back_as_written_and_the_report_names_it():
    """The run record keeps the sizes as the flags read them, and the
    report's first line names them; a run without them says nothing."""
    from miyaq.chaos.report import render
    from test_chaos import H

    for text in ("1k-1m", "300", "100-200k", "1536-3m", "0"):
        assert str(parse_spec(text, "--payload", 4 * MIB)) == text
    h = H()
    h.records[0].update(rate=100, payload="1k-1m", result="0")
    s = h.task("t", 0, runs=[(0.1, 1, 10, True)]).checked().verdict().summary()
    assert render(s).splitlines()[0].startswith("miyaq chaos: 3 nodes, N=2, 100/s, payloads 1k-1m for ")
    h.records[0].update(result="200k")
    s = h.verdict().summary()
    assert "/s, payloads 1k-1m, results 200k for " in render(s).splitlines()[0]
    assert "payload" not in render(H().task("t", 0).checked().verdict().summary()).splitlines()[0]


def test_a_run_whose_results_fill_the_nodes_is_told_so_before_it_starts():
    """Fault (seed 71, 2026-12-07: 100/s, results of 1k-256k): results are
    kept an hour, so after about 70 s every node held its max_result_bytes
    (256 MiB) and refused submits busy for the rest of the load -- 1,800
    failed submits, and a run about refusals, not slow links. The run now
    says so at its start, with the time and the way out; a run whose
    results fit says nothing. The mean it reckons with is the draws'."""
    from miyaq.chaos.notes import results_note
    from miyaq.chaos.runner import ChaosConfig
    from miyaq.chaos.sizes import results_fill_seconds

    spec = SizeSpec(1024, 256 * 1024)
    rng = random.Random(3)
    draws = [spec.pick(rng) for _ in range(50_000)]
    assert abs(spec.mean() - sum(draws) / len(draws)) < 0.02 * spec.mean()
    assert SizeSpec(9, 9).mean() == 9
    assert 60 < results_fill_seconds(spec, 100, 2, 3, 256 * MIB) < 120
    assert results_fill_seconds(SizeSpec(0, 0), 100, 2, 3, 256 * MIB) == math.inf
    config = ChaosConfig(rate=100, duration=180, result=spec)
    note = results_note(config)
    assert note is not None and "max_result_bytes (268,435,456)" in note and "busy" in note
    assert results_note(ChaosConfig(rate=100, duration=180, result=spec,
                                    node_args=["--max-result-bytes=4000000000"])) is None
    assert results_note(ChaosConfig(rate=100, duration=60, result=spec)) is None
    assert results_note(ChaosConfig(rate=100, duration=180)) is None


class _Results:
    """Stands for the producer's client in the reader: a result per task id, or an error."""

    def __init__(self, answers: dict) -> None:
        self.answers = answers
        self.asked: list[str] = []
        self.gate = threading.Event()
        self.gate.set()

    def result(self, task_id, timeout=None):
        self.asked.append(task_id)
        self.gate.wait(10)
        answer = self.answers[task_id]
        if isinstance(answer, Exception):
            raise answer
        return answer


def test_the_reader_records_each_result_read_back_and_drops_what_it_cannot_hold(tmp_path):
    """The RESULT path: each finished task's result read through the
    client and recorded by size, or by the client's error code; at most
    ``capacity`` queued (the rest dropped and counted); after the stop,
    a read cut short by the closing client records nothing."""
    from miyaq.chaos.reader import ResultReader
    from miyaq.errors import ShuttingDown, Timeout

    path = str(tmp_path / "h.jsonl")
    history = HistoryWriter(path)
    client = _Results({"a": bytes(300), "b": Timeout("no answer"), "c": 7, "d": bytes(5), "e": ShuttingDown("closing")})
    client.gate.clear()                         # hold the reads until the queue is full
    reader = ResultReader(client, history, threads=1, capacity=3, timeout=1.0).start()
    offered = [reader.offer(i) for i in ("a", "b", "c", "d", "x", "y")]
    assert offered.count(False) == reader.dropped >= 2
    client.gate.set()
    reader.finish(10.0)
    assert reader.offer("e") is False
    reader2 = ResultReader(client, history, threads=1, timeout=1.0)
    reader2._stop.set()
    reader2._read("e")                           # cut short by the stop: nothing recorded
    history.close()
    reads = {r["id"]: r for r in read_history(path) if r["ev"] == "read"}
    assert set(reads) == set(client.asked) - {"e"} and "e" in client.asked
    assert reads["a"]["size"] == 300 and reads["b"]["code"] == "timeout"
    assert reads.get("c", {"size": -1})["size"] == -1


def test_the_producer_reads_back_each_finished_tasks_result_once(tmp_path):
    """Only tasks asked for a result of some bytes, not rejecting themselves,
    and each once however many finish records it has."""
    history = HistoryWriter(str(tmp_path / "h.jsonl"))
    producer = Producer(["tcp://127.0.0.1:9"], history, rate=1, duration=1, rng=random.Random(2),
                        result=SizeSpec(0, 10), reject_every=3)
    try:
        producer.client.close(flush=False)
        producer.client = _Sent()      # type: ignore[assignment]
        offered: list[str] = []
        assert producer.reader is not None
        producer.reader.offer = offered.append    # type: ignore[method-assign]
        for seq in range(30):
            producer._submit_one(seq)
        submits = [r for r in read_history(str(tmp_path / "h.jsonl")) if r["ev"] == "submit"]
        ids = [r["id"] for r in submits]
        producer.finished(ids + ids)
    finally:
        history.close()
    expected = [r["id"] for r in submits if r["result"] > 0 and not r.get("reject")]
    assert offered == expected and 0 < len(expected) < 30


def test_a_result_read_back_of_another_size_fails_the_run():
    """The checker: a result read back of the size its task returned is
    right; of another size (or not bytes) wrong -- exit status 4, named in
    the report; a failed read is counted by its code; a task never read is
    counted too. Only its first read counts."""
    from miyaq.chaos.report import render
    from test_chaos import H

    def history(second_size: int) -> H:
        h = H()
        for i, size in enumerate((100, 200, 300, 400)):
            h.add("submit", i, id=f"t{i}", seq=i, size=10, result=size).add("ack", i + 0.01, id=f"t{i}")
            h.add("start", i + 0.1, id=f"t{i}", attempt=1, pid=10).add("finish", i + 0.2, id=f"t{i}", attempt=1,
                                                                        pid=10)
            h.add("final", 100, id=f"t{i}", state="done")
        h.add("read", 5, id="t0", size=100).add("read", 5, id="t1", size=second_size)
        h.add("read", 6, id="t2", code="timeout", error="no answer").add("read", 7, id="t2", size=300)
        return h.checked()

    good = history(200).verdict()
    assert good.exit_code() == 0
    assert good.summary()["results"] == {"asked": 4, "read": 3, "right": 2, "wrong": 0, "failed": {"timeout": 1},
                                         "not_read": 1, "examples_wrong": []}
    assert "results read                3   of 4 returning bytes; right 2, timeout 1, not read 1" in render(
        good.summary())
    bad = history(-1).verdict()
    assert bad.exit_code() == 4 and bad.summary()["results"]["examples_wrong"] == ["t1"]
    assert "WRONG RESULTS" in render(bad.summary())
    assert "results read" not in render(H().task("t", 0, runs=[(0.1, 1, 10, True)]).checked().verdict().summary())



def test_busy_tasks_compute_instead_of_sleeping(monkeypatch, tmp_path):
    """``miyaq chaos --busy``: the handler computes for its time (CPU-bound
    code in each pool) and never sleeps; without it, it sleeps. The
    producer asks for it in each task's kwargs, the command line reads it
    and the report's first line names it."""
    from types import SimpleNamespace

    from miyaq.chaos.report import render
    from miyaq.cli.main import build_parser
    from test_chaos import H

    slept: list[float] = []
    spun: list[float] = []
    monkeypatch.setattr(tasks.time, "sleep", slept.append)
    monkeypatch.setattr(tasks, "spin", spun.append)
    monkeypatch.setattr(tasks, "record", lambda event, ctx: None)
    monkeypatch.setattr(tasks, "current_task", lambda: SimpleNamespace(id="t1", attempt=1))
    assert tasks.work(0.25, 7, busy=True) == 7 and spun == [0.25] and slept == []
    assert tasks.work(0.5, 8) == 8 and spun == [0.25] and slept == [0.5]
    monkeypatch.undo()
    assert tasks.spin(0.0) == 0 and tasks.spin(0.001) >= 1

    history = HistoryWriter(str(tmp_path / "h.jsonl"))
    busy = Producer(["tcp://127.0.0.1:9"], history, rate=1, duration=1, busy=True)
    plain = Producer(["tcp://127.0.0.1:9"], history, rate=1, duration=1)
    try:
        for p in (busy, plain):
            p.client.close(flush=False)
            p.client = _Sent()      # type: ignore[assignment]
            p._submit_one(0)
    finally:
        history.close()
    assert busy.client.kwargs == [{"busy": True}] and plain.client.kwargs == [None]   # type: ignore[attr-defined]

    parser = build_parser()
    assert parser.parse_args(["chaos", "--busy"]).busy is True and parser.parse_args(["chaos"]).busy is False
    h = H()
    h.records[0].update(rate=50, workers=2, concurrency=8, pool="threads", busy=True)
    head = render(h.task("t", 0, runs=[(0.1, 1, 10, True)]).checked().verdict().summary()).splitlines()[0]
    assert ", 2 x 8 threads (busy tasks), 50/s for " in head


def test_a_run_whose_tasks_fill_the_small_disks_is_told_so_before_it_starts():
    """Fault (seed 58, 2026-12-07: ``--faults all`` with tasks of 1k-256k
    and results of 1k-64k at 100/s): the diskfull fault puts each node's
    data dir on a 256 MiB tmpfs, the log filled it for real at about 120 s
    (No space left on device), and every submit was refused from then on.
    The run says so at its start; one that fits, or has no diskfull, or
    no sizes, says nothing."""
    from miyaq.chaos.notes import disks_note
    from miyaq.chaos.runner import ChaosConfig
    payload, result = SizeSpec(1024, 256 * 1024), SizeSpec(1024, 64 * 1024)
    note = disks_note(ChaosConfig(rate=100, duration=240, payload=payload, result=result, faults=["diskfull"]))
    assert note is not None and "256 MiB disk the diskfull fault gives each node" in note
    assert disks_note(ChaosConfig(rate=100, duration=240, payload=payload, faults=["kill"])) is None
    assert disks_note(ChaosConfig(rate=100, duration=240, faults=["diskfull"])) is None
    assert disks_note(ChaosConfig(rate=1, duration=60, payload=payload, faults=["diskfull"])) is None


def test_a_run_whose_workers_have_too_few_handlers_for_its_load_is_told_so_before_it_starts():
    """Fault (seed 74, 2026-12-07: ``--pool processes`` without
    ``--concurrency`` on 2 CPUs, so 2 workers x 2 children, against 150/s x
    0.05 s = 7.5 tasks busy on average): tasks queued from the start, done
    p50 74 s in calm, and 4,523 accepted tasks were not done after the
    drain -- a FAILED verdict about the run's capacity, nothing lost, and
    the run had not said a word. It says so at its start now, with the
    way out; with enough handlers it says nothing. Busy tasks count one
    handler a worker in the gevent and threads pools, and no more than the
    CPUs in any."""
    from miyaq.chaos.notes import handler_capacity, handlers_note, start_notes
    from miyaq.chaos.runner import ChaosConfig

    short = ChaosConfig(rate=150, task_time=0.05, workers=2, concurrency=2, pool="processes")
    note = handlers_note(short)
    assert note is not None and "keep 7.5 handlers busy on average, and the workers have 4" in note, note
    assert "--workers or --concurrency" in note and note in start_notes(short)
    assert handlers_note(ChaosConfig(rate=150, task_time=0.05, workers=2, concurrency=6, pool="processes")) is None
    assert handlers_note(ChaosConfig(rate=150, task_time=0.05, workers=2, concurrency=32)) is None
    assert start_notes(ChaosConfig(rate=150, task_time=0.05, workers=2, concurrency=32)) == []
    busy_threads = ChaosConfig(rate=50, task_time=0.05, workers=2, concurrency=8, pool="threads", busy=True)
    assert handler_capacity(busy_threads) == min(2, os.cpu_count() or 1)
    assert handlers_note(busy_threads) is not None       # 2.5 busy, CPU-bound, against one a worker
    busy_processes = ChaosConfig(rate=10, task_time=0.05, workers=2, concurrency=64, pool="processes", busy=True)
    assert handler_capacity(busy_processes) == min(128, os.cpu_count() or 1)
