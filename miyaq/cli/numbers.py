"""Numbers on the command line: argparse types that refuse what no command can use.

``type=int`` and ``type=float`` let through what only fails later, after
something was sent: an integer too big for msgpack (a traceback once the
task was built), a negative wait (a traceback after the node had accepted
the task), NaN or infinity (a ``--duration nan`` that never ends, a
comparison that is always false). Each factory here returns a parser for
one option's range; a value outside it is an argparse usage error (exit
status 2) naming the option, before any connection is made.

The ranges are the widest each option can mean; what a node bounds more
tightly (a queue's name, a countdown's ten years) it still checks and
answers with an error of its own.
"""
from __future__ import annotations

import argparse
import math
from typing import Callable

#: The widest integer an option takes: a signed 32-bit one, what a node
#: reads any integer field as unless told a narrower range.
INT32 = (-(2**31), 2**31 - 1)
#: The longest wait or delay in seconds an option takes: ten years, a
#: node's bound on a task's countdown.
MAX_SECONDS = 10 * 365 * 86400.0


def integer(lo: int = INT32[0], hi: int = INT32[1]) -> Callable[[str], int]:
    """A parser of a whole number from ``lo`` to ``hi``, both included."""
    def parse(text: str) -> int:
        try:
            value = int(text.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"expects a whole number, not {text!r}") from None
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"must be from {lo:,} to {hi:,}, not {text}")
        return value
    parse.__name__ = "integer"
    return parse


def real(lo: float = -math.inf, hi: float = math.inf, *, above: bool = False) -> Callable[[str], float]:
    """A parser of a finite number from ``lo`` to ``hi`` (``above``: greater
    than ``lo``, not equal). NaN and infinity are refused always."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expects a number, not {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"expects a finite number, not {text}")
        if value < lo or (above and value == lo) or value > hi:
            low = f"above {lo:g}" if above else f"at least {lo:g}"
            high = f" and at most {hi:g}" if hi != math.inf else ""
            raise argparse.ArgumentTypeError(f"must be {low}{high}, not {text}")
        return value
    parse.__name__ = "number"
    return parse


#: Seconds to wait or to delay: 0 to ten years.
seconds = real(0.0, MAX_SECONDS)
#: A span of time that must pass: above 0, at most ten years.
positive_seconds = real(0.0, MAX_SECONDS, above=True)
#: A count of things (tasks, processes, nodes): at least 1.
positive = integer(1)
#: A count that may be none at all.
nonnegative = integer(0)

__all__ = ["INT32", "MAX_SECONDS", "integer", "nonnegative", "positive", "positive_seconds", "real", "seconds"]
