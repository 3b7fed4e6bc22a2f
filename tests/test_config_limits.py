"""Settings that would start a node of no use, or one that acknowledges
tasks it cannot keep, are refused at start (docs/configuration.md, "Where
a setting comes from"): ``replicas`` and the other defaults a task takes
within what a task may say itself, the capacities that mean nothing at 0,
``max_message`` with room for a task of ``max_payload``, and an
``http_token`` held to the rule of the tokens file."""
from __future__ import annotations

import subprocess
import sys

import pytest

from miyaq.client.client import Client
from miyaq.client.sizes import TASK_FIELDS_ROOM
from miyaq.config import MAX_HTTP_TOKEN, MAX_REPLICAS, MESSAGE_ROOM, MIN_HTTP_TOKEN, YEAR, NodeConfig
from miyaq.errors import ConfigError, InvalidField
from miyaq.gateway import tokens
from miyaq.protocol import fields as f
from miyaq.protocol import recordspec, taskspec
from miyaq.testing.harness import ThreadNode
from miyaq.worker.config import RESULT_MESSAGE_SLACK

MIYAQ = [sys.executable, "-m", "miyaq.cli.main"]
SUBPROCESS_GUARD = 60       # seconds; against a hang, not a timing assertion


def refused(**settings: object) -> str:
    with pytest.raises(ConfigError) as info:
        NodeConfig(**settings)
    return info.value.message


# -- replicas and the other defaults of a task ----------------------------------------


@pytest.mark.parametrize("replicas", [0, MAX_REPLICAS + 1, 1000])
def test_replicas_outside_1_to_16_is_refused(replicas):
    """Fault: ``--replicas 17`` started the node, which acknowledged tasks
    with 17 holders and refused their records at its next start (``field
    'replicas' must be between 1 and 16``): acknowledged tasks lost."""
    assert refused(replicas=replicas) == f"replicas must be 1..16 (holders of a task), not {replicas}"


@pytest.mark.parametrize("settings,named", [
    ({"default_timeout": 0.0}, "default_timeout must be 0.01..31536000 seconds"),
    ({"default_timeout": YEAR + 1}, "default_timeout must be 0.01..31536000 seconds"),
    ({"default_max_retries": 10_001}, "default_max_retries must be 0..10,000"),
    ({"default_backoff": YEAR * 2}, "default_backoff must be 0..31536000 seconds"),
    ({"default_backoff_max": YEAR * 2}, "default_backoff_max must be 0..31536000 seconds"),
])
def test_task_defaults_a_task_could_not_say_itself_are_refused(settings, named):
    """Fault: ``--default-timeout 0`` (or a retry count, a backoff beyond
    what a task may give) started the node, whose tasks then took a value
    their records' own check refuses when the log is replayed."""
    assert refused(**settings).startswith(named)


def test_the_bounds_are_those_of_the_task_checks():
    """The settings' bounds are the ones SUBMIT and the replay check."""
    assert MAX_REPLICAS == recordspec.MAX_HOLDERS
    assert YEAR == taskspec.YEAR == 365 * 86400.0
    NodeConfig(replicas=MAX_REPLICAS, default_timeout=0.01, default_max_retries=10_000,
               default_backoff=YEAR, default_backoff_max=YEAR)


def test_the_most_replicas_a_node_takes_survive_its_restart(tmp_path):
    """A task stored under the largest ``replicas`` a node starts with is
    still there after a restart from its log (standalone: the task keeps
    the node's default, as a node of a cluster would give it)."""
    data = str(tmp_path / "data")
    with ThreadNode(replicas=MAX_REPLICAS, data_dir=data) as node:
        port = node.config.port
        with Client(node.endpoint, submit_timeout=10) as client:
            task_id = client.submit("job", [1], countdown=3600, wait=True).id
    with ThreadNode(replicas=3, data_dir=data, port=port) as node:
        with Client(node.endpoint, submit_timeout=10) as client:
            assert client.status(task_id)["state"] == "scheduled"


@pytest.mark.parametrize("reader,args", [
    (f.integer, ({}, "replicas", MAX_REPLICAS + 1, 1, MAX_REPLICAS)),
    (f.number, ({}, "timeout", 0.0, 0.01, YEAR)),
])
def test_a_default_out_of_the_fields_range_is_refused(reader, args):
    """Fault: a field reader returned its default unchecked, so a node
    default out of the field's range was stored in the task (and refused by
    the record's check at the next start). Now the task is refused at once,
    naming the field and the node's default."""
    with pytest.raises(InvalidField) as info:
        reader(*args)
    assert info.value.message.startswith(f"field {args[1]!r} must be between")
    assert "this node's default" in info.value.message


def test_a_task_is_refused_rather_than_stored_with_a_bad_default():
    """A config whose replicas was changed after its check (nothing in
    miyaq does; the guard is the last one): a task that leaves replicas to
    the node is refused, not stored with 17 holders."""
    config = NodeConfig()
    config.replicas = MAX_REPLICAS + 1
    with pytest.raises(InvalidField, match="'replicas'"):
        taskspec.task_from_wire({"id": "t1", "name": "job", "priority": 1}, 0.0, config)
    config.replicas = MAX_REPLICAS
    assert taskspec.task_from_wire({"id": "t1", "name": "job", "priority": 1}, 0.0, config).replicas == 16


