"""The producer and operator command line against real processes: a node
subprocess, a worker subprocess running ``apps.basic:app``, and ``miyaq``
itself run as a subprocess per command, as a user would type it.

Conditions are waited for with an in-process Client (faster than polling
the CLI); subprocess timeouts only guard against hangs.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
from gateway_harness import WorkerServer
from raw_nodes import CountingNode, NodesPlayer

from miyaq.cli.main import main
from miyaq.protocol import commands as c
from miyaq.testing.harness import free_port, refusing_port, wait_for

MIYAQ = [sys.executable, "-m", "miyaq.cli.main"]
GUARD = 60      # seconds; a hung command fails the test instead of blocking it


def miyaq(*argv: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "MIYAQ_CONNECT"}
    return subprocess.run([*MIYAQ, *argv], capture_output=True, text=True, env=env, timeout=GUARD)


def ok(*argv: str) -> str:
    done = miyaq(*argv)
    assert done.returncode == 0, (argv, done.returncode, done.stdout, done.stderr)
    return done.stdout


def ok_json(*argv: str):
    return json.loads(ok(*argv, "--json"))


@pytest.fixture
def node(procs):
    return procs.node()


@pytest.fixture
def worker(procs, node):
    return procs.worker("apps.basic:app", node.endpoint)


@pytest.fixture
def client(node, client_for):
    return client_for(node.endpoint)


def test_submit_wait_prints_the_result(node, worker):
    """``miyaq submit add --args '[2,3]' --wait --json`` prints the result 5."""
    out = ok_json("submit", "add", "--args", "[2,3]", "--wait", "--connect", node.endpoint)
    assert out["result"] == 5 and out["status"] == "accepted"
    assert re.fullmatch(r"[0-9a-f]{32}", out["id"])
    text = ok("submit", "add", "--args", "[20, 22]", "--kwargs", "{}", "--wait", "--connect", node.endpoint)
    assert "result: 42" in text.splitlines()


def test_submit_with_a_dedup_key_twice_is_a_duplicate_with_the_same_id(node, client):
    """Two submits with the same --dedup-key: the second answers "duplicate" with the first id."""
    argv = ("submit", "echo", "--args", '["hi"]', "--countdown", "60", "--dedup-key", "k", "--connect", node.endpoint)
    first = ok_json(*argv)
    second = ok_json(*argv)
    assert first["status"] == "accepted" and second["status"] == "duplicate"
    assert second["id"] == first["id"]
    assert [t["id"] for t in client.tasks()] == [first["id"]]


def test_submit_options_reach_the_node(node, client):
    """--id, --queue, --priority, --max-retries and --timeout are stored on the task."""
    ok("submit", "echo", "--id", "cli-opts-1", "--queue", "q9", "--priority", "-3", "--max-retries", "7",
       "--timeout", "12.5", "--countdown", "60", "--connect", node.endpoint)
    info = client.status("cli-opts-1")
    assert (info["queue"], info["priority"], info["max_retries"], info["timeout"], info["state"]) == (
        "q9", -3, 7, 12.5, "scheduled")


def test_status_of_the_node_as_a_table_and_as_json(node, worker, client):
    """``miyaq status`` prints the node line, the totals, the bytes held
    against their limits and one row per queue; ``--json`` prints the same
    status as JSON."""
    client.submit("echo", [1], queue="q1", countdown=60, wait=True)
    wait_for(lambda: client.status()["totals"]["workers"] == 1, what="worker registered")
    lines = ok("status", "--connect", node.endpoint).splitlines()
    assert lines[0].startswith(f"node n{node.port} ")
    assert "live 1" in lines[1] and "workers 1" in lines[1]
    assert lines[2].startswith("payloads 0.0 MiB of 1024.0 MiB  results 0.0 MiB of 256.0 MiB"), lines[2]
    # The table follows the summary's lines and, when there were any, the failed handshakes'
    # (a client's connection closed in its handshake: seen 1 run in 3 with -n 2).
    table = next(i for i, line in enumerate(lines) if line.startswith("queue "))
    assert all(line.startswith("handshakes ") for line in lines[3:table]), lines[3:table]
    assert lines[table].split() == ["queue", "scheduled", "ready", "running", "retrying", "dead", "workers", "idle"]
    rows = {line.split()[0]: line.split()[1:] for line in lines[table + 1:]}
    assert rows["q1"][:5] == ["1", "0", "0", "0", "0"]
    assert rows["default"][5] == "1"                  # one worker consumes "default"
    status = ok_json("status", "--connect", node.endpoint)
    assert status["node"] == f"n{node.port}" and status["totals"]["live"] == 1
    assert status["queues"]["q1"]["scheduled"] == 1


def test_status_says_when_the_node_is_near_its_limit_on_open_files():
    """A node near its limit on open files (STATUS ``open_files.near``,
    docs/configuration.md, "Open files"): ``miyaq status`` prints a line
    saying so and what to do; not near, no such line."""
    base = {"node": "n1", "version": "1", "uptime": 5.0, "accepting": True,
            "totals": {"live": 0, "dead": 0, "workers": 0}, "queues": {}}
    for near, expected in ((True, ["OPEN FILES 1020 of the limit of 1024: connections past it are refused; raise "
                                   'the limit (docs/configuration.md, "Open files")']), (False, [])):
        files = {"open": 1020 if near else 30, "limit": 1024, "near": near, "times_near": 1}
        with NodesPlayer([CountingNode({c.STATUS: {**base, "open_files": files}})], tasks=0) as player:
            lines = ok("status", "--connect", player.nodes[0].endpoint).splitlines()
        assert not player.problems
        assert [line for line in lines if "OPEN FILES" in line] == expected


def test_status_of_one_task(node):
    """``miyaq status ID`` prints the task's fields; an unknown id is an error (exit 2)."""
    task_id = ok_json("submit", "echo", "--countdown", "60", "--queue", "qs", "--connect", node.endpoint)["id"]
    lines = ok("status", task_id, "--connect", node.endpoint).splitlines()
    assert f"id: {task_id}" in lines and "state: scheduled" in lines and "queue: qs" in lines
    info = ok_json("status", task_id, "--connect", node.endpoint)
    assert info["id"] == task_id and info["state"] == "scheduled" and info["name"] == "echo"
    done = miyaq("status", "no-such-task", "--connect", node.endpoint)
    assert done.returncode == 2 and "error" in done.stderr and "no-such-task" in done.stderr


