"""A processes-pool child leaves SIGINT, SIGTERM and SIGHUP to its pool from
its first line of Python on, not only once its own module runs: a Ctrl-C
reaches the whole process group, children being started too (at the
worker's start, or replacing one stopped after a timeout, a crash or
``--max-tasks-per-child``)."""
from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import msgpack
import pytest
import zmq

from miyaq.testing.harness import wait_for
from miyaq.worker.pools.child import HELLO
from miyaq.worker.pools.child_process import child_command
from own_interpreter import ROOT

pytestmark = pytest.mark.timeout(60)

TESTS = str(Path(__file__).resolve().parent)

#: Holds the child's import of ``miyaq.worker.pools`` (what ``-m`` imports
#: before the child's module runs) until the test says go: the window a
#: Ctrl-C fell into, made as long as the test needs.
GATE = '''
import os, sys, time
class Gate:
    def find_spec(self, name, path=None, target=None):
        if name == "miyaq.worker.pools":
            sys.meta_path.remove(self)
            open(os.path.join(os.environ["GATE_DIR"], "importing"), "w").close()
            while not os.path.exists(os.path.join(os.environ["GATE_DIR"], "go")):
                time.sleep(0.01)
        return None
sys.meta_path.insert(0, Gate())
'''


def _pool_socket(ctx: zmq.Context) -> tuple[zmq.Socket, int]:
    """The pool's end a child connects to, and its port."""
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    return router, router.bind_to_random_port("tcp://127.0.0.1")


def _child(port: int) -> list[str]:
    """The command line of child ``c1`` of this process, for ``apps.basic:app``."""
    return child_command(f"tcp://127.0.0.1:{port}", b"c1", "apps.basic:app", os.getpid(), "WARNING")


def _env_with(tmp_path: Path) -> dict[str, str]:
    """The environment, ``tmp_path`` (its sitecustomize) first on the path."""
    return {**os.environ, "GATE_DIR": str(tmp_path),
            "PYTHONPATH": os.pathsep.join([str(tmp_path), ROOT, TESTS, os.environ.get("PYTHONPATH", "")])}


def test_a_child_signalled_while_it_imports_the_pool_goes_on_and_says_hello(tmp_path, ctx):
    """Fault: Ctrl-C just as the pool started a child. The child, started
    as ``python -m miyaq.worker.pools.child``, disregarded the signals only
    in its ``main()``, after importing the package (asyncio, msgpack,
    pyzmq: a few hundred ms): a SIGINT then printed a ``KeyboardInterrupt``
    traceback into the worker's terminal from a child that died, a SIGTERM
    or SIGHUP killed it silently. Now the child disregards them first, goes
    on, and says HELLO."""
    (tmp_path / "sitecustomize.py").write_text(GATE)
    router, port = _pool_socket(ctx)
    env = _env_with(tmp_path)
    command = _child(port)
    child = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
    hello: list[bytes] = []
    try:
        wait_for(lambda: (tmp_path / "importing").exists() or child.poll() is not None, what="the gated import")
        if child.poll() is None:
            for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                child.send_signal(signum)
            (tmp_path / "go").touch()
            wait_for(lambda: router.poll(100) or child.poll() is not None, what="the child's HELLO, or its end")
            if router.poll(0):
                hello = router.recv_multipart()
        ended = child.poll()
    finally:
        child.kill()
        _, stderr = child.communicate()
        router.close()
    assert ended is None, f"the child ended ({ended}): {stderr}"
    assert hello[:2] == [b"c1", HELLO] and msgpack.unpackb(hello[2])["pid"] == child.pid
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr


#: Writes the child's ``sys.path[0]`` as its module is about to be imported.
PATH_PROBE = '''
import os, sys
class Probe:
    def find_spec(self, name, path=None, target=None):
        if name == "miyaq.worker.pools":
            sys.meta_path.remove(self)
            with open(os.path.join(os.environ["GATE_DIR"], "path0"), "w") as out:
                out.write(repr(sys.path[0]))
        return None
sys.meta_path.insert(0, Probe())
'''


def test_a_childs_first_import_path_is_the_directory_it_started_in(tmp_path, ctx):
    """Fault: started with ``-c`` rather than ``-m``, a child's
    ``sys.path[0]`` was ``''`` -- the directory *of the moment* -- not the
    absolute one it started in: a handler that changed directory then
    failed to import the app's own modules lazily. It is the absolute
    directory, as ``-m`` made it."""
    (tmp_path / "sitecustomize.py").write_text(PATH_PROBE)
    router, port = _pool_socket(ctx)
    env = _env_with(tmp_path)
    command = _child(port)
    child = subprocess.Popen(command, env=env, cwd=str(tmp_path), stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: (tmp_path / "path0").exists() or child.poll() is not None, what="the child's import")
    finally:
        child.kill()
        child.communicate()
        router.close()
    assert (tmp_path / "path0").read_text() == repr(str(tmp_path))


