"""A count per key, read as 0 for a key never counted, at a dict's speed.

:class:`Tally` reads like :class:`collections.Counter` (a missing key is 0
and reading it adds nothing) and writes like a plain ``dict``. Counter
defines ``__delitem__``, so CPython gives every Counter the generic
item-assignment slot: each ``counter[key] += 1`` looks ``__setitem__`` up by
name and calls dict's through a wrapper, about 2.5 times a dict's cost
(124 against 50 ns a ``+= 1`` on the 2-core machine of docs/performance.md).
A node counts every state move of every task this way (the engine's counts
per queue and state, its outcomes, the long-poll waiters), eleven times a
``call()``. A Tally overrides only ``__missing__``, which keeps dict's own
slot; it has none of Counter's arithmetic.
"""
from __future__ import annotations

from typing import TypeVar

_K = TypeVar("_K")


class Tally(dict[_K, int]):
    """``dict`` of counts in which a missing key reads 0 (and is not added)."""

    __slots__ = ()

    def __missing__(self, key: _K) -> int:
        return 0
