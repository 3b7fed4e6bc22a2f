"""``./scripts/node``: the README's one command that installs miyaq into the
checkout's ``.venv`` (the first time) and runs a standalone node.

The suite runs from that ``.venv``, so here the script finds miyaq installed
and goes straight to ``miyaq node``: what is checked is that the one command
serves, passes its arguments on, and stops cleanly on SIGTERM."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import miyaq
from miyaq.testing.harness import free_port, wait_for

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "node"

# Run elsewhere than from ./scripts/test, the script first installs miyaq
# into the checkout's .venv: allow for it.
pytestmark = pytest.mark.timeout(240)


def test_one_command_runs_a_standalone_node_that_takes_tasks(tmp_path):
    """The quickstart's node: serves on the given port, takes a task, and
    exits 0 on SIGTERM."""
    port = free_port()
    proc = subprocess.Popen([str(SCRIPT), "--port", str(port), "--http-port", "0"], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True)
    reader.start()
    try:
        wait_for(lambda: any("serving on tcp://" in line for line in lines) or proc.poll() is not None,
                 timeout=180, what="the node's ready line")
        assert proc.poll() is None, "".join(lines)
        endpoint = f"tcp://127.0.0.1:{port}"
        with miyaq.Client([endpoint]) as client:
            client.submit("scripts.node.check", [1], queue="q", wait=True)
            assert client.status()["totals"]["live"] == 1
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, "".join(lines)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        reader.join(5)


def test_arguments_reach_miyaq_node_and_a_bad_one_is_a_clear_error(tmp_path):
    """Bad input: an option `miyaq node` does not know is its usage error, exit 2."""
    proc = subprocess.run([str(SCRIPT), "--no-such-option"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=180, env=dict(os.environ, PYTHON=sys.executable))
    assert proc.returncode == 2
    assert proc.stderr.startswith("usage: miyaq node ")       # its usage, not the top level's
    assert "miyaq node: error: unrecognized arguments: --no-such-option" in proc.stderr
