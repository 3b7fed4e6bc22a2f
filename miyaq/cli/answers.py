"""Reading what a node or a gateway answered, to print it.

The commands print answers by their fields (``status["totals"]["live"]``).
An answer without them -- from another program listening at that address, a
node of another version, a buggy or hostile one -- must end the command with
one clear line, not a traceback: :func:`reading` turns the lookup errors of
the printing code into a :class:`~miyaq.errors.ProtocolError` naming where
the answer came from and what was wrong with it.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from ..errors import ProtocolError

SHAPE_ERRORS = (KeyError, IndexError, TypeError, ValueError, AttributeError)
"""What indexing, formatting or serialising an answer of the wrong shape raises."""
SHOWN = 120
"""Characters of the lookup error's text shown at most (an answer is untrusted
and may be large)."""


@contextmanager
def reading(source: str, *, raw_hint: bool = True) -> Iterator[None]:
    """Run the code that prints an answer from ``source`` (e.g. "the node at
    tcp://127.0.0.1:7450"). A shape error inside becomes ``ProtocolError``;
    ``raw_hint``: the command has ``--json``, which prints the answer as it
    came, and the message says so."""
    try:
        yield
    except SHAPE_ERRORS as exc:
        raise ProtocolError(f"unexpected answer from {source}: {describe(exc)} (is it a miyaq node of this "
                            "version?" + (" --json prints the answer as it came)" if raw_hint else ")"),
                            source=source) from None


def describe(exc: BaseException) -> str:
    """What was wrong, in a few words: a missing field by name, else the
    error's own text, cut to :data:`SHOWN` characters."""
    if isinstance(exc, KeyError) and exc.args:
        return f"no field {str(exc.args[0])[:SHOWN]!r}"
    text = str(exc)
    if len(text) > SHOWN:
        text = text[:SHOWN] + "..."
    return f"{type(exc).__name__}: {text}"
