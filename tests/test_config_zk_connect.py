"""``zk_connect_timeout``: how long a node waits at start for a ZooKeeper
server of ``--zk`` to answer (docs/configuration.md, "Cluster"). Before
2026-12-06 it was a fixed 10 s: a typo in ``--zk`` held the start 10 s,
and a node started beside a ZooKeeper still starting could not wait longer.
It is a setting from each layer, checked to 0.1..3600 seconds."""
from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from miyaq.cli.dev_cluster_cmd import _zk_connect_timeout
from miyaq.config import MAX_ZK_CONNECT_TIMEOUT, MIN_ZK_CONNECT_TIMEOUT, NodeConfig, check_zk_connect_timeout
from miyaq.errors import ConfigError


def load(source: str, raw: str, tmp_path: Path) -> NodeConfig:
    """A NodeConfig with ``zk_connect_timeout`` given as ``raw`` by ``source``."""
    if source == "env":
        return NodeConfig.load({}, {"MIYAQ_ZK_CONNECT_TIMEOUT": raw})
    if source == "flag":
        return NodeConfig.load({"zk_connect_timeout": raw}, {})
    path = tmp_path / "node.toml"
    path.write_text(f"zk_connect_timeout = {raw}\n")
    return NodeConfig.load({"config": str(path)}, {})


def test_the_default_is_10_seconds():
    assert NodeConfig.load({}, {}).zk_connect_timeout == 10.0


@pytest.mark.parametrize("source,raw", [("flag", "2"), ("env", "2.5"), ("file", "2"), ("file", "0.1"),
                                        ("env", "3600")])
def test_a_value_in_range_is_taken_from_each_layer(tmp_path, source, raw):
    assert load(source, raw, tmp_path).zk_connect_timeout == float(raw)


@pytest.mark.parametrize("source,raw", [
    ("flag", "0"), ("env", "-1"), ("file", "0.0"), ("flag", "0.05"),     # no wait at all, or none a server answers in
    ("flag", "nan"), ("env", "inf"), ("file", "inf"),                    # never compared, never ends
    ("env", "3601"), ("file", "1e9"),                                    # an absurd wait
    ("env", "ten"), ("file", "true"), ("file", '"10"'),                  # not a number
])
def test_a_bad_value_is_refused_naming_the_setting(tmp_path, source, raw):
    """Fault: --zk-connect-timeout 0 (or NaN, or a year) would fail every start
    at once, or hold a start with a typo in --zk without end."""
    with pytest.raises(ConfigError) as info:
        load(source, raw, tmp_path)
    assert "zk_connect_timeout" in info.value.message


@pytest.mark.parametrize("value", [0, -1.0, 0.099, float("nan"), float("inf"), 3600.5, True, "10"])
def test_the_check_refuses_outside_the_bounds_and_says_them(value):
    with pytest.raises(ConfigError) as info:
        check_zk_connect_timeout(value)       # type: ignore[arg-type]
    assert f"{MIN_ZK_CONNECT_TIMEOUT:g}..{MAX_ZK_CONNECT_TIMEOUT:g} seconds" in info.value.message


def test_the_check_gives_a_value_in_range_as_a_float():
    assert check_zk_connect_timeout(2) == 2.0 and isinstance(check_zk_connect_timeout(2), float)


@pytest.mark.parametrize("flag,env,expected", [(None, None, 10.0), (None, "2", 2.0), (3.0, "2", 3.0)])
def test_the_dev_cluster_takes_the_flag_then_the_environment_as_its_nodes_do(monkeypatch, flag, env, expected):
    """``miyaq dev-cluster`` hands its nodes one value as their flag and waits
    for the ring as long: theirs would come from this environment anyway."""
    if env is None:
        monkeypatch.delenv("MIYAQ_ZK_CONNECT_TIMEOUT", raising=False)
    else:
        monkeypatch.setenv("MIYAQ_ZK_CONNECT_TIMEOUT", env)
    assert _zk_connect_timeout(argparse.Namespace(zk_connect_timeout=flag)) == expected


@pytest.mark.parametrize("env", ["ten", "0", "nan"])
def test_the_dev_cluster_refuses_a_bad_value_in_the_environment(monkeypatch, env):
    monkeypatch.setenv("MIYAQ_ZK_CONNECT_TIMEOUT", env)
    with pytest.raises(ConfigError, match="ZK_CONNECT_TIMEOUT"):
        _zk_connect_timeout(argparse.Namespace(zk_connect_timeout=None))
