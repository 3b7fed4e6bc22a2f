"""The reference pages name what the code has, and the code has what they
name: every node and worker setting (docs/configuration.md), every
``MIYAQ_*`` variable, every flag of every ``miyaq`` command, every HTTP
route (docs/http.md), every field a node reads from a command
(docs/protocol.md), every package (docs/architecture.md) and the import
contracts that page describes (setup.cfg). Read from the code and the
pages alone: no node, no process."""
from __future__ import annotations

import argparse
import ast
import configparser
import dataclasses
import pathlib
import re
from typing import Iterator

import pytest

from miyaq.cli.main import build_parser
from miyaq.config import NodeConfig
from miyaq.gateway.openapi import build as openapi
from miyaq.worker.config import WorkerConfig

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
CONFIGURATION = (DOCS / "configuration.md").read_text()
#: Pages of history: a name they give may be gone on purpose.
HISTORY = ("changes.md", "performance-log.md")
CURRENT = {p.name: p.read_text() for p in [ROOT / "README.md", *sorted(DOCS.glob("*.md"))] if p.name not in HISTORY}
VARIABLE = re.compile(r"MIYAQ_[A-Z0-9_]*[A-Z0-9]")


def cells(row: str) -> list[str]:
    """A markdown table row's cells (an escaped ``\\|`` stays in its cell)."""
    return [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", row.strip().strip("|"))]


def section(text: str, start: str, end: str) -> str:
    assert start in text, f"no {start!r}"
    return text.split(start, 1)[1].split(end, 1)[0]


def commands() -> Iterator[tuple[str, argparse.ArgumentParser]]:
    """Every ``miyaq`` command and subcommand, with its parser."""
    def walk(parser: argparse.ArgumentParser, path: str) -> Iterator[tuple[str, argparse.ArgumentParser]]:
        yield path, parser
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    yield from walk(sub, f"{path} {name}")
    yield from walk(build_parser(), "miyaq")


def documented_default(value: object) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if value == "":
        return '`""`'
    return str(value)


def test_every_node_setting_has_its_row_with_its_type_and_default():
    """Drift it catches: ``http_console``'s type was written ``str`` while
    ``fsync`` and ``log_level``, settings with choices too, list them; a
    setting added to NodeConfig without a row, or a default changed in one
    place only."""
    rows = {}
    for line in section(CONFIGURATION, "### Every setting", "#### Names at a glance").splitlines():
        if line.startswith("| `"):
            row = cells(line)
            rows[row[0].strip("`")] = row
    fields = {f.name: f for f in dataclasses.fields(NodeConfig)}
    assert set(rows) == set(fields), f"rows without settings, settings without rows: {set(rows) ^ set(fields)}"
    for name, f in fields.items():
        _, kind, default, _ = rows[name]
        choices = f.metadata.get("choices")
        assert kind == (" | ".join(f"`{c}`" for c in choices) if choices else str(f.type)), (name, kind)
        if name == "node_id":           # decided at start: <hostname>-<port>
            continue
        shown = default.strip("`") if default != '`""`' else default
        assert shown.replace(",", "") in (documented_default(f.default), repr(f.default)), (name, default, f.default)


def test_the_names_at_a_glance_give_every_node_setting_its_flag_and_variable():
    rows = [cells(line) for line in section(CONFIGURATION, "#### Names at a glance", "\n### ").splitlines()
            if line.startswith("| `")]
    assert {r[0].strip("`") for r in rows} == {f.name for f in dataclasses.fields(NodeConfig)}
    for key, flag, variable in rows:
        name = key.strip("`")
        assert f"`--{name.replace('_', '-')}" in flag and variable.startswith(f"`MIYAQ_{name.upper()}`"), key


def test_every_worker_setting_has_its_row_with_its_variable():
    rows = {}
    for line in section(CONFIGURATION, "## Worker options", "\n## ").splitlines():
        if line.startswith("| `--"):
            row = cells(line)
            rows[row[0].split("`")[1]] = row
    fields = {"--" + f.name.replace("_", "-"): f for f in dataclasses.fields(WorkerConfig)}
    assert set(rows) == set(fields), set(rows) ^ set(fields)
    for flag, f in fields.items():
        assert rows[flag][1] == f"`MIYAQ_{f.name.upper()}`", rows[flag]
        if f.metadata.get("short"):
            assert f"`{f.metadata['short']}`" in rows[flag][0], rows[flag]


def code_variables() -> set[str]:
    """Every ``MIYAQ_*`` variable the code names: in its text, as a setting
    (``MIYAQ_`` + the name) and in a command's ``--help``."""
    names = set()
    for path in (ROOT / "miyaq").rglob("*.py"):
        names |= set(VARIABLE.findall(path.read_text()))
    names |= {"MIYAQ_" + f.name.upper() for cls in (NodeConfig, WorkerConfig) for f in dataclasses.fields(cls)}
    for _, parser in commands():
        names |= set(VARIABLE.findall(parser.format_help()))
    return names


def test_every_variable_the_code_reads_is_in_configuration_md_and_back():
    """Fault it simulates: ``miyaq queue`` read ``MIYAQ_HTTP``, and
    ``miyaq bench`` and ``miyaq chaos`` hand their workers
    ``MIYAQ_BENCH_*`` and ``MIYAQ_CHAOS_DIR``, none of which
    configuration.md named."""
    code = code_variables()
    documented = set(VARIABLE.findall(CONFIGURATION))
    assert not code - documented, f"MIYAQ_ variables missing from docs/configuration.md: {sorted(code - documented)}"
    assert not documented - code, f"configuration.md names variables nothing reads: {sorted(documented - code)}"


def headings(text: str) -> list[tuple[int, int, str]]:
    """A page's headings as (offset, level, line), fenced blocks skipped
    (a ``# tasks.py`` line there is code, not a heading)."""
    found, fenced, offset = [], False, 0
    for line in text.splitlines(keepends=True):
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif not fenced and re.match(r"#{1,6} ", line):
            found.append((offset, len(line) - len(line.lstrip("#")), line.strip()))
        offset += len(line)
    return found


def heading_section(page: str, heading: str) -> str:
    """The part of ``page`` under ``heading`` (the whole line, ``## ...``),
    its subsections included: up to the next heading of its level or above."""
    text = CURRENT[page]
    found = headings(text)
    for i, (offset, level, line) in enumerate(found):
        if line == heading:
            end = next((o for o, lv, _ in found[i + 1:] if lv <= level), len(text))
            return text[offset:end]
    raise AssertionError(f"docs/{page} has no heading {heading!r}: COMMAND_DOCS names it")


ADMIN = ("configuration.md", "## Admin and producer commands")
RING = [("cluster.md", "## Operating the ring"), ("cluster.md", "## ZooKeeper ACLs")]
#: Where each command's flags are documented: (page, heading) -- the
#: section under that heading, subsections included. A flag counts only if
#: one of its own command's places names it.
COMMAND_DOCS: dict[str, list[tuple[str, str]]] = {
    "miyaq node": [("configuration.md", "## Node settings")],
    "miyaq worker": [("configuration.md", "## Worker options (`miyaq worker`)")],
    "miyaq submit": [ADMIN],
    "miyaq status": [ADMIN],
    "miyaq tasks": [ADMIN],
    "miyaq cancel": [ADMIN],
    "miyaq dead": [ADMIN],
    "miyaq bench": [("performance.md", "## What `miyaq bench` measures")],
    "miyaq queue": [ADMIN],
    "miyaq queue list": [ADMIN, ("http.md", "## Rate limits")],
    "miyaq queue limit": [ADMIN, ("http.md", "## Rate limits")],
    "miyaq queue pause": [ADMIN, ("http.md", "## Pausing a queue")],
    "miyaq queue resume": [ADMIN, ("http.md", "## Pausing a queue")],
    "miyaq ring": [*RING, ADMIN],
    "miyaq ring weight": RING,
    "miyaq join": RING,
    "miyaq leave": RING,
    "miyaq dev-cluster": [("cluster.md", "## Trying it: one command"), ("cluster.md", "## ZooKeeper ACLs")],
    "miyaq chaos": [("chaos.md", "## Every flag")],
    "miyaq keys add": [("security.md", "## Keys")],
}


def documented_flags(parser: argparse.ArgumentParser) -> list[str]:
    """A parser's long flags a page must name (not ``--help``, ``--version``
    nor the ``--no-`` half of a pair)."""
    return [flag for action in parser._actions for flag in action.option_strings
            if flag.startswith("--") and flag not in ("--help", "--version") and not flag.startswith("--no-")]


def test_every_flag_of_every_command_is_named_where_that_command_is_documented():
    """Faults it simulates: ``miyaq dev-cluster --worker-processes`` and
    ``--log-dir`` were in ``--help`` and on no page; and a flag named only
    on another command's page passed: the 12 mentions of ``--pool`` taken
    out of docs/chaos.md, ``miyaq chaos --pool`` was still "documented" by
    ``miyaq worker --pool`` in configuration.md. Each command's flags must
    be named in its own places (``COMMAND_DOCS``), each place naming the
    command (or, for a subcommand, its parent)."""
    parsers = {path: parser for path, parser in commands() if documented_flags(parser)}
    unknown, unmapped = set(COMMAND_DOCS) - set(parsers), set(parsers) - set(COMMAND_DOCS)
    assert not unknown, f"COMMAND_DOCS names commands that have no flags or do not exist: {sorted(unknown)}"
    assert not unmapped, f"commands with flags and no place in COMMAND_DOCS: {sorted(unmapped)}"
    undocumented = []
    for path, parser in parsers.items():
        places = [heading_section(page, heading) for page, heading in COMMAND_DOCS[path]]
        names = path.split()[1:]        # the command, or its parent's (`queue` for `queue pause`)
        for (page, heading), text in zip(COMMAND_DOCS[path], places):
            assert any(re.search(rf"\b{re.escape(name)}\b", text) for name in names), \
                f"COMMAND_DOCS gives {path} docs/{page} {heading!r}, which does not name it"
        for flag in documented_flags(parser):
            pattern = re.compile(re.escape(flag) + r"(?![\w-])")
            if not any(pattern.search(text) for text in places):
                undocumented.append(f"{path.removeprefix('miyaq ')} {flag}")
    assert not undocumented, f"flags their command's pages (COMMAND_DOCS) do not name: {undocumented}"


def test_every_flag_a_page_names_is_a_flag_of_some_command():
    flags = {flag for _, parser in commands() for action in parser._actions for flag in action.option_strings}
    flags |= {"--no-" + flag[2:] for flag in flags}
    # other programs' flags the pages quote
    others = {"--ulimit", "--cacert", "--insecure-tls", "--queue-bypass", "--config-settings", "--preload", "--strict",
              "--fail-with-body",
              "--autoscale", "--max-memory-per-child"}     # Celery's, quoted by celery.md
    named = {(name, m) for name, text in CURRENT.items() for m in re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", text)}
    unknown = sorted(f"{name}: {flag}" for name, flag in named if flag not in flags | others)
    assert not unknown, f"flags no command has: {unknown}"


def test_every_http_route_is_named_in_http_md():
    http = CURRENT["http.md"]
    named = set()
    for method, path in re.findall(r"\b((?:GET|POST|PUT|DELETE)(?:/(?:GET|POST|PUT|DELETE))*)\s+(/[^\s`|),?]*)", http):
        for one in method.split("/"):
            named.add((one, re.sub(r"<[^>]*>|\{[^}]*\}", "{}", path.rstrip("."))))
    routes = {(method.upper(), re.sub(r"\{[^}]*\}", "{}", path))
              for path, item in openapi()["paths"].items() for method in item}
    assert not routes - named, f"routes docs/http.md does not name: {sorted(routes - named)}"


#: The command each node-side handler serves, by module of miyaq/core/.
HANDLERS = {
    "handlers.py": {"submit": "SUBMIT", "status": "STATUS", "ring": "RING", "task": "TASK", "cancel": "CANCEL",
                    "result": "RESULT", "tasks": "TASKS", "dead": "DEAD", "_ids": "DEAD", "receive": "RECEIVE",
                    "ack": "ACK", "nack": "NACK", "withdraw": "WITHDRAW"},
    "worker_commands.py": {"ready": "READY", "_worker_info": "READY", "heartbeat": "HEARTBEAT",
                           "_grant_for": "DONE FAILED RETURN", "credit": "CREDIT", "done": "DONE",
                           "failed": "FAILED", "touch": "TOUCH", "give_back": "RETURN", "bye": "BYE"},
}


def fields_read(function: ast.FunctionDef) -> set[str]:
    """The fields a handler reads from ``body``: ``f.kind(body, "name", ...)``,
    ``body.get("name")`` and ``body["name"]``."""
    names = set()
    for node in ast.walk(function):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                and isinstance(node.func.value, ast.Name):
            owner = node.func.value.id
            if owner == "f" and len(node.args) >= 2 and isinstance(node.args[1], ast.Constant):
                names.add(node.args[1].value)
            elif owner == "body" and node.func.attr == "get" and node.args and isinstance(node.args[0], ast.Constant):
                names.add(node.args[0].value)
        elif isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name) and node.value.id == "body" \
                and isinstance(node.slice, ast.Constant):
            names.add(node.slice.value)
    return names


def command_section(command: str) -> str:
    """The protocol.md sections whose heading names ``command``."""
    text = CURRENT["protocol.md"]
    heads = [(m.start(), m.group(0)) for m in re.finditer(r"^### .*$", text, re.M)]
    found = "".join(text[pos:(heads[i + 1][0] if i + 1 < len(heads) else len(text))]
                    for i, (pos, head) in enumerate(heads) if re.search(rf"\b{command}\b", head))
    assert found, f"docs/protocol.md has no section for {command}"
    return found


@pytest.mark.parametrize("module", sorted(HANDLERS))
def test_every_field_a_node_reads_from_a_command_is_in_its_section_of_protocol_md(module):
    tree = ast.parse((ROOT / "miyaq" / "core" / module).read_text())
    functions = {node.name: node for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)}
    assert set(HANDLERS[module]) <= set(functions), "a handler was renamed: update HANDLERS"
    missing = []
    for name, served in HANDLERS[module].items():
        for command in served.split():
            text = command_section(command)
            missing += [f"{command}.{field}" for field in sorted(fields_read(functions[name]))
                        if f"`{field}`" not in text and f'"{field}"' not in text]
    assert not missing, f"fields the node reads that docs/protocol.md does not give: {missing}"