def test_defaults_in_range_and_none_pass_the_readers():
    assert f.integer({}, "replicas", 3, 1, MAX_REPLICAS) == 3
    assert f.number({}, "offset", None, 0.0, YEAR) is None
    assert f.integer({"replicas": 5}, "replicas", MAX_REPLICAS + 1, 1, MAX_REPLICAS) == 5   # given: no default


# -- capacities of no use at 0 -----------------------------------------------------------


@pytest.mark.parametrize("name", ["webhook_concurrency", "webhook_pool_size", "http_max_connections", "max_payload"])
def test_a_capacity_of_0_is_refused(name):
    """Fault: ``--webhook-concurrency 0`` started a node that accepted
    webhooks and never delivered one (likewise a pool of no connection, a
    gateway of no connection, no payload at all)."""
    assert refused(**{name: 0}).startswith(f"{name} must be at least 1, not 0: 0 ")
    NodeConfig(**{name: 1, "max_bytes": 1 << 30})


def test_max_message_must_hold_a_task_of_max_payload_and_its_fields():
    """Fault: ``--max-message 0`` started a node that refused every
    message. ``miyaq node`` now needs max_message >= max_payload + 64 KiB
    (a task's other fields in a SUBMIT, the rest of a DONE beside a result)."""
    with pytest.raises(ConfigError) as info:
        NodeConfig.load({"max_message": "0"}, {})
    assert info.value.message.startswith("max_message (0) must be at least max_payload (1,048,576) + 65,536")
    with pytest.raises(ConfigError):
        NodeConfig.load({"max_payload": "1000", "max_message": str(1000 + MESSAGE_ROOM - 1)}, {})
    assert NodeConfig.load({"max_payload": "1000", "max_message": str(1000 + MESSAGE_ROOM)}, {}).max_message \
        == 1000 + MESSAGE_ROOM
    assert MESSAGE_ROOM >= max(RESULT_MESSAGE_SLACK, TASK_FIELDS_ROOM)


def test_miyaq_node_stops_with_status_2_on_max_message_0():
    done = subprocess.run([*MIYAQ, "node", "--http-port", "0", "--max-message", "0"], capture_output=True, text=True,
                          timeout=SUBPROCESS_GUARD)
    assert done.returncode == 2 and "miyaq: error: max_message (0) must be at least" in done.stderr, done.stderr


# -- http_token ------------------------------------------------------------------------------


@pytest.mark.parametrize("token", ["s3cret", "x" * (MIN_HTTP_TOKEN - 1), "x" * (MAX_HTTP_TOKEN + 1),
                                   "sixteen chars ok", "tøken-0123456789abcdef"])
def test_an_http_token_the_tokens_file_would_refuse_is_refused(token):
    """Fault: ``--http-token`` took any text, a one-letter admin token
    included, while a token of the ``http_tokens`` file must be 16 to 512
    visible ASCII characters. Both now follow that rule."""
    assert refused(http_token=token).startswith("http_token must be 16 to 512 visible ASCII characters")
    with pytest.raises(ConfigError):
        tokens.parse_tokens(f"{token} admin\n", "tokens")


def test_an_http_token_of_the_file_rule_is_taken():
    for token in ("x" * MIN_HTTP_TOKEN, "y" * MAX_HTTP_TOKEN, "ops-c4d2a9e7f1b3c5d8e6a4"):
        assert NodeConfig(http_token=token).http_token == token
        assert tokens.parse_tokens(f"{token} admin\n", "tokens")
    assert tokens.MIN_TOKEN == MIN_HTTP_TOKEN and tokens.MAX_TOKEN == MAX_HTTP_TOKEN


def test_miyaq_node_stops_with_status_2_on_a_short_http_token():
    done = subprocess.run([*MIYAQ, "node", "--http-port", "0", "--http-token", "short"], capture_output=True,
                          text=True, timeout=SUBPROCESS_GUARD)
    assert done.returncode == 2, done.stderr
    assert "http_token must be 16 to 512 visible ASCII characters" in done.stderr and "short" not in done.stderr


# -- the tokens file's roles -----------------------------------------------------------------


def test_an_unknown_role_in_the_tokens_file_names_only_the_roles_it_takes():
    """Fault: an unknown role's message offered ``peer``, which the next
    start then refused. It names the three roles a tokens file takes."""
    with pytest.raises(ConfigError) as info:
        tokens.parse_tokens("abcdefghijklmnop superuser\n", "tokens")
    message = info.value.message
    assert message.startswith("tokens:1: unknown role 'superuser': choose one of producer, worker, admin")
    assert "peer" not in message
    with pytest.raises(ConfigError, match="role peer .'node'. is for nodes on the peer port"):
        tokens.parse_tokens("abcdefghijklmnop node\n", "tokens")
