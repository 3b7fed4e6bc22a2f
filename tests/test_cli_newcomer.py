"""Rough edges of the command line a newcomer hit (the newcomer audit of
2026-12-07): each test names the mistake and what the command said."""
from __future__ import annotations

import os
import subprocess
import sys

MIYAQ = [sys.executable, "-m", "miyaq.cli.main"]
GUARD = 60      # seconds; a hung command fails the test instead of blocking it


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