def test_tasks_filters_by_queue_and_state(node):
    """``miyaq tasks --queue Q --state scheduled`` lists exactly those tasks."""
    ids = [ok_json("submit", "echo", "--queue", "tq", "--countdown", "60", "--connect", node.endpoint)["id"]
           for _ in range(2)]
    ok("submit", "echo", "--queue", "tq", "--connect", node.endpoint)                    # ready
    ok("submit", "echo", "--queue", "other", "--countdown", "60", "--connect", node.endpoint)
    listed = ok_json("tasks", "--queue", "tq", "--state", "scheduled", "--connect", node.endpoint)
    assert sorted(t["id"] for t in listed) == sorted(ids)
    assert all(t["queue"] == "tq" and t["state"] == "scheduled" for t in listed)
    done = miyaq("tasks", "--queue", "tq", "--state", "scheduled", "--connect", node.endpoint)
    assert done.returncode == 0 and "2 task(s)" in done.stdout
    lines = done.stdout.splitlines()
    assert lines[-1] == "2 task(s)"
    assert sorted(line.split()[0] for line in lines[:-1]) == sorted(ids)
    bad = miyaq("tasks", "--state", "sleeping", "--connect", node.endpoint)
    assert bad.returncode == 2 and "error" in bad.stderr


def test_cancel_then_cancel_again(node, client):
    """``miyaq cancel ID`` exits 0 when it cancelled the task, 1 when it was already over."""
    task_id = ok_json("submit", "echo", "--countdown", "60", "--connect", node.endpoint)["id"]
    first = miyaq("cancel", task_id, "--connect", node.endpoint, "--json")
    assert first.returncode == 0 and json.loads(first.stdout) == {"id": task_id, "cancelled": True}
    again = miyaq("cancel", task_id, "--connect", node.endpoint, "--json")
    assert again.returncode == 1 and json.loads(again.stdout) == {"id": task_id, "cancelled": False}
    assert client.status(task_id)["state"] == "cancelled"


