"""How long ``miyaq ring`` (and ``join``, ``leave``, ``ring weight``) waits
for ZooKeeper: ``--zk-connect-timeout``, else ``MIYAQ_ZK_CONNECT_TIMEOUT``
(the node's and ``miyaq dev-cluster``'s option and variable), else 5 s or
``--timeout`` if shorter; and the error on a ZooKeeper nobody answers names
the hosts tried, the wait, and the option that lengthens it
(docs/cluster.md, "Operating the ring")."""
from __future__ import annotations

import argparse
import os
import subprocess
import sys

import pytest

from miyaq.errors import ConfigError
from miyaq.testing.harness import refusing_port


def run_miyaq(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MIYAQ_")}
    return subprocess.run([sys.executable, "-m", "miyaq.cli.main", *args], env={**clean, **(env or {})},
                          capture_output=True, text=True, timeout=60, check=False)


def test_the_wait_for_an_unreachable_zookeeper_follows_zk_connect_timeout_past_the_old_cap():
    """Fault: the ring commands waited their --timeout, at most 5 s of it:
    with --timeout 30 an operator could not wait longer for a ZooKeeper
    still starting, and the error did not say how to. Here
    --zk-connect-timeout 5.5 (above the old cap) is the wait, and the line
    names the hosts, the wait and the option."""
    with refusing_port() as port:
        hosts = f"127.0.0.1:{port}"
        out = run_miyaq("ring", "--zk", hosts, "--cluster", "x", "--timeout", "30", "--zk-connect-timeout", "5.5")
    assert out.returncode == 2, out.stderr
    assert f"cannot reach ZooKeeper at {hosts} within 5.5s" in out.stderr, out.stderr
    assert "--zk-connect-timeout" in out.stderr and "MIYAQ_ZK_CONNECT_TIMEOUT" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr and out.stdout == ""


def test_a_change_command_reads_the_variable_and_names_the_option():
    """``ring weight`` with MIYAQ_ZK_CONNECT_TIMEOUT (as a shell set up for
    the nodes has it): that is the wait, and the error names the option."""
    with refusing_port() as port:
        hosts = f"127.0.0.1:{port}"
        out = run_miyaq("ring", "--zk", hosts, "--cluster", "x", "weight", "n1", "2",
                        env={"MIYAQ_ZK_CONNECT_TIMEOUT": "0.4"})
    assert out.returncode == 2, out.stderr
    assert f"cannot set the weight of n1: cannot reach ZooKeeper at {hosts} within 0.4s" in out.stderr, out.stderr
    assert "--zk-connect-timeout" in out.stderr


@pytest.mark.parametrize("args, env", [
    (["--zk-connect-timeout", "0"], {}), (["--zk-connect-timeout", "nan"], {}),
    ([], {"MIYAQ_ZK_CONNECT_TIMEOUT": "0"}), ([], {"MIYAQ_ZK_CONNECT_TIMEOUT": "soon"}),
])
def test_a_wait_out_of_range_is_refused_naming_where_it_came_from(args, env):
    """Bad input: a wait of 0, NaN or not a number, on the command line or
    in the environment, is one line naming the option or the variable
    (exit 2), before anything is tried."""
    out = run_miyaq("ring", "--zk", "127.0.0.1:1", "--cluster", "x", *args, env=env)
    assert out.returncode == 2, out.stderr
    assert ("--zk-connect-timeout" if args else "MIYAQ_ZK_CONNECT_TIMEOUT") in out.stderr, out.stderr
    assert "cannot reach ZooKeeper" not in out.stderr and "Traceback" not in out.stderr


def test_the_wait_is_the_option_else_the_variable_else_five_seconds_or_timeout(monkeypatch):
    from miyaq.cli.ring_cmd import ZK_CONNECT_DEFAULT, zk_connect_timeout
    monkeypatch.delenv("MIYAQ_ZK_CONNECT_TIMEOUT", raising=False)
    assert zk_connect_timeout(argparse.Namespace(zk_connect_timeout=None), 15.0) == ZK_CONNECT_DEFAULT == 5.0
    assert zk_connect_timeout(argparse.Namespace(zk_connect_timeout=None), 1.0) == 1.0
    assert zk_connect_timeout(argparse.Namespace(), 15.0) == 5.0       # a nested parser's suppressed default
    monkeypatch.setenv("MIYAQ_ZK_CONNECT_TIMEOUT", "30")
    assert zk_connect_timeout(argparse.Namespace(zk_connect_timeout=None), 1.0) == 30.0
    assert zk_connect_timeout(argparse.Namespace(zk_connect_timeout=60.0), 1.0) == 60.0
    monkeypatch.setenv("MIYAQ_ZK_CONNECT_TIMEOUT", "3601")
    with pytest.raises(ConfigError, match="MIYAQ_ZK_CONNECT_TIMEOUT"):
        zk_connect_timeout(argparse.Namespace(zk_connect_timeout=None), 15.0)