def top_level_modules() -> set[str]:
    return {"miyaq." + (p.stem if p.is_file() else p.name) for p in (ROOT / "miyaq").iterdir()
            if (p.suffix == ".py" and p.stem not in ("__init__", "__main__")) or (p / "__init__.py").exists()}


def test_the_package_table_of_architecture_md_has_every_package():
    """Fault it simulates: ``miyaq/aio/``, the asyncio client, had no row."""
    text = CURRENT["architecture.md"]
    table = section(text, "## The packages", "\n## ")
    rows = [cells(line)[0] for line in table.splitlines() if line.startswith("| `")]
    missing = [m for m in sorted(top_level_modules()) if not any(
        f"`miyaq/{m[6:]}/`" in row or f"`{m[6:]}/`" in row or f"`{m[6:]}.py`" in row or f"`miyaq/{m[6:]}.py`" in row
        for row in rows)]
    assert not missing, f"packages and modules without a row in docs/architecture.md: {missing}"


def test_every_file_architecture_md_names_exists():
    text = CURRENT["architecture.md"]
    missing = sorted({p for p in re.findall(r"`((?:[a-z_]+/)+[a-z_]+\.py)`", text)
                      if not (ROOT / p).exists() and not (ROOT / "miyaq" / p).exists()})
    assert not missing, f"files docs/architecture.md names that are not there: {missing}"