def test_dead_list_retry_and_purge(node, worker, client):
    """A rejected task lands in the dead letters: ``dead list`` shows it with
    its error, ``dead retry ID`` runs it again, ``dead purge`` empties the queue."""
    task_id = ok_json("submit", "reject", "--connect", node.endpoint)["id"]
    wait_for(lambda: [t["id"] for t in client.dead("list")["tasks"]] == [task_id], what="task dead")
    listed = ok_json("dead", "list", "--connect", node.endpoint)
    assert [t["id"] for t in listed] == [task_id] and listed[0]["error"]["type"] == "Reject"
    done = miyaq("dead", "list", "--connect", node.endpoint)
    assert done.returncode == 0 and "1 dead task(s)" in done.stdout
    assert task_id in done.stdout and "Reject: bad input" in done.stdout

    assert ok_json("dead", "retry", task_id, "--connect", node.endpoint) == {"retried": [task_id]}
    wait_for(lambda: client.status(task_id)["state"] == "dead" and client.status(task_id)["attempt"] == 1
             and client.status()["outcomes"].get("dead", 0) == 2, what="retried task dead again")
    assert ok_json("dead", "purge", "--connect", node.endpoint) == {"purged": 1}
    assert ok_json("dead", "list", "--connect", node.endpoint) == []


def test_dead_retry_and_purge_of_ids_that_are_no_dead_task_say_so(node):
    """Bad input: ``miyaq dead purge ID...`` of ids that are no dead task
    (mistyped, purged already) printed only "purged 0 dead task(s)", while
    ``dead retry`` said how many ids missed -- "2 of the ids given is no
    dead task here". Now both say it, in the plural when there are more."""
    done = miyaq("dead", "purge", "nosuch-1", "nosuch-2", "--connect", node.endpoint)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "purged 0 dead task(s)\n2 of the ids given are no dead tasks here (`miyaq dead list`)\n"
    done = miyaq("dead", "retry", "nosuch-1", "nosuch-2", "--connect", node.endpoint)
    assert done.stdout == "retried 0 dead task(s)\n2 of the ids given are no dead tasks here (`miyaq dead list`)\n"
    done = miyaq("dead", "purge", "nosuch-1", "--connect", node.endpoint)
    assert done.stdout == "purged 0 dead task(s)\n1 of the ids given is no dead task here (`miyaq dead list`)\n"
    assert ok("dead", "purge", "--connect", node.endpoint) == "purged 0 dead task(s)\n"

def test_bad_args_json_is_a_usage_error():
    """Malformed --args / --kwargs JSON (or the wrong JSON type) exits 2 with
    an error on stderr, before connecting anywhere."""
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    for extra in (["--args", "[2,"], ["--args", '{"a": 1}'], ["--kwargs", "[1]"], ["--kwargs", "{nope}"]):
        done = miyaq("submit", "add", *extra, "--connect", endpoint)
        assert done.returncode == 2, (extra, done.stdout, done.stderr)
        assert "error" in done.stderr and ("--args" in done.stderr or "--kwargs" in done.stderr)
        assert done.stdout == ""


def test_no_node_running_is_a_clear_error_not_a_hang():
    """Fault: nothing listens on the endpoint. ``miyaq status`` gives up after
    its request timeout with an error on stderr and exit 2 (the subprocess
    timeout only catches a hang)."""
    with refusing_port() as port:
        endpoint = f"tcp://127.0.0.1:{port}"
        done = miyaq("status", "--connect", endpoint)
    assert done.returncode == 2
    assert done.stderr.startswith(f"miyaq: error: cannot reach any node: nothing is listening on {endpoint}")
    assert done.stdout == ""


@pytest.mark.parametrize("command", [["status"], ["worker", "apps.basic"]])
def test_a_connect_that_is_not_an_endpoint_is_a_clear_error(command):
    """Fault: ``--connect`` is given something libzmq refuses to dial (a
    host without a port). The command exits 2 naming it and the form an
    endpoint takes, not with libzmq's bare traceback."""
    done = miyaq(*command, "--connect", "tcp://127.0.0.1")
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert done.stderr.strip().splitlines()[-1] == (
        "miyaq: error: cannot connect to 'tcp://127.0.0.1': Invalid argument (an endpoint looks like "
        "tcp://host:port or ipc:///path)")


