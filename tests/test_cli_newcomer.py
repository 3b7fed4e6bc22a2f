"""Rough edges of the command line a newcomer hit (the newcomer audit of
2026-12-07): each test names the mistake and what the command said."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from gateway_harness import FIXTURES, wait_for
from test_gateway_admin import make_dead

from miyaq.cli.main import main
from miyaq.config import NodeConfig
from miyaq.errors import ConfigError
from miyaq.worker.config import WorkerConfig

MIYAQ = [sys.executable, "-m", "miyaq.cli.main"]
GUARD = 60      # seconds; a hung command fails the test instead of blocking it
http_node, api, make_http_node, make_web_worker = FIXTURES   # pytest finds fixtures in module globals
TESTS = os.path.dirname(os.path.abspath(__file__))     # apps.basic is here


def miyaq(*argv: str, cwd: str | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    """Run ``miyaq ARGV`` with no MIYAQ_ variable but ``env``'s."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("MIYAQ_")}
    return subprocess.run([*MIYAQ, *argv], capture_output=True, text=True, env={**environ, **env}, cwd=cwd,
                          timeout=GUARD)


def test_ring_next_to_a_standalone_node_says_it_has_no_ring(make_node, tmp_path):
    """Mistake: ``miyaq ring`` with MIYAQ_CONNECT naming a standalone node
    (the quickstart's), no ZooKeeper named. It waited 5 s for a ZooKeeper at
    127.0.0.1:2181 and printed that error. Now it asks the node, and says
    at once that a standalone node has no ring and to use ``miyaq status``."""
    node = make_node()
    done = miyaq("ring", cwd=str(tmp_path), MIYAQ_CONNECT=node.endpoint)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert done.stderr.startswith(f"miyaq: error: the node at {node.endpoint} ("), done.stderr
    assert ") is standalone: it has no ring" in done.stderr and "`miyaq status` shows that node" in done.stderr
    assert "ZooKeeper at" not in done.stderr and done.stdout == ""


@pytest.mark.parametrize("config,environ,says", [
    (WorkerConfig, {"MIYAQ_CONCURRENCY": "abc"}, "setting concurrency expects int, got 'abc' (from MIYAQ_CONCURRENCY)"),
    (WorkerConfig, {"MIYAQ_HEARTBEAT": "soon"}, "setting heartbeat expects float, got 'soon' (from MIYAQ_HEARTBEAT)"),
    (WorkerConfig, {"MIYAQ_CONCURRENCY": "-1"}, "concurrency must not be negative, not -1 "
                                                "(concurrency from MIYAQ_CONCURRENCY)"),
    (NodeConfig, {"MIYAQ_HTTP_PORT": "eighty"}, "setting http_port expects int, got 'eighty' (from MIYAQ_HTTP_PORT)"),
    (NodeConfig, {"MIYAQ_REPLICAS": "17"}, "replicas must be 1..16 (holders of a task), not 17 "
                                           "(replicas from MIYAQ_REPLICAS)"),
])
def test_a_bad_value_from_the_environment_names_its_variable(config, environ, says):
    """Mistake: a MIYAQ_ variable set to a value the setting cannot take
    (``MIYAQ_CONCURRENCY=abc miyaq worker ...``). The error named the
    setting alone ("setting concurrency expects int, got 'abc'"): the user
    looked for a --concurrency flag never given. Now it names the variable;
    a value the setting's checks refuse too."""
    with pytest.raises(ConfigError) as info:
        config.load({}, environ)
    assert info.value.message == says


def test_a_message_too_small_for_its_payload_from_the_environment_names_the_variable():
    """Mistake: ``MIYAQ_MAX_MESSAGE=100`` left in a unit file. A node's
    settings are checked again once loaded (``check_message_room``: a
    message must hold a task of ``max_payload``), after the step that names
    the variables: that error alone named no variable, unlike every other
    setting's. Now it names it."""
    with pytest.raises(ConfigError) as info:
        NodeConfig.load({}, {"MIYAQ_MAX_MESSAGE": "100"})
    assert info.value.message.startswith("max_message (100) must be at least max_payload (1,048,576) + 65,536")
    assert info.value.message.endswith(" (max_message from MIYAQ_MAX_MESSAGE)"), info.value.message