def test_the_import_contracts_cover_every_module():
    """Fault it simulates: ``settings``, ``devstate``, ``taskdef`` and
    ``taskdef_aio``, added after the contracts were written, were in
    neither "only the runtime imports gevent" nor "the runtime imports
    nothing of miyaq but errors and logs" (architecture.md says both of
    every module)."""
    contracts = configparser.ConfigParser()
    contracts.read(ROOT / "setup.cfg")
    gevent = set(contracts["importlinter:contract:only-runtime-imports-gevent"]["source_modules"].split())
    runtime = contracts["importlinter:contract:runtime-imports-only-leaves"]
    layers = set(re.findall(r"miyaq\.[a-z_]+", contracts["importlinter:contract:node-layers"]["layers"]))
    below = set(runtime["forbidden_modules"].split()) | layers
    modules = top_level_modules()
    assert not modules - {"miyaq.runtime"} - gevent, sorted(modules - {"miyaq.runtime"} - gevent)
    assert not modules - {"miyaq.runtime", "miyaq.errors", "miyaq.logs"} - below, \
        sorted(modules - {"miyaq.runtime", "miyaq.errors", "miyaq.logs"} - below)


def test_every_runtime_module_but_green_and_its_parts_is_kept_from_gevent():
    """Fault it simulates: the runtime's docstring said ``green`` was its
    only module importing gevent while ``waits`` and ``fairness`` did too,
    and nothing checked it. The contract ``runtime-gevent-facade`` now
    does; a runtime module added later must be listed in it."""
    contracts = configparser.ConfigParser()
    contracts.read(ROOT / "setup.cfg")
    listed = set(contracts["importlinter:contract:runtime-gevent-facade"]["source_modules"].split())
    facade = {"miyaq.runtime.green", "miyaq.runtime.waits", "miyaq.runtime.fairness"}
    modules = {f"miyaq.runtime.{p.stem}" for p in (ROOT / "miyaq" / "runtime").glob("*.py") if p.stem != "__init__"}
    assert modules - facade == listed, sorted((modules - facade) ^ listed)