@pytest.mark.parametrize("command,replies", [
    (["status"], {c.STATUS: {"node": "n1"}}),                                   # no version, totals, ...
    (["status"], {c.STATUS: {"node": "n1", "version": "9", "uptime": "long", "accepting": True}}),
    (["tasks"], {c.TASKS: {"tasks": [{"id": "t1"}]}}),
    (["tasks"], {c.TASKS: {"tasks": [5]}}),
    (["dead", "list"], {c.DEAD: {"tasks": 5}}),
    (["dead", "purge"], {c.DEAD: {"retried": 1}}),
], ids=["status-fields", "status-uptime-not-a-number", "tasks-fields",
        "tasks-not-maps", "dead-list-not-a-list", "dead-purge-field"])
def test_an_answer_of_an_unexpected_shape_is_a_clear_error(command, replies):
    """Fault: something that speaks the protocol (a node of another version,
    a buggy or hostile one) answers with a map the command cannot print. The
    command exits 2 with one line naming the node and what was wrong, not a
    traceback."""
    with NodesPlayer([CountingNode(replies)], tasks=0) as player:
        endpoint = player.nodes[0].endpoint
        done = miyaq(*command, "--connect", endpoint)
    assert not player.problems
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr
    line, = done.stderr.strip().splitlines()
    assert line.startswith(f"miyaq: error: unexpected answer from the node at {endpoint}: "), line


def test_json_prints_an_answer_with_keys_json_does_not_take_as_strings():
    """``--json`` prints the answer as it came: a map key JSON does not take
    (bytes, from a node of another version or a buggy one) is written as a
    string, exit 0. Until 2026-12-07 it was refused as an unexpected answer
    here, and in a task's result (a worker's data) a TypeError traceback
    (review31)."""
    with NodesPlayer([CountingNode({c.STATUS: {"node": "n1", b"raw": 1}})], tasks=0) as player:
        done = miyaq("status", "--json", "--connect", player.nodes[0].endpoint)
    assert not player.problems
    assert done.returncode == 0, (done.stdout, done.stderr)
    assert json.loads(done.stdout) == {"node": "n1", "b'raw'": 1}


@pytest.mark.parametrize("payload,expected", [
    (b"<html>not a gateway</html>", "GET /queues: the answer from {url} is not JSON (is it a miyaq node's "
                                    "HTTP gateway?)"),
    (b'{"queues": [{"name": "q"}]}', "unexpected answer from the gateway at {url}: no field 'limits' (is it a "
                                     "miyaq node of this version? --json prints the answer as it came)"),
    (b'{"queues": 7}', "unexpected answer from the gateway at {url}: TypeError: 'int' object is not iterable"),
], ids=["not-json", "row-without-limits", "queues-not-a-list"])
def test_a_gateway_answer_of_an_unexpected_shape_is_a_clear_error(payload, expected):
    """Fault: ``--http`` names a server that answers 200 with something other
    than the gateway's answer (another program, another version). ``miyaq
    queue list`` exits 2 with one line saying so, not a traceback."""
    server = WorkerServer(script={1: (200, {"Content-Type": "application/json"}, 0.0, payload)})
    try:
        done = miyaq("queue", "list", "--http", server.url)
    finally:
        server.close()
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr
    line, = done.stderr.strip().splitlines()
    assert line.startswith("miyaq: error: " + expected.format(url=server.url)), line


