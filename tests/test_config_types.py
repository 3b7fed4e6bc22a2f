"""A TOML config file gives each setting a value of the setting's type, or
the node does not start (docs/configuration.md, "Where a setting comes
from"): a text setting takes a TOML string -- and a comma-separated list
(``bind``, ``webhook_allow_hosts``, ``zk``) also an array of strings --, a
boolean setting a TOML boolean, an integer setting a TOML integer, a number
an integer or a float. Before, ``str()`` of any other value was taken: the
admin token of ``http_token = true`` was ``True``."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from miyaq.config import NodeConfig
from miyaq.errors import ConfigError
from miyaq.gateway.allowlist import AllowList

MIYAQ = [sys.executable, "-m", "miyaq.cli.main"]
SUBPROCESS_GUARD = 60       # seconds; against a hang, not a timing assertion


def load(tmp_path: Path, text: str) -> NodeConfig:
    path = tmp_path / "node.toml"
    path.write_text(text)
    return NodeConfig.load({"config": str(path)}, {})


@pytest.mark.parametrize("line,given,expected", [
    ("http_token = true", "a TOML boolean", "a string"),
    ("http_token = 1234567890123456789", "a TOML integer", "a string"),
    ("node_id = 7", "a TOML integer", "a string"),
    ('queue_limits = {emails = "rate=5"}', "a TOML table", "a string"),
    ('http_tokens = ["/etc/miyaq/tokens"]', "a TOML array of string values", "a string"),
    ("cluster = 2026-12-05", "a TOML date", "a string"),
    ('zk = ["zk1:2181", 2182]', "a TOML array of integer and string values", "a string or an array of strings"),
    ("webhook_allow_hosts = true", "a TOML boolean", "a string or an array of strings"),
    ('auto_join = "false"', "a TOML string", "a boolean (true or false)"),
    ("auto_join = 0", "a TOML integer", "a boolean (true or false)"),
    ('insecure = "yes"', "a TOML string", "a boolean (true or false)"),
    ('max_tasks = "5000"', "a TOML string", "an integer"),
    ("max_tasks = 5000.0", "a TOML float", "an integer"),
    ('heartbeat = "1.0"', "a TOML string", "a number"),
])
def test_a_toml_value_of_another_type_is_refused_naming_both_types(tmp_path, line, given, expected):
    """Fault: a TOML value of the wrong type for a text or boolean setting
    (``http_token = true``, a table for ``queue_limits``, ``auto_join =
    "false"``...) was turned into text or parsed from it: the admin token
    became the word ``True``. Now: ConfigError naming the setting, the type
    given and the type expected."""
    with pytest.raises(ConfigError) as info:
        load(tmp_path, line + "\n")
    name = line.split()[0]
    assert info.value.message == f"setting {name} expects {expected} in the config file, got {given}"


def test_the_refusal_does_not_show_the_value(tmp_path):
    """The value of a mistyped secret is not printed (it goes to a log)."""
    with pytest.raises(ConfigError) as info:
        load(tmp_path, "http_token = 31415926535897932384\n")
    assert "31415926535897932384" not in info.value.message


def test_list_settings_take_a_toml_array_of_strings(tmp_path):
    """Fault: ``webhook_allow_hosts = ["hooks.internal", "*.example.com"]``
    became the text ``['hooks.internal', '*.example.com']``, which allowed
    no host at all. An array of strings is joined with commas, as the flag
    and the environment variable give the list."""
    config = load(tmp_path, 'webhook_allow_hosts = ["hooks.internal", "*.example.com"]\n'
                            'zk = ["zk1:2181", "zk2:2181"]\nbind = ["ipc:///run/a.sock", "ipc:///run/b.sock"]\n')
    assert config.webhook_allow_hosts == "hooks.internal,*.example.com"
    assert config.zk == "zk1:2181,zk2:2181"
    assert config.ipc_endpoints == ["ipc:///run/a.sock", "ipc:///run/b.sock"]
    allowed = AllowList(config.webhook_allow_hosts)
    assert allowed.allows("https://hooks.internal/x") and allowed.allows("https://a.example.com/x")
    assert not allowed.allows("https://elsewhere.example.org/x")
    assert load(tmp_path, "webhook_allow_hosts = []\n").webhook_allow_hosts == ""


def test_values_of_the_right_type_are_taken(tmp_path):
    """Strings, booleans, integers, and an integer for a number setting."""
    config = load(tmp_path, 'http_token = "0123456789abcdef0123"\nauto_join = false\nmax_tasks = 5000\n'
                            'heartbeat = 2\nqueue_limits = "emails:rate=5"\n')
    assert config.http_token == "0123456789abcdef0123" and config.auto_join is False
    assert config.max_tasks == 5000 and config.heartbeat == 2.0 and isinstance(config.heartbeat, float)
    assert config.queue_limits == "emails:rate=5"


def test_flags_and_the_environment_are_still_text(tmp_path):
    """Only the file is held to TOML's types: a flag or a variable is text,
    converted as before (``MIYAQ_AUTO_JOIN=false``)."""
    config = NodeConfig.load({"max_tasks": "7"}, {"MIYAQ_AUTO_JOIN": "false", "MIYAQ_HEARTBEAT": "0.5"})
    assert (config.max_tasks, config.auto_join, config.heartbeat) == (7, False, 0.5)


def test_miyaq_node_stops_with_status_2_on_a_mistyped_setting(tmp_path):
    """``miyaq node --config`` with ``http_token = true``: one line, exit
    status 2, nothing started (before: the node ran with the token True)."""
    path = tmp_path / "node.toml"
    path.write_text("http_token = true\n")
    done = subprocess.run([*MIYAQ, "node", "--config", str(path), "--http-port", "0"], capture_output=True,
                          text=True, timeout=SUBPROCESS_GUARD)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip() == ("miyaq: error: setting http_token expects a string in the config file, "
                                   "got a TOML boolean")
