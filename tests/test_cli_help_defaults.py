"""``miyaq worker --help`` and ``miyaq node --help``: each option's
bracket says its default only where its own help does not."""
from __future__ import annotations

import argparse

import pytest

from miyaq.cli.tasks_cmd import register
from miyaq.config import NodeConfig
from miyaq.worker.config import WorkerConfig


def help_of(settings: type, flag: str) -> str:
    parser = argparse.ArgumentParser()
    settings.add_arguments(parser)
    action = next(a for a in parser._actions if flag in a.option_strings)
    return " ".join(str(action.help).split())


def test_a_default_decided_later_is_not_shown_as_none():
    """Mistake it misled into: ``--concurrency``'s help said "(default: 8;
    with --pool processes: the number of CPUs) [default None; ...]": a
    newcomer read None as "no limit". Now only the help's own words."""
    text = help_of(WorkerConfig, "--concurrency")
    assert "default None" not in text and text.endswith("the number of CPUs) [env MIYAQ_CONCURRENCY]"), text
    assert "default None" not in help_of(WorkerConfig, "--prefetch")


def test_an_empty_default_says_empty_and_a_help_that_names_its_default_keeps_it():
    """``[default '']`` became ``[default empty; ...]`` next to the help's
    "(empty: memory only)"; ``--connect`` (default: the App's) shows none,
    and a plain default is shown as before."""
    assert help_of(NodeConfig, "--data-dir").endswith("(empty: memory only) [default empty; env MIYAQ_DATA_DIR]")
    assert help_of(WorkerConfig, "--connect").endswith("(default: the App's) [env MIYAQ_CONNECT]")
    assert help_of(NodeConfig, "--port").endswith("[default 7450; env MIYAQ_PORT]"), help_of(NodeConfig, "--port")


@pytest.mark.parametrize("command", ["submit", "status", "tasks", "cancel", "dead"])
def test_every_option_of_the_task_commands_says_what_it_is(command):
    """Mistake it left room for: ``miyaq submit --help`` listed
    ``--wait-timeout WAIT_TIMEOUT`` and ``--max-retries``, ``miyaq tasks``
    ``--state STATE`` (which states?) with no word of help."""
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    bare = [a.dest for a in sub._actions if not a.help]
    assert bare == [], f"miyaq {command}: options without help: {bare}"