@pytest.mark.parametrize("argv,option", [
    (["submit", "add", "--priority", "100000000000000000000000"], "--priority"),
    (["submit", "add", "--max-retries", "100000000000000000000000"], "--max-retries"),
    (["submit", "add", "--countdown", "nan"], "--countdown"),
    (["submit", "add", "--ttl", "inf"], "--ttl"),
    (["submit", "add", "--wait", "--wait-timeout", "-1"], "--wait-timeout"),
    (["tasks", "--limit", "100000000000000000000000"], "--limit"),
    (["dead", "list", "--limit", "0"], "--limit"),
    (["queue", "limit", "q", "--rate", "nan"], "--rate"),
    (["ring", "weight", "n1", "nan"], "weight"),
    (["dev-cluster", "--duration", "nan"], "--duration"),
    (["dev-cluster", "--nodes", "0"], "--nodes"),
    (["chaos", "--duration", "inf"], "--duration"),
    (["bench", "--rate", "nan"], "--rate"),
    (["bench", "--concurrency", "-5"], "--concurrency"),
], ids=lambda v: " ".join(v) if isinstance(v, list) else v)
def test_a_number_no_command_can_use_is_a_usage_error_before_anything_is_sent(argv, option, capsys):
    """Fault: a number out of every range the option has -- an integer too big
    for msgpack, NaN, infinity, a negative wait. It stops the parser (exit
    2) with a line naming the option, before any connection is made. Before,
    a huge integer was a msgpack traceback, ``--wait-timeout -1`` raised
    after the node had accepted the task, and ``--duration nan`` never
    ended."""
    endpoint_options = ["--connect", "tcp://127.0.0.1:9"] if argv[0] in ("submit", "tasks", "dead") else []
    with pytest.raises(SystemExit) as info:
        main([*argv, *endpoint_options])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {option}" in err, err
    assert "Traceback" not in err


def test_a_queue_name_goes_to_the_gateway_as_one_path_segment(capsys):
    """A queue name holding ``?``, ``/`` or ``#`` reached the gateway as part
    of another path or a query string (``/queues/a?b/pause``: the request
    went to ``/queues/a``). It is percent-encoded as one segment now, and
    the node judges the name."""
    status = (200, {"Content-Type": "application/json"}, 0.0, b'{"node": "n1"}')
    refused = (400, {"Content-Type": "application/json"}, 0.0,
               b'{"error": {"code": "invalid_field", "message": "bad queue name"}}')
    server = WorkerServer(script={1: status, 2: refused, 3: status, 4: refused})
    try:
        assert main(["queue", "pause", "a?b/c#d", "--http", server.url]) == 2
        assert main(["queue", "limit", "a/../b", "--rate", "5", "--http", server.url]) == 2
    finally:
        server.close()
    paths = [r.path for r in server.requests]
    assert paths == ["/status", "/queues/a%3Fb%2Fc%23d/pause", "/status", "/queues/a%2F..%2Fb/limits"], paths
    assert "bad queue name" in capsys.readouterr().err


@pytest.mark.parametrize("url", ["localhost", "/x", "http://[::1", "http://127.0.0.1:port", "htp://127.0.0.1:1"])
def test_a_gateway_url_urllib_cannot_use_is_a_clear_error(url, capsys):
    """Fault: ``--http`` is not a URL a request can go to (a bare host or
    path, a broken IPv6 literal, a port that is not a number, an unknown
    scheme). One line naming it, exit 2; the first three were a ValueError
    traceback."""
    assert main(["queue", "list", "--http", url]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"miyaq: error: {url} is not a gateway URL miyaq can use"), err


def test_python_dash_m_miyaq_is_the_command_line():
    """Fault: ``python -m miyaq`` failed ("No module named miyaq.__main__"),
    the usual way to run a package's command where its script is not on
    PATH (a virtualenv not activated, ``sudo``). Now it is ``miyaq``."""
    done = subprocess.run([sys.executable, "-m", "miyaq", "--version"], capture_output=True, text=True,
                          timeout=GUARD)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("miyaq ")


def test_a_ctrl_c_while_the_commands_load_ends_quietly_with_130(monkeypatch, capsys):
    """Fault: a Ctrl-C in the first half second of any command -- while its
    modules were imported and the parser built -- printed Python's
    KeyboardInterrupt traceback instead of ending as a Ctrl-C later does."""
    import miyaq.cli.main as cli_main

    def interrupted_import(name: str):
        raise KeyboardInterrupt

    monkeypatch.setattr("importlib.import_module", interrupted_import)
    assert cli_main.main(["status"]) == 130
    assert capsys.readouterr().err == ""


def fresh_interpreter(probe: str) -> str:
    """What ``probe`` prints, run in a new Python (no module loaded yet)."""
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=GUARD)
    assert done.returncode == 0, done.stderr
    return done.stdout


