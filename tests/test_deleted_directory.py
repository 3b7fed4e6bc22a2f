"""A program run in a directory deleted under it (a deployment that removes
old releases while their processes run, or start): ``os.getcwd()`` raises
FileNotFoundError there. What looks in the current directory for a dev
cluster's state file (:func:`miyaq.devstate.read_state`, which a client, a
worker's app and every command ask when no endpoint, key or ZooKeeper was
given) finds none, as the function promises, instead of raising."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from own_interpreter import ROOT

pytestmark = pytest.mark.timeout(60)

IN_A_DELETED_DIRECTORY = '''
import os
try:
    os.getcwd()
except FileNotFoundError:
    print("cwd deleted")
from miyaq.devstate import read_state
print("state", read_state())
import miyaq
client = miyaq.Client("tcp://127.0.0.1:1")
client.close(flush=False)
print("client made")
'''


def _run_deleted(tmp_path: Path, command: list[str]) -> subprocess.CompletedProcess[str]:
    """``command`` run in a directory its shell deletes first, this checkout importable, no key given."""
    gone = tmp_path / "release"
    gone.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("MIYAQ_KEY", "MIYAQ_SERVER_KEY", "MIYAQ_CONNECT",
                                                               "MIYAQ_ZK")}
    env["PYTHONPATH"] = ROOT
    done = subprocess.run(["/bin/sh", "-c", 'rmdir "$PWD" && exec "$@"', "sh", *command], cwd=gone, env=env,
                          capture_output=True, text=True, timeout=50)
    assert not gone.exists()
    return done


def test_a_client_made_in_a_deleted_directory_is_made(tmp_path):
    """Fault: the process's directory was deleted (a worker's child started
    in a release directory since removed, whose handler submits a task; any
    program run there). ``miyaq.Client(endpoint)`` given no key looked for a
    ``--secure`` dev cluster's keys there and raised FileNotFoundError from
    ``os.getcwd()``: every handler submitting a task failed. No dev cluster
    is there, so none is used."""
    done = _run_deleted(tmp_path, [sys.executable, "-c", IN_A_DELETED_DIRECTORY])
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["cwd deleted", "state None", "client made"], done.stdout


def test_a_command_in_a_deleted_directory_ends_without_a_traceback(tmp_path):
    """``miyaq status`` in a deleted directory (no key given: it looks for a
    ``--secure`` dev cluster's there) ended with a FileNotFoundError
    traceback; it says, as anywhere else, that no node answered (nothing
    listens on port 1)."""
    done = _run_deleted(tmp_path, [sys.executable, "-m", "miyaq", "status", "--connect", "tcp://127.0.0.1:1"])
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode == 2 and done.stderr.startswith("miyaq: error: "), (done.returncode, done.stderr)