def _hello_from(command: list[str], env: dict[str, str], cwd: str, ctx: zmq.Context, port_socket: zmq.Socket
                ) -> tuple[list[bytes], int | None, str]:
    """Start ``command``; its HELLO (empty if none came before it ended),
    its exit status if it ended, its stderr."""
    child = subprocess.Popen(command, env=env, cwd=cwd, stderr=subprocess.PIPE, text=True)
    hello: list[bytes] = []
    try:
        wait_for(lambda: port_socket.poll(100) or child.poll() is not None, what="the child's HELLO, or its end")
        if port_socket.poll(0):
            hello = port_socket.recv_multipart()
        ended = child.poll()
    finally:
        child.kill()
        _, stderr = child.communicate()
    return hello, ended, stderr


def test_a_child_started_in_a_directory_since_deleted_says_hello(tmp_path, ctx):
    """Fault: the worker's directory was deleted under it (a deployment
    that removes old releases while their worker runs). A child started
    then -- at a pool's start, or replacing one after a timeout -- made its
    ``sys.path[0]`` with ``os.getcwd()``, which raises FileNotFoundError:
    every child died at its first line, and the pool never ran a task.
    ``python -m`` put nothing first then, and so does the child now."""
    router, port = _pool_socket(ctx)
    gone = tmp_path / "release"
    gone.mkdir()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, TESTS, os.environ.get("PYTHONPATH", "")])}
    command = _child(port)
    # the shell leaves its directory deleted under it, then becomes the child
    wrapped = ["/bin/sh", "-c", 'rmdir "$PWD" && exec "$@"', "sh", *command]
    try:
        hello, ended, stderr = _hello_from(wrapped, env, str(gone), ctx, router)
    finally:
        router.close()
    assert not gone.exists()
    assert ended is None, f"the child ended ({ended}): {stderr}"
    assert hello[:2] == [b"c1", HELLO], stderr


def test_a_child_under_pythonsafepath_keeps_the_first_pythonpath_entry(tmp_path, ctx):
    """Fault: with PYTHONSAFEPATH (or ``-P``) Python puts no directory first
    on ``sys.path``, so its first entry is PYTHONPATH's first. The child
    overwrote that entry with its directory: an app found there alone
    (here ``apps.basic``, in the tests' directory) could not be imported,
    and every child died before its HELLO; the directory PYTHONSAFEPATH
    keeps off the path was put on it. ``sys.path`` is left as it is."""
    router, port = _pool_socket(ctx)
    env = {**os.environ, "PYTHONSAFEPATH": "1",
           "PYTHONPATH": os.pathsep.join([TESTS, ROOT, os.environ.get("PYTHONPATH", "")])}
    command = _child(port)
    try:
        hello, ended, stderr = _hello_from(command, env, str(tmp_path), ctx, router)
    finally:
        router.close()
    assert ended is None, f"the child ended ({ended}): {stderr}"
    assert hello[:2] == [b"c1", HELLO], stderr


#: Run under ``python -I``: this checkout put on the path by hand (``-I``
#: reads no PYTHONPATH), then each command a worker starts Python with --
#: a pool's child, a worker process -- run with its interpreter and options
#: but this probe for its code: whether it can import ``shadow``, a module
#: only PYTHONPATH's directory has, and its ``sys.flags.isolated``.
ISOLATED_WORKER = '''
import json, subprocess, sys
sys.path.insert(0, sys.argv[1])
from miyaq.worker.launch import worker_command
from miyaq.worker.pools.child_process import child_command
probe = "import importlib.util, sys; print(importlib.util.find_spec('shadow') is not None, sys.flags.isolated)"
seen = {}
for name, command in (("child", child_command("tcp://127.0.0.1:1", b"c1", "apps.basic:app", 1, "WARNING")),
                      ("worker", worker_command("apps.basic:app"))):
    interpreter = command[:command.index("-m" if name == "worker" else "-c")]
    seen[name] = subprocess.run([*interpreter, "-c", probe], capture_output=True, text=True,
                                timeout=30).stdout.split()
seen["self"] = [str(__import__("importlib.util").util.find_spec("shadow") is not None), str(sys.flags.isolated)]
print(json.dumps(seen))
'''


def test_a_worker_under_python_I_starts_its_processes_isolated_too(tmp_path):
    """Fault: a worker run as ``python -I -m miyaq worker`` (or ``-E``,
    ``-s``: the environment's PYTHONPATH and the user's site-packages
    disregarded) started its processes -- the gevent pool's re-exec,
    ``--processes N``, each processes-pool child -- as bare ``python``:
    they read PYTHONPATH, and imported what the worker did not (here
    ``shadow``: another miyaq, another version of the app). They are
    started with the worker's interpreter options, as multiprocessing
    starts its children."""
    import json
    import sys
    (tmp_path / "shadow.py").write_text("")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    done = subprocess.run([sys.executable, "-I", "-c", ISOLATED_WORKER, ROOT], capture_output=True, text=True,
                          env=env, timeout=50)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert seen["self"] == ["False", "1"]
    assert seen == {"self": ["False", "1"], "child": ["False", "1"], "worker": ["False", "1"]}