#: What the command line loads only for the command that needs it: the
#: node's parts, the dev cluster's, the client's and the worker's.
HEAVY_MODULES = ("miyaq.node.assemble", "miyaq.devcluster.cluster", "miyaq.client.client", "miyaq.app",
                 "miyaq.worker.runner", "miyaq.gateway.server", "miyaq.cluster.role", "gevent")


def test_the_parser_loads_no_command_s_machinery():
    """Fault: every start of ``miyaq`` -- ``--help``, ``status``, ``keys`` --
    imported the node, the dev cluster, the client and the worker (0.45 s of
    CPU before anything was done; 0.10 s now): the command modules and the
    package's ``__init__`` imported them at their top. Built in a fresh
    interpreter, the parser leaves them unloaded."""
    probe = ("import sys\n"
             "from miyaq.cli.main import build_parser\n"
             "build_parser().parse_args(['status'])\n"
             f"print(' '.join(m for m in {HEAVY_MODULES!r} if m in sys.modules))\n")
    assert fresh_interpreter(probe).split() == []


def test_the_dev_cluster_s_ports_load_without_the_cluster_and_its_class_is_where_it_was():
    """``miyaq.devcluster`` became a package (its cluster, ports, node and
    waits): the test tools that only pick ports import its ``ports`` without
    loading the cluster (ZooKeeper's and the harness's modules), and
    ``from miyaq.devcluster import DevCluster`` still gives the class."""
    probe = ("import sys\n"
             "import miyaq.devcluster.ports\n"
             "print('miyaq.devcluster.cluster' in sys.modules)\n"
             "from miyaq.devcluster import DevCluster\n"
             "print(DevCluster.__module__)\n")
    assert fresh_interpreter(probe).split() == ["False", "miyaq.devcluster.cluster"]


def test_every_public_name_of_the_package_is_there_on_first_use():
    """The package's names are imported on first use (PEP 562): each of
    ``__all__`` resolves to the object its module defines, ``from miyaq
    import *`` brings them all, and a name it does not have is an
    AttributeError, as before."""
    probe = ("import miyaq\n"
             "from miyaq.client.client import Client\n"
             "from miyaq.errors import TaskFailed\n"
             "from miyaq.worker.context import current_task\n"
             "assert miyaq.Client is Client and miyaq.TaskFailed is TaskFailed\n"
             "assert miyaq.current_task is current_task\n"
             "assert all(hasattr(miyaq, name) for name in miyaq.__all__)\n"
             "assert set(miyaq.__all__) <= set(dir(miyaq))\n"
             "namespace = {}\n"
             "exec('from miyaq import *', namespace)\n"
             "assert set(miyaq.__all__) <= set(namespace)\n"
             "try:\n"
             "    miyaq.NoSuchName\n"
             "except AttributeError as exc:\n"
             "    print(exc)\n")
    assert fresh_interpreter(probe).strip() == "module 'miyaq' has no attribute 'NoSuchName'"


@pytest.mark.parametrize("how", ["flag", "env", "default"])
def test_a_gateway_that_does_not_answer_says_which_address_and_how_to_name_another(how, capsys, monkeypatch):
    """Fault: ``miyaq queue list`` where no gateway listens (an operator on a
    node whose ``MIYAQ_HTTP_PORT`` is not 8088, with no ``--http``). The error
    was urllib's words alone, ``cannot reach the node at
    http://127.0.0.1:8088: <urlopen error [Errno 111] Connection refused>``,
    nothing saying where the address came from or how to give another (the
    sre audit). Now it names its source and ``--http`` / ``MIYAQ_HTTP``."""
    monkeypatch.delenv("MIYAQ_HTTP", raising=False)
    with refusing_port() as port:
        url = f"http://127.0.0.1:{port}"
        argv = ["queue", "list"]
        if how == "flag":
            argv += ["--http", url]
        elif how == "env":
            monkeypatch.setenv("MIYAQ_HTTP", url)
        else:
            monkeypatch.setattr("miyaq.devstate.default_http", lambda: url)
        assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"miyaq: error: cannot reach the node at {url}: "), err
    assert "urlopen error" not in err and "--http http://HOST:PORT or MIYAQ_HTTP" in err, err
    source = {"flag": "given by --http", "env": "given by MIYAQ_HTTP", "default": "no --http or MIYAQ_HTTP given"}[how]
    assert source in err, err
