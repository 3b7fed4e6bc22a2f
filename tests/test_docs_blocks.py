"""The shape of the documentation's code blocks, checked without running them.

Every fenced block says what it is (a runnable language, or a sample), so no
command escapes the doc tests by having no language; a ``not-run`` marker
has a reason and stands right before a runnable block; runnable blocks talk
to loopback only. docs/writing-docs.md states these rules for writers.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest
from sybil import Document
from sybil.parsers.markdown.lexers import RawFencedCodeBlockLexer

from tests.docrun.collect import DOC_PATTERNS, NOT_RUN, ROOT, RUN_LANGUAGES, SAMPLE_LANGUAGES

PAGES = sorted({p for pattern in DOC_PATTERNS for p in ROOT.glob(pattern)})
_LEXER = RawFencedCodeBlockLexer(info_pattern=re.compile(r"(?P<info>[^\n]*)\n"))
_NOT_RUN = re.compile(rf"^[ \t]*<!--\s*{NOT_RUN}:?(?P<reason>.*?)-->", re.DOTALL | re.MULTILINE)
_NON_LOOPBACK = re.compile(r"\b(?!127\.)(\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3})\b")


def _blocks(page: Path) -> list[tuple[int, int, str, str]]:
    """(start, end, info, source) of every fenced block."""
    doc = Document(page.read_text(), str(page))
    return [(r.start, r.end, r.lexemes["info"].strip(), str(r.lexemes["source"])) for r in _LEXER(doc)]


def _line(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_block_says_whether_it_runs(page: Path) -> None:
    """Fault: a block without a language (or with a misspelt one) would silently never run."""
    text = page.read_text()
    known = set(RUN_LANGUAGES) | SAMPLE_LANGUAGES
    wrong = [f"line {_line(text, start)}: {info or '(no language)'}"
             for start, _, info, _ in _blocks(page) if info.split()[:1] != [info] or info not in known]
    assert not wrong, (f"{page.name}: every fenced block needs one of {sorted(known)} as its language "
                       f"(runnable: {sorted(RUN_LANGUAGES)}); found {wrong}")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_not_run_markers_have_a_reason_and_a_runnable_block(page: Path) -> None:
    """Fault: a marker with no reason, or one that would skip some later block instead of the next one."""
    text = page.read_text()
    blocks = _blocks(page)
    for marker in _NOT_RUN.finditer(text):
        where = f"{page.name}, line {_line(text, marker.start())}"
        assert marker.group("reason").strip(), f"{where}: '<!-- {NOT_RUN}: REASON -->' needs a reason"
        following = [b for b in blocks if b[0] >= marker.end()]
        assert following and not text[marker.end():following[0][0]].strip(), \
            f"{where}: a {NOT_RUN} marker must stand right before the block it marks"
        assert following[0][2] in RUN_LANGUAGES, \
            f"{where}: marks a {following[0][2] or 'plain'} block, which never runs anyway"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_runnable_blocks_stay_on_loopback(page: Path) -> None:
    """Fault: a doc test that would send traffic beyond this machine."""
    text = page.read_text()
    marker_ends = [m.end() for m in _NOT_RUN.finditer(text)]
    for start, _, info, source in _blocks(page):
        marked = any(not text[end:start].strip() for end in marker_ends if end <= start)
        if info in ("python", "sh", "bash") and not marked:
            others = _NON_LOOPBACK.findall(source)
            assert not others, (f"{page.name}, line {_line(text, start)}: a runnable block may use "
                                f"loopback addresses only, not {others}; mark it {NOT_RUN} or use 127.0.0.1")
