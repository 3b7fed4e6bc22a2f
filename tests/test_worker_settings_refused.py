"""``miyaq worker`` settings every node would refuse are refused at start,
in one line naming the option and the value given: sizes out of range, and
queues no READY may name."""
from __future__ import annotations

from pathlib import Path

import pytest
from own_interpreter import run_script

from miyaq.errors import ConfigError
from miyaq.protocol.commands import MAX_READY_QUEUES
from miyaq.testing.harness import free_port
from miyaq.worker.config import WorkerConfig

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize("given, words", [
    (dict(concurrency=0), "concurrency must be 1..10,000 tasks per process, not 0"),
    (dict(processes=0), "processes must be 1..1,024, not 0"),
    (dict(processes=0, concurrency=0), "processes must be 1..1,024, not 0"),
])
def test_a_size_below_one_names_the_option_and_the_value(given, words):
    """Bad input: ``miyaq worker tasks:app --concurrency 0`` (or
    ``MIYAQ_PROCESSES=0``) said "processes and concurrency must be at least
    1": which of the two, and what was given, was for the user to guess.
    Now it names the option, its range and the value, as a size above the
    range always did."""
    with pytest.raises(ConfigError) as err:
        WorkerConfig(**given)
    assert err.value.message == words


def test_the_range_s_ends_are_taken():
    assert WorkerConfig(processes=1, concurrency=1).slots == 1
    assert WorkerConfig(concurrency=10_000).slots == 10_000


APP = """import miyaq
app = miyaq.App({endpoint!r})
{tasks}
"""


def run_worker(tmp_path: Path, tasks: str, *argv: str) -> tuple[int, str]:
    """``miyaq worker qapp:app *argv`` in ``tmp_path``, its app connecting to
    a port nothing listens on: its exit status and stderr."""
    (tmp_path / "qapp.py").write_text(APP.format(endpoint=f"tcp://127.0.0.1:{free_port()}", tasks=tasks))
    code, _, stderr = run_script(
        "import os, runpy, sys\n"
        "os.chdir(sys.argv[1])\n"
        "sys.argv = ['miyaq', 'worker', 'qapp:app', *sys.argv[2:]]\n"
        "runpy.run_module('miyaq', run_name='__main__')\n",
        str(tmp_path), *argv, timeout=30, hung="miyaq worker started with queues no node accepts")
    return code, stderr


@pytest.mark.parametrize("queues, words", [
    ("bad queue", "--queues: 'bad queue' is not a queue name (1-128 characters of A-Z a-z 0-9 _ . : -)"),
    ("default,a/b", "--queues: 'a/b' is not a queue name"),
    (",".join(f"q{i}" for i in range(MAX_READY_QUEUES + 1)),
     f"--queues names {MAX_READY_QUEUES + 1} queues; a worker takes tasks from at most {MAX_READY_QUEUES}"),
])
def test_queues_no_node_accepts_are_refused_at_start(tmp_path, queues, words):
    """Bad input: ``miyaq worker tasks:app -Q 'bad queue'`` (or 65 queues)
    started, then said READY every second for ever, each refused
    ``invalid_field`` by the node (a WARNING and "registering again" a
    second). Now it exits 2 at start with one line naming the queue."""
    code, stderr = run_worker(tmp_path, "", "--queues", queues)
    assert code == 2, stderr
    assert "Traceback" not in stderr
    assert stderr.strip().splitlines()[-1].startswith(f"miyaq: error: {words}"), stderr


@pytest.mark.parametrize("queues, words", [
    ("bad queue", "MIYAQ_QUEUES: 'bad queue' is not a queue name (1-128 characters of A-Z a-z 0-9 _ . : -)"),
    (",".join(f"q{i}" for i in range(MAX_READY_QUEUES + 1)),
     f"MIYAQ_QUEUES names {MAX_READY_QUEUES + 1} queues; a worker takes tasks from at most {MAX_READY_QUEUES}"),
])
def test_queues_from_the_environment_name_the_variable(tmp_path, monkeypatch, queues, words):
    """Mistake: ``MIYAQ_QUEUES='bad queue' miyaq worker tasks:app``, no
    ``--queues`` given. The error said "--queues: 'bad queue' ...": the
    check ran in the re-executed worker process, which has every setting
    from the environment and cannot tell a flag from a variable, so the
    user looked for a flag never given. Now the check is the settings' own
    (made where the source is known) and names the variable."""
    monkeypatch.setenv("MIYAQ_QUEUES", queues)
    code, stderr = run_worker(tmp_path, "")
    assert code == 2, stderr
    assert "Traceback" not in stderr
    assert stderr.strip().splitlines()[-1] == f"miyaq: error: {words}", stderr


@pytest.mark.parametrize("args, environ, words", [
    ({}, {"MIYAQ_QUEUES": "a/b"}, "MIYAQ_QUEUES: 'a/b' is not a queue name"),
    ({"queues": "a/b"}, {"MIYAQ_QUEUES": "default"}, "--queues: 'a/b' is not a queue name"),
    ({"queues": "a/b"}, {"MIYAQ_QUEUES": "c/d"}, "--queues: 'a/b' is not a queue name"),
])
def test_a_bad_queue_name_names_where_it_came_from(args, environ, words):
    """The same as loaded: the flag when one was given (it wins over the
    variable), else the variable."""
    with pytest.raises(ConfigError) as err:
        WorkerConfig.load(args, environ)
    assert err.value.message.startswith(words + " (1-128 characters"), err.value.message
    assert "from MIYAQ_QUEUES" not in err.value.message


def test_a_bad_queue_name_given_in_python_names_the_setting():
    """``Worker(app, queues=['a b'])`` or ``WorkerConfig(queues=...)``: no
    flag nor variable was given, so neither is named."""
    with pytest.raises(ConfigError) as err:
        WorkerConfig(queues="default,a b")
    assert err.value.message == "queues: 'a b' is not a queue name (1-128 characters of A-Z a-z 0-9 _ . : -)"


def test_an_app_whose_tasks_name_too_many_queues_says_to_choose_some(tmp_path):
    """Bad input: an app whose tasks name 65 queues, run without
    ``--queues``: the same endless refused READY. Now one line saying so."""
    tasks = "\n".join(f"app.task(name='t{i}', queue='q{i}')(lambda: None)" for i in range(MAX_READY_QUEUES + 1))
    code, stderr = run_worker(tmp_path, tasks)
    assert code == 2, stderr
    assert stderr.strip().splitlines()[-1] == (
        f"miyaq: error: the app's tasks name {MAX_READY_QUEUES + 1} queues; a worker takes tasks from at most "
        f"{MAX_READY_QUEUES}: choose some with --queues"), stderr
