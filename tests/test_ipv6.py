"""IPv6: endpoints written and read, and a node, a worker, a client, the
HTTP gateway and a two-node ring over ``::1``.

The end-to-end scenarios (tests/ipv6_scenarios.py) run in a network
namespace of their own (``unshare --net``, loopback brought up), so their
traffic never leaves it; that needs root, which CI has.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from miyaq.config import NodeConfig
from miyaq.errors import ConfigError
from miyaq.gateway.allowlist import AllowList
from miyaq.gateway.wsgi import client_group
from ipv6_scenarios import V6ONLY
from miyaq.runtime.endpoints import is_ipv6_address, names_version, split_tcp, tcp_endpoint, url_host, wants_ipv6

TESTS = Path(__file__).resolve().parent


# -- endpoints -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("host, endpoint", [
    ("127.0.0.1", "tcp://127.0.0.1:7450"),
    ("node1.example.com", "tcp://node1.example.com:7450"),
    ("::1", "tcp://[::1]:7450"),
    ("[::1]", "tcp://[::1]:7450"),
    ("2001:db8::7", "tcp://[2001:db8::7]:7450"),
    ("fe80::1%eth0", "tcp://[fe80::1%eth0]:7450"),
    ("::", "tcp://[::]:7450"),
])
def test_an_endpoint_is_written_and_read_back(host, endpoint):
    assert tcp_endpoint(host, 7450) == endpoint
    assert split_tcp(endpoint) == (host.strip("[]"), 7450)


@pytest.mark.parametrize("endpoint", [
    "tcp://::1:7450",                # an IPv6 address must be bracketed
    "tcp://[::1:7450",               # unbalanced
    "tcp://[not-an-address]:7450",
    "tcp://[::1]",                   # no port
    "tcp://:7450",
    "tcp://[::1]:http",
    "ipc:///run/miyaq.sock",
    "udp://127.0.0.1:7450",
])
def test_what_is_not_a_tcp_endpoint_reads_as_none(endpoint):
    assert split_tcp(endpoint) is None
    assert not wants_ipv6(endpoint)


def test_only_an_ipv6_address_turns_ipv6_on():
    """A name stays on IPv4: with IPv6 on, libzmq would dial a name's IPv6
    address first, and ``localhost`` would miss a node bound to 127.0.0.1."""
    assert wants_ipv6("tcp://[::1]:7450") and wants_ipv6("tcp://[::]:7450")
    assert not wants_ipv6("tcp://localhost:7450")
    assert not wants_ipv6("tcp://127.0.0.1:7450") and not wants_ipv6("tcp://*:7450")
    assert is_ipv6_address("[2001:db8::1]") and not is_ipv6_address("localhost")
    assert url_host("2001:db8::1") == "[2001:db8::1]" and url_host("10.0.0.1") == "10.0.0.1"


# -- configuration -------------------------------------------------------------------------------------

def test_a_node_advertises_its_ipv6_address_bracketed():
    config = NodeConfig(host="::", advertise="[2001:db8::5]", port=7450, http_port=8088, insecure=True)
    assert config.advertise == "2001:db8::5"
    assert config.endpoint(7451) == "tcp://[2001:db8::5]:7451"
    assert config.bind_endpoint(7450) == "tcp://[::]:7450"
    assert config.http_url == "http://[2001:db8::5]:8088"


@pytest.mark.parametrize("option, value", [
    ("advertise", "node1:7450"), ("advertise", "tcp://node1"), ("host", "[::1]:7450"), ("host", "::1:x:y"),
    ("http_host", "127.0.0.1:8088"), ("advertise", "a b"),
])
def test_a_host_option_with_a_port_or_scheme_is_refused(option, value):
    with pytest.raises(ConfigError, match=f"{option} takes a host name or address, IPv4 or IPv6"):
        NodeConfig(**{option: value})


def test_an_ipv6_client_is_counted_by_its_slash_64():
    """A host is usually given a whole /64: counted by address, it could open
    http_max_client_connections from each of 2**64 addresses."""
    assert client_group("2001:db8:1:2::10") == client_group("2001:db8:1:2:ffff::1") == "2001:db8:1:2::/64"
    assert client_group("2001:db8:1:3::10") != client_group("2001:db8:1:2::10")
    assert client_group("::ffff:192.0.2.7") == "192.0.2.7"     # an IPv4 client of a gateway bound to ::
    assert client_group("::1") == "::1" and client_group("192.0.2.7") == "192.0.2.7"


# -- end to end, in a namespace of their own ------------------------------------------------------------

def run_scenario(name: str, hosts: Path | None = None) -> dict:
    """Run scenario ``name`` in a network namespace of its own; with
    ``hosts``, in a mount namespace too, where that file is /etc/hosts."""
    if os.geteuid() != 0:
        pytest.skip("needs root for a private network namespace (unshare --net); CI runs as root")
    env = {k: v for k, v in os.environ.items() if k != "MIYAQ_IP_VERSION"}
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS.parent), str(TESTS)])
    command = f"ip link set lo up && exec {sys.executable} {TESTS / 'ipv6_scenarios.py'} {name}"
    isolate = ["unshare", "--net"]
    if hosts is not None:
        isolate.append("--mount")
        command = f"mount --bind {hosts} /etc/hosts && {command}"
    proc = subprocess.run([*isolate, "sh", "-c", command], capture_output=True, text=True, timeout=100, env=env)
    assert proc.returncode == 0, f"scenario {name} failed:\n{proc.stderr[-4000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.timeout(120)
def test_a_node_on_ipv6_loopback_serves_workers_clients_http_and_the_cli():
    seen = run_scenario("standalone")
    assert seen["endpoint"].startswith("tcp://[::1]:")
    assert seen["call"] == 5
    assert seen["http_submit"] == 202 and seen["http_result"] == [200, 9]
    assert seen["cli_status"] == 0 and "accepting True" in seen["cli_said"]
    assert seen["webhook_enqueued"] == 200
    assert seen["webhook"]["host"].startswith("[::1]:") and seen["webhook"]["path"] == "/hook"
    assert json.loads(seen["webhook"]["body"]) == {"a": 1}
    # Fault: an IPv6 endpoint nothing routes to (the namespace has only loopback).
    assert seen["unroutable"] == "2001:db8::7 is unreachable from here (Network is unreachable)"
    # Fault: an IPv6 port nothing listens on.
    assert seen["refused"] == "nothing is listening there"


@pytest.mark.timeout(120)
def test_a_node_bound_to_both_stacks_serves_ipv4_and_ipv6_clients():
    seen = run_scenario("dual_stack")
    assert sorted(seen.values()) == [2, 2] and len(seen) == 2


@pytest.mark.timeout(120)
def test_a_ring_on_ipv6_replicates_and_streams_between_its_nodes():
    seen = run_scenario("cluster")
    assert all(peer.startswith("tcp://[::1]:") for peer in seen["ring"])
    assert seen["results"] == [2 * i for i in range(20)]
    assert len(seen["dialled"]) == 2 and all(e.startswith("tcp://[::1]:") for e in seen["dialled"])
    assert seen["dialled_up"] is True      # the node the client learned of, asked at its IPv6 endpoint
    assert seen["both_done"] is True


@pytest.mark.timeout(120)
def test_nodes_join_a_zookeeper_on_ipv6_and_register_their_ipv6_endpoints():
    """A real ZooKeeper on ``::1``, reached as ``[::1]:PORT`` (kazoo's form),
    by the nodes and by ``miyaq ring``."""
    seen = run_scenario("zookeeper")
    assert seen["zk"].startswith("[::1]:")
    assert len(seen["services"]) == 2 and all(s.startswith("tcp://[::1]:") for s in seen["services"])
    assert seen["results"] == list(range(1, 11)) and seen["both_done"] is True
    assert seen["cli_ring"] == 0
    members = seen["ring_said"]["members"].values()
    assert all(m["in_ring"] and m["peer"].startswith("tcp://[::1]:") for m in members) and len(members) == 2


def test_a_webhook_allow_list_names_ipv6_hosts_as_urls_do():
    """``webhook_allow_hosts`` entries for an IPv6 host, with and without a
    port, match the URLs that name it (``http://[2001:db8::1]:8443/hook``)."""
    allow = AllowList("[2001:db8::1]:8443, 2001:db8::2, [2001:db8::3], hooks.example.com:443")
    assert allow.allows("http://[2001:db8::1]:8443/hook")
    assert not allow.allows("http://[2001:db8::1]:9000/hook")         # another port
    assert allow.allows("https://[2001:db8::2]/x") and allow.allows("http://[2001:db8::3]:81/x")
    assert not allow.allows("http://[2001:db8::4]/x")
    assert allow.allows("https://hooks.example.com/x") and not allow.allows("http://hooks.example.com/x")


def test_names_version_reads_miyaq_ip_version():
    assert wants_ipv6("tcp://node1:7450", environ={}) is False
    assert wants_ipv6("tcp://node1:7450", environ={"MIYAQ_IP_VERSION": "6"}) is True
    assert wants_ipv6("tcp://10.0.0.1:7450", environ={"MIYAQ_IP_VERSION": "6"}) is False   # an IPv4 address
    assert wants_ipv6("tcp://*:7450", environ={"MIYAQ_IP_VERSION": "6"}) is False
    assert names_version({"MIYAQ_IP_VERSION": " "}) == "4"
    with pytest.raises(ConfigError, match="MIYAQ_IP_VERSION must be 4 or 6"):
        names_version({"MIYAQ_IP_VERSION": "ipv6"})


@pytest.mark.timeout(120)
def test_a_host_name_is_reached_over_the_ip_version_miyaq_ip_version_says(tmp_path):
    """``MIYAQ_IP_VERSION=6``: a name is dialled at its IPv6 address, and at
    its IPv4 one when it has none; the default 4 dials its IPv4 address."""
    hosts = tmp_path / "hosts"
    hosts.write_text(f"127.0.0.1 localhost\n{V6ONLY} v6only.miyaq.test\n127.0.0.1 v4only.miyaq.test\n")
    seen = run_scenario("names", hosts)
    assert seen["v6only over 4"] == "Unavailable"      # a name with only an IPv6 address, over IPv4
    assert seen["v6only over 6"] is True
    assert seen["v4only over 4"] is True and seen["v4only over 6"] is True
    assert "MIYAQ_IP_VERSION must be 4 or 6" in seen["bad version"]
    # The first-contact explanation dials as libzmq does: over 4, the name has no address to dial.
    assert seen["v6only explained over 4"] == ("the host name 'v6only.miyaq.test' has no IPv4 address (names are "
                                               "reached over IPv4 unless MIYAQ_IP_VERSION=6)")
    assert "accepts connections but no miyaq node answered" in seen["v6only explained over 6"]


def test_a_bad_ip_version_stops_a_process_part_when_it_makes_its_sockets(monkeypatch):
    """Fault: ``MIYAQ_IP_VERSION=ipv6`` in a node bound to an address. The
    value is read only for host names, so it would first be read when the
    ring named a member by name -- in the running node's stream reader. The
    socket factory every part starts with refuses it at once."""
    from miyaq.runtime.sockets import SocketFactory
    monkeypatch.setenv("MIYAQ_IP_VERSION", "ipv6")
    with pytest.raises(ConfigError, match="MIYAQ_IP_VERSION must be 4 or 6"):
        SocketFactory(green=False)