@pytest.mark.parametrize("args,environ,says", [
    ({"http_port": "70000"}, {"MIYAQ_PORT": "7450"}, "http_port must be 1..65535 (0: no HTTP gateway), not 70000"),
    ({}, {"MIYAQ_PORT": "7450", "MIYAQ_HTTP_PORT": "70000"},
     "http_port must be 1..65535 (0: no HTTP gateway), not 70000 (http_port from MIYAQ_HTTP_PORT)"),
    ({"default_backoff_max": "-1"}, {"MIYAQ_DEFAULT_BACKOFF": "1"},
     "default_backoff_max must not be negative, not -1.0"),
])
def test_a_variable_is_named_only_for_the_setting_the_error_names(args, environ, says):
    """Fault guarded against: naming every variable whose setting's name
    appears anywhere in the message (mutations: matching ``port`` inside
    ``http_port``, or ``default_backoff`` at the start of
    ``default_backoff_max``, passed every test). ``MIYAQ_PORT`` set right and
    ``--http-port 70000`` would have read "(port from MIYAQ_PORT)", sending
    the user to a variable with nothing wrong in it."""
    with pytest.raises(ConfigError) as info:
        NodeConfig.load(args, environ)
    assert info.value.message == says


def test_a_bad_flag_value_names_the_flag():
    """The same from a flag: ``--concurrency abc`` names ``--concurrency``."""
    with pytest.raises(ConfigError) as info:
        WorkerConfig.load({"concurrency": "abc"}, {})
    assert info.value.message == "setting concurrency expects int, got 'abc' (from --concurrency)"


def test_a_worker_started_with_a_bad_variable_says_which(tmp_path):
    """The mistake as the audit met it: the worker's one-line error, exit 2."""
    done = miyaq("worker", "apps.basic:app", "--connect", "tcp://127.0.0.1:7450", cwd=str(tmp_path),
                 MIYAQ_CONCURRENCY="abc", PYTHONPATH=os.pathsep.join([TESTS, os.environ.get("PYTHONPATH", "")]))
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert done.stderr == ("miyaq: error: setting concurrency expects int, got 'abc' (from MIYAQ_CONCURRENCY)\n")


def test_submit_wait_json_of_a_task_that_fails_prints_its_outcome(make_node, procs):
    """Mistake: ``miyaq submit NAME --wait --json`` of a task that fails, in
    a script that reads the JSON. It printed nothing on stdout and exited 2,
    a usage error's status: the script had neither the task's id nor why it
    failed. Now it prints the outcome (state, error) and exits 1, a task
    that ended without a result; as text, its id and state on stdout and the
    error's line on stderr, exit 1 too."""
    node = make_node()
    procs.worker("apps.basic:app", node.endpoint, 1)
    done = miyaq("submit", "reject", "--wait", "--json", "--connect", node.endpoint)
    assert done.returncode == 1, (done.stdout, done.stderr)
    out = json.loads(done.stdout)
    assert (out["status"], out["state"], out["error"]["type"], out["error"]["message"]) == (
        "accepted", "dead", "Reject", "bad input"), out
    assert "result" not in out and done.stderr == ""

    done = miyaq("submit", "add", "--args", "[2, 3]", "--wait", "--json", "--connect", node.endpoint)
    assert done.returncode == 0, (done.stdout, done.stderr)
    assert {k: v for k, v in json.loads(done.stdout).items() if k != "id"} == {
        "status": "accepted", "state": "done", "result": 5}

    done = miyaq("submit", "reject", "--wait", "--connect", node.endpoint)
    assert done.returncode == 1, (done.stdout, done.stderr)
    lines = done.stdout.splitlines()
    assert lines[1:] == ["status: accepted", "state: dead"] and lines[0].startswith("id: "), lines
    assert done.stderr == f"miyaq: error: task {lines[0][4:]} failed: Reject: bad input\n"


def test_submit_wait_json_of_a_task_not_finished_in_time_prints_its_state(make_node):
    """The same for a wait that ends first (no worker of the task's queue):
    its state and why, exit status 3; it was nothing on stdout and 2."""
    node = make_node()
    done = miyaq("submit", "add", "--args", "[1, 2]", "--queue", "nobody", "--wait", "--wait-timeout", "0.2",
                 "--json", "--connect", node.endpoint)
    assert done.returncode == 3, (done.stdout, done.stderr)
    out = json.loads(done.stdout)
    assert (out["state"], out["error"]["type"]) == ("ready", "Timeout"), out
    assert "no worker of its queue took it in time" in out["error"]["message"]



def test_keys_list_of_a_missing_directory_names_the_argument_not_a_flag(tmp_path, capsys):
    """Mistake: ``miyaq keys list ./nodir``, a directory never made. It said
    "--keys ./nodir: no authorized/ directory", a flag the command does not
    have (the node's). Now it names the argument as given, and that it is
    no directory at all; a directory without ``authorized/`` likewise."""
    missing = str(tmp_path / "nodir")
    assert main(["keys", "list", missing]) == 2
    assert capsys.readouterr().err == (f"miyaq: error: key directory {missing}: no such directory (make a key "
                                       f"directory with `miyaq keys init {missing}`)\n")
    assert main(["keys", "list", str(tmp_path)]) == 2
    assert capsys.readouterr().err == (f"miyaq: error: key directory {tmp_path}: no authorized/ directory (make "
                                       "it with `miyaq keys init`)\n")


