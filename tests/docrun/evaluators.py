"""How each kind of block runs. Every evaluator maps the page's ports first.

* ``python``: executed in the page's namespace (one per page, like one
  interpreter session), in this process. A block whose first line is a
  comment naming a file (``# tasks.py``) is that file: it is written into
  the page's directory instead, for later commands to import or run.
* ``sh``: :meth:`DocSession.run_shell` -- bash, first failure fails,
  long-running commands in the background.
* ``toml``: a node configuration file; ``miyaq node --config`` must accept
  it (every key known, every value of its setting's type).
"""
from __future__ import annotations

import re
from typing import Any

from sybil import Example

from .session import DocSession

SESSION_KEY = "__doc_session__"
FILE_HEADER = re.compile(r"\A#\s*([\w][\w./-]*\.py)\b")


def session_for(example: Example) -> DocSession:
    session = example.namespace.get(SESSION_KEY)
    if session is None:
        session = example.namespace[SESSION_KEY] = DocSession(example.path)
        if example.path.endswith(".py"):
            # A docstring cannot show a prerequisite: its examples run against
            # a standalone node, as after `miyaq node`.
            session.run_shell("miyaq node")
        else:
            example.namespace["__name__"] = "__main__"
    return session


def end_session(namespace: dict[str, Any]) -> None:
    """Sybil's per-document teardown."""
    session = namespace.pop(SESSION_KEY, None)
    if session is not None:
        session.close()


def evaluate_python(example: Example) -> None:
    session = session_for(example)
    source = session.ports.map_text(str(example.parsed))
    header = FILE_HEADER.match(source)
    if header:
        session.write_file(header.group(1), source)
        return
    # Pad so that tracebacks point at the page's own line numbers.
    code = compile("\n" * (example.line + example.parsed.line_offset) + source, example.path, "exec",
                   dont_inherit=True)
    try:
        exec(code, example.namespace)
    except BaseException as exc:
        exc.add_note(f"(python block of {session.name}, line {example.line}){session.logs()}")
        raise
    finally:
        example.namespace.pop("__builtins__", None)


def evaluate_shell(example: Example) -> None:
    session_for(example).run_shell(str(example.parsed))


def evaluate_toml(example: Example) -> None:
    from miyaq.config import NodeConfig
    from miyaq.errors import ConfigError
    session = session_for(example)
    path = session.dir / f".config-line-{example.line}.toml"
    path.write_text(session.ports.map_text(str(example.parsed)))
    try:
        NodeConfig.load({"config": str(path)}, environ={})
    except ConfigError as exc:
        raise AssertionError(f"{session.name}, line {example.line}: miyaq node --config refuses this "
                             f"file: {exc.message}") from None
