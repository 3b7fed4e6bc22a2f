"""Node settings: where they come from (flag > environment > TOML file >
default), how bad values are refused, and how ``miyaq node --help`` shows them.

``NodeConfig.load`` gets its environment passed explicitly, so these tests
never depend on (or change) the real one; the CLI tests run ``miyaq`` as a
subprocess.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest

import miyaq
from miyaq.cli.main import build_parser
from miyaq.cli.node_cmd import stream_drop
from miyaq.config import NodeConfig
from miyaq.errors import ConfigError
from miyaq.protocol.commands import MAX_WORKER_CAPACITY
from miyaq.worker.config import WorkerConfig

MIYAQ = [sys.executable, "-m", "miyaq.cli.main"]
SUBPROCESS_GUARD = 60       # seconds; against a hang, not a timing assertion


def write(tmp_path: Path, text: str, name: str = "miyaq.toml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def load_from_argv(argv: list[str], environ: dict[str, str]) -> NodeConfig:
    """What ``miyaq node ARGV`` would run with: the real parser, then load()."""
    args = build_parser().parse_args(["node", *argv])
    return NodeConfig.load(vars(args), environ)


# -- precedence ----------------------------------------------------------------------


def test_precedence_flag_over_env_over_file_over_default(tmp_path):
    """Each setting comes from the highest layer that sets it, independently
    of the others: flag > MIYAQ_* variable > TOML file > default."""
    path = write(tmp_path, 'max_tasks = 10\nmax_dead = 11\nmax_batch = 12\nfsync = "never"\n')
    environ = {"MIYAQ_CONFIG": path, "MIYAQ_MAX_DEAD": "21", "MIYAQ_MAX_BATCH": "22"}
    config = load_from_argv(["--max-batch", "32"], environ)
    assert config.max_batch == 32                  # flag
    assert config.max_dead == 21                   # env beats file
    assert config.max_tasks == 10                  # file beats default
    assert config.fsync == "never"
    assert config.max_payload == NodeConfig().max_payload     # default


@pytest.mark.parametrize("layers,expected", [
    ({"flag", "env", "file"}, 300),
    ({"env", "file"}, 200),
    ({"file"}, 100),
    (set(), 1_000_000),
])
def test_each_layer_wins_over_the_ones_below(tmp_path, layers, expected):
    """max_tasks set in a subset of the layers: the highest one present wins."""
    environ: dict[str, str] = {"MIYAQ_CONFIG": write(tmp_path, "max_tasks = 100\n" if "file" in layers else "")}
    if "env" in layers:
        environ["MIYAQ_MAX_TASKS"] = "200"
    argv = ["--max-tasks", "300"] if "flag" in layers else []
    assert load_from_argv(argv, environ).max_tasks == expected


def test_config_flag_beats_config_env(tmp_path):
    """--config names the file even when MIYAQ_CONFIG names another."""
    flag_file = write(tmp_path, "max_tasks = 1\n", "flag.toml")
    env_file = write(tmp_path, "max_tasks = 2\n", "env.toml")
    assert load_from_argv(["--config", flag_file], {"MIYAQ_CONFIG": env_file}).max_tasks == 1
    assert load_from_argv([], {"MIYAQ_CONFIG": env_file}).max_tasks == 2


def test_boolean_flag_beats_env_both_ways(tmp_path):
    """--no-auto-join / --auto-join override MIYAQ_AUTO_JOIN and the file."""
    path = write(tmp_path, "auto_join = true\n")
    assert load_from_argv(["--config", path, "--no-auto-join"], {"MIYAQ_AUTO_JOIN": "1"}).auto_join is False
    assert load_from_argv(["--auto-join"], {"MIYAQ_AUTO_JOIN": "off"}).auto_join is True
    assert load_from_argv([], {"MIYAQ_AUTO_JOIN": "off"}).auto_join is False
    assert load_from_argv(["--config", path], {}).auto_join is True


@pytest.mark.parametrize("text,value", [("1", True), ("true", True), ("YES", True), ("on", True),
                                        ("0", False), ("false", False), ("No", False), (" off ", False)])
def test_boolean_spellings_from_the_environment(text, value):
    """The usual spellings of true and false are accepted, any case."""
    assert NodeConfig.load({}, {"MIYAQ_AUTO_JOIN": text}).auto_join is value


def test_values_are_typed_from_every_layer(tmp_path):
    """Strings from flags and the environment become ints, floats and bools;
    TOML values keep their types."""
    path = write(tmp_path, 'weight = 2\nhost = "0.0.0.0"\nauto_join = false\nresult_ttl = 1.5\n')
    config = load_from_argv(["--config", path, "--port", "9000", "--replica-offset", "0.25"],
                            {"MIYAQ_HEARTBEAT": "0.5", "MIYAQ_LIVENESS": "7"})
    assert (config.port, config.replica_offset, config.heartbeat, config.liveness) == (9000, 0.25, 0.5, 7)
    assert (config.weight, config.host, config.auto_join, config.result_ttl) == (2.0, "0.0.0.0", False, 1.5)
    assert isinstance(config.port, int) and isinstance(config.weight, float)


def test_explicit_environ_replaces_the_process_environment(monkeypatch):
    """load() with an explicit environ ignores os.environ; load(environ=None) reads it."""
    monkeypatch.setenv("MIYAQ_MAX_TASKS", "77")
    assert NodeConfig.load({}, {}).max_tasks == NodeConfig().max_tasks
    assert NodeConfig.load({}).max_tasks == 77


# -- refused values --------------------------------------------------------------------


def test_unknown_key_in_the_file_is_named(tmp_path):
    """A typo in the TOML file is an error that names the unknown key."""
    path = write(tmp_path, "max_tasks = 5\nmax_taks = 6\nzz_top = 1\n")
    with pytest.raises(ConfigError) as info:
        NodeConfig.load({"config": path}, {})
    assert "max_taks" in info.value.message and "zz_top" in info.value.message
    assert "max_tasks," not in info.value.message


def test_missing_or_broken_file_is_a_config_error(tmp_path):
    """A config file that does not exist or is not TOML: ConfigError naming the file."""
    missing = str(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match="nope.toml"):
        NodeConfig.load({"config": missing}, {})
    broken = write(tmp_path, "max_tasks = = 5\n", "broken.toml")
    with pytest.raises(ConfigError, match="broken.toml"):
        NodeConfig.load({}, {"MIYAQ_CONFIG": broken})


@pytest.mark.parametrize("source,name,raw", [
    ("env", "max_tasks", "lots"),
    ("env", "port", "7450.5"),
    ("env", "heartbeat", "fast"),
    ("env", "auto_join", "maybe"),
    ("env", "fsync", "sometimes"),
    ("env", "log_level", "LOUD"),
    ("env", "max_dead", "-1"),
    ("flag", "max_batch", "x"),
    ("flag", "weight", "heavy"),
    ("flag", "liveness", "-3"),
    ("file", "max_tasks", '"lots"'),
    ("file", "auto_join", '"maybe"'),
    ("file", "fsync", '"sometimes"'),
    ("file", "heartbeat", '"fast"'),
    ("file", "shutdown_grace", "-1.0"),
    ("env", "peer_heartbeat_timeout", "0.1"),
    ("flag", "peer_heartbeat_timeout", "nan"),
    ("file", "peer_heartbeat_timeout", "7200.0"),
    ("env", "service_heartbeat_timeout", "0.1"),
    ("flag", "service_heartbeat_timeout", "nan"),
    ("file", "service_heartbeat_timeout", "7200.0"),
    ("env", "service_heartbeat_timeout", "0"),
    ("flag", "heartbeat", "nan"),
    ("env", "shutdown_grace", "inf"),
    ("file", "shutdown_grace", "inf"),
    ("file", "max_bytes", "100000000000000000000000"),
    ("env", "max_tasks", "99999999999999999999999"),
])
def test_bad_values_are_refused_naming_the_setting(tmp_path, source, name, raw):
    """A value of the wrong type, outside the choices or negative is a
    ConfigError whose message names the setting, from whichever layer."""
    args: dict[str, object] = {}
    environ: dict[str, str] = {}
    if source == "env":
        environ["MIYAQ_" + name.upper()] = raw
    elif source == "flag":
        args[name] = raw
    else:
        args["config"] = write(tmp_path, f"{name} = {raw}\n")
    with pytest.raises(ConfigError) as info:
        NodeConfig.load(args, environ)
    assert name in info.value.message


@pytest.mark.parametrize("line", ["max_tasks = 1.5", "max_tasks = true", "weight = true"])
def test_toml_value_of_the_wrong_type_is_refused(tmp_path, line):
    """A TOML float for an int setting, or a boolean for a number, is refused
    naming the setting rather than silently converted."""
    path = write(tmp_path, line + "\n")
    with pytest.raises(ConfigError) as info:
        NodeConfig.load({"config": path}, {})
    assert line.split()[0] in info.value.message


def test_choice_flag_is_refused_by_the_parser(capsys):
    """--fsync with a value outside its choices stops the parser (exit 2) naming the flag."""
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(["node", "--fsync", "sometimes"])
    assert info.value.code == 2
    assert "--fsync" in capsys.readouterr().err


def test_a_config_file_that_is_not_utf8_is_a_config_error(tmp_path):
    """Fault: --config names a Latin-1 or binary file. TOML is UTF-8, and
    tomllib's UnicodeDecodeError was a traceback; it is a ConfigError naming
    the file and the byte."""
    path = tmp_path / "latin1.toml"
    path.write_bytes('cluster = "Zürich"\n'.encode("latin-1"))
    with pytest.raises(ConfigError) as info:
        NodeConfig.load({"config": str(path)}, {})
    assert str(path) in info.value.message and "not UTF-8" in info.value.message


@pytest.mark.parametrize("options,named", [
    ({"concurrency": "nan"}, "concurrency"),
    ({"heartbeat": "nan"}, "heartbeat"),
    ({"grace": "inf"}, "grace"),
    ({"processes": "100000"}, "processes"),
    ({"concurrency": "100000000000000000000"}, "concurrency"),
    ({"concurrency": "5000", "prefetch": "99000"}, "prefetch"),
])
def test_worker_settings_no_worker_can_run_with_are_refused(options, named):
    """Fault: a worker told to run NaN seconds between heartbeats (its
    heartbeat thread died on the first wait), a grace that never ends, more
    processes or greenlets than any machine holds, or a credit past what a
    node lets one worker hold (every READY refused). ConfigError naming the
    setting, before the worker starts."""
    with pytest.raises(ConfigError) as info:
        WorkerConfig.load(options, {})
    assert named in info.value.message


def test_a_worker_left_to_its_default_prefetch_asks_at_most_what_a_node_grants():
    """With the adaptive default (up to 16 x concurrency) a large
    concurrency still asks a node for at most MAX_WORKER_CAPACITY tasks."""
    assert WorkerConfig.load({"concurrency": "10000"}, {}).capacity == MAX_WORKER_CAPACITY


@pytest.mark.parametrize("raw", ["x", "nan", "-0.5", "1.5"])
def test_a_stream_drop_share_that_is_not_0_to_1_is_refused(raw):
    """Fault: the fault-injection variable MIYAQ_FAULT_STREAM_DROP holds no
    share (``x`` was a ValueError traceback at the node's start)."""
    with pytest.raises(ConfigError, match="MIYAQ_FAULT_STREAM_DROP"):
        stream_drop({"MIYAQ_FAULT_STREAM_DROP": raw})
    assert stream_drop({"MIYAQ_FAULT_STREAM_DROP": "0.25"}) == 0.25 and stream_drop({}) == 0.0


def test_cross_field_checks():
    """port out of range, replicas 0, heartbeat 0: ConfigError naming the setting."""
    for env, name in (({"MIYAQ_PORT": "70000"}, "port"), ({"MIYAQ_REPLICAS": "0"}, "replicas"),
                      ({"MIYAQ_HEARTBEAT": "0"}, "heartbeat")):
        with pytest.raises(ConfigError) as info:
            NodeConfig.load({}, env)
        assert name in info.value.message


# -- the command line ------------------------------------------------------------------


def _miyaq(*argv: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200"}
    env = {k: v for k, v in env.items() if not k.startswith("MIYAQ_")}
    return subprocess.run([*MIYAQ, *argv], capture_output=True, text=True, env=env, timeout=SUBPROCESS_GUARD)


def test_node_help_lists_every_setting_with_its_flag_and_env_var():
    """``miyaq node --help`` shows each NodeConfig field as --flag-name with
    its MIYAQ_* variable in that flag's help, plus --config / MIYAQ_CONFIG."""
    done = _miyaq("node", "--help")
    assert done.returncode == 0, done.stderr
    usage, _, options = done.stdout.partition("options:")
    assert options, done.stdout
    text = " ".join(options.split())
    names = [f.name for f in fields(NodeConfig)] + ["config"]
    for name in names:
        flag = "--" + name.replace("_", "-")
        found = re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", text)
        assert found, f"{flag} missing from miyaq node --help"
        next_env = re.search(r"MIYAQ_[A-Z_]+", text[found.end():])
        assert next_env and next_env.group() == "MIYAQ_" + name.upper(), (flag, next_env)
    assert "--no-auto-join" in text


def test_version_flag():
    """``miyaq --version`` prints the package version and exits 0."""
    done = _miyaq("--version")
    assert done.returncode == 0
    assert done.stdout.strip() == f"miyaq {miyaq.__version__}"


def test_console_script_matches_the_module():
    """The installed ``miyaq`` console script is the same program."""
    import shutil
    exe = shutil.which("miyaq")
    if exe is None:
        pytest.fail("the miyaq console script is not installed (pip install -e .)")
    done = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=SUBPROCESS_GUARD)
    assert done.returncode == 0 and done.stdout.strip() == f"miyaq {miyaq.__version__}"


def test_node_refuses_a_bad_setting_at_start(tmp_path):
    """``miyaq node`` with a bad MIYAQ_* value exits 2 with an error naming
    the setting, before binding anything."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIYAQ_")}
    env["MIYAQ_MAX_TASKS"] = "lots"
    done = subprocess.run([*MIYAQ, "node", "--http-port", "0"], capture_output=True, text=True, env=env,
                          timeout=SUBPROCESS_GUARD)
    assert done.returncode == 2
    assert "error" in done.stderr and "max_tasks" in done.stderr
