"""The Sybil configuration: which files, which blocks, how each runs.

Sybil turns every runnable block of a page into one pytest item, run in the
page's order in one namespace, with a setup and teardown per page -- what
"follow the page from top to bottom" needs. Blocks tagged ``python``, ``sh``
(or ``bash``) and ``toml`` run; every other block is a sample (output, a
wire frame, JSON) and is never run. ``<!-- not-run: REASON -->`` right
before a runnable block makes it a skipped item whose reason pytest reports.
"""
from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from sybil import Document, Region, Sybil
from sybil.sybil import SybilCollection
from sybil.evaluators.skip import Skipper
from sybil.parsers.abstract.lexers import LexerCollection
from sybil.parsers.markdown import CodeBlockParser
from sybil.parsers.markdown.lexers import DirectiveInHTMLCommentLexer
from sybil.parsers.rest import CodeBlockParser as RestCodeBlockParser

from .evaluators import end_session, evaluate_python, evaluate_shell, evaluate_toml

DOC_PATTERNS = ("README.md", "docs/*.md")
PUBLIC_API = ("miyaq/__init__.py", "miyaq/client/client.py", "miyaq/client/handle.py", "miyaq/app.py",
              "miyaq/worker/context.py", "miyaq/errors.py")
"""Modules whose docstrings' ``.. code-block:: python`` examples run, against a node the runner starts."""
SAMPLE_LANGUAGES = frozenset({"text", "json", "http", "yaml"})
"""Blocks that are never run: output, wire frames, request samples, manifests."""
RUN_LANGUAGES = {"python": evaluate_python, "sh": evaluate_shell, "bash": evaluate_shell, "toml": evaluate_toml}
NOT_RUN = "not-run"
ROOT = Path(__file__).resolve().parents[2]


class NotRunParser:
    """``<!-- not-run: REASON -->``: the next runnable block is reported as skipped, with REASON."""

    def __init__(self) -> None:
        self.lexers = LexerCollection([DirectiveInHTMLCommentLexer(NOT_RUN, arguments=".+?")])
        self.skipper = Skipper(NOT_RUN)

    def __call__(self, document: Document) -> Iterable[Region]:
        for lexed in self.lexers(document):
            reason = (lexed.lexemes.get("arguments") or "").strip()
            if not reason:
                raise ValueError(f"{document.path}: '<!-- {NOT_RUN}: -->' needs a reason")
            where = f"{Path(document.path).name}:{document.text.count(chr(10), 0, lexed.start) + 2}"
            yield Region(lexed.start, lexed.end, ("next", repr(f"{where} not run: {reason}")), self.skipper)


def make_sybil() -> SybilCollection:
    pages = Sybil(parsers=[NotRunParser()] + [CodeBlockParser(language, evaluator)
                                              for language, evaluator in RUN_LANGUAGES.items()],
                  patterns=list(DOC_PATTERNS), path=str(ROOT), teardown=end_session)
    docstrings = Sybil(parsers=[RestCodeBlockParser("python", evaluate_python)],
                       patterns=list(PUBLIC_API), path=str(ROOT), teardown=end_session)
    return pages + docstrings


pytest_collect_file = make_sybil().pytest()