def test_status_of_a_done_task_labels_an_earlier_attempts_error(http_node, api, capsys):
    """Mistake: ``miyaq status ID`` of a task done at its second attempt
    showed ``error: ...`` -- the first attempt's (a worker gone silent, here
    a consumer's NACK) -- read as the task's failure; the console's task
    page headed it "Last error". Now it is the last failed attempt's, said
    so in both; a dead task's stays its error."""
    task_id = api.post("/tasks", {"name": "job", "max_retries": 2, "backoff": 0.01})[1]["id"]
    got = wait_for(lambda: api.post("/receive", {"queues": ["default"]})[1]["task"], "the first attempt")
    assert api.post(f"/tasks/{task_id}/nack", {"attempt": got["attempt"], "error": "first try fails"})[1]["ok"]
    got = wait_for(lambda: api.post("/receive", {"queues": ["default"]})[1]["task"], "the second attempt")
    assert api.post(f"/tasks/{task_id}/ack", {"attempt": got["attempt"], "result": 7})[1]["ok"]

    endpoint = f"tcp://127.0.0.1:{http_node.config.port}"
    assert main(["status", task_id, "--connect", endpoint]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "state: done" in lines, lines
    failed = [line for line in lines if "first try fails" in line]
    assert failed and failed[0].startswith("last failed attempt: "), lines
    assert not any(line.startswith("error:") for line in lines), lines
    html = api.get(f"/ui/tasks/{task_id}")[1].decode()
    assert "Last failed attempt" in html and "a later attempt finished the task" in html
    assert "Last error" not in html

    dead = make_dead(api, "qd", 1)[0]
    assert main(["status", dead, "--connect", endpoint]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "state: dead" in lines and any(line.startswith("error: ") for line in lines), lines
    assert "Last error" in api.get(f"/ui/tasks/{dead}")[1].decode()


@pytest.mark.parametrize("argv,usage,left", [
    (["dead", "list", "--queue", "default", "-x", "abc"], "usage: miyaq dead ", "-x abc"),
    (["status", "a", "b"], "usage: miyaq status ", "b"),
    (["keys", "list", "a", "b"], "usage: miyaq keys list ", "b"),
])
def test_an_argument_left_over_shows_the_commands_usage(argv, usage, left, capsys):
    """Mistake: ``miyaq status a b`` (a word or an option left over). It
    printed the top level's ``usage: miyaq [-h] [--version] COMMAND ...``,
    which says nothing of the command. Now the command's own usage and
    error, exit status 2, before anything is sent."""
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(usage), err
    name = usage[len("usage: "):].strip()
    assert err.endswith(f"{name}: error: unrecognized arguments: {left}\n"), err


def test_task_ids_after_an_option_are_the_dead_commands_ids(capsys):
    """Mistake, not an error: ``miyaq dead purge --connect EP ID`` (ids after
    an option). argparse filled ``ids`` empty before the option and left
    ``ID`` over: refused as an unrecognized argument (review31). The words
    after the options are the ids, as before them; what ``dead`` makes of
    them is its own check, and says so."""
    from miyaq.cli.main import build_parser, parse
    args = parse(build_parser(), ["dead", "purge", "--connect", "tcp://127.0.0.1:9", "t1", "t2"])
    assert args.ids == ["t1", "t2"] and args.op == "purge"
    args = parse(build_parser(), ["dead", "retry", "t1", "--json", "t2"])
    assert args.ids == ["t1", "t2"] and args.json
    assert main(["dead", "list", "--queue", "default", "abc"]) == 2
    assert "dead list takes no task ids" in capsys.readouterr().err
    assert main(["dead", "retry", "--queue", "q", "t1"]) == 2
    assert "give task ids or --queue, not both" in capsys.readouterr().err


def test_json_output_of_a_result_whose_map_keys_json_does_not_take(capsys):
    """Bad input: a result is whatever a worker returned, and msgpack takes
    maps with keys of mixed types or bytes keys; ``--json`` output of one
    (``miyaq status ID --json``) ended in a TypeError traceback (review31).
    Now every key is written as a string, the JSON valid."""
    import json as jsonlib

    from miyaq.cli.tasks_cmd import _print
    _print({"state": "done", "result": {1: "a", "b": [{b"k": 2, None: True}], 2.5: 3}}, True)
    printed = jsonlib.loads(capsys.readouterr().out)
    assert printed == {"state": "done", "result": {"1": "a", "b": [{"b'k'": 2, "null": True}], "2.5": 3}}