def test_the_quickstart_says_where_a_handlers_exception_shows_as_the_worker_logs_it():
    """Fault it simulates: quickstart.md said "The worker's terminal shows
    nothing when a handler raises" after the worker had begun to log each
    failed attempt with its traceback (b5a52e3, 2026-12-06; operations.md,
    "Where to look", said so): a reader was told to look away from the
    terminal that shows it. The section must name the worker's logger."""
    from miyaq.worker.failures import logger
    text = section(CURRENT["quickstart.md"], "## 5. Submit and inspect", "\n## ")
    assert f"`{logger.name}`" in text, f"quickstart.md section 5 does not name the logger {logger.name}"
    assert "shows nothing when a handler raises" not in text


def test_every_page_a_page_names_is_in_the_checkout():
    """Fault it simulates: chaos.md and periodic.md cited "DESIGN.md" (the
    guarantees, "guarantee 3"), a file that is not in the repository: a
    reader following the reference found nothing. Every ``NAME.md`` a
    current page names is a file of the checkout -- at the root, in docs/,
    relative to the page, or under a folder the page names with it."""
    named = {m for text in CURRENT.values() for m in re.findall(r"[A-Za-z0-9_./-]*[A-Za-z0-9_-]\.md\b", text)}
    files = {p.relative_to(ROOT).as_posix() for p in [*ROOT.glob("*.md"), *(
        f for folder in ("docs", "deploy", "miyaq", "scripts") for f in (ROOT / folder).rglob("*.md"))]}

    def found(name: str) -> bool:
        name = name.removeprefix("../")
        return name in files or f"docs/{name}" in files or any(f.endswith(f"/{name}") for f in files)
    missing = sorted(n for n in named if not found(n))
    assert not missing, f"pages name files that are not in the checkout: {missing}"


def test_the_quickstart_gives_the_default_lease_a_long_handler_runs_into():
    """Fault it simulates: the quickstart named the lease `timeout` among a
    task's defaults without its value: a reader from Celery, whose tasks
    have no time limit unless given one, met the node's 300 s only when a
    long handler was stopped and run again. The page states the node's
    ``default_timeout`` and what running past it does."""
    default = NodeConfig().default_timeout
    text = section(CURRENT["quickstart.md"], "## 2. Write handlers", "\n## ")
    assert f"{default:g} s" in text, f"quickstart.md section 2 does not give the default lease, {default:g} s"
    assert "touch()" in text
