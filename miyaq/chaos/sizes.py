"""Sizes of a chaos run's task payloads and results (``--payload``, ``--result``).

A size is a whole number of bytes with an optional binary suffix: ``512``,
``200k`` (200 KiB = 204,800 bytes), ``1m`` (1 MiB), ``1.5m`` (rounded down
to a byte); ``k`` and ``m`` in either case, nothing else; in a spec,
``max`` is the largest size the nodes take. A spec is one
size (every task that size) or a range ``MIN-MAX`` (each task's size drawn
log-uniformly from MIN to MAX inclusive: as many tasks of 1-10 KiB as of
10-100 KiB, so a range of ``1k-1m`` is mostly small tasks with a steady
share of large ones, the mix a real queue sees).

Bounded by the nodes' ``max_payload`` (:func:`largest_payload`,
:func:`largest_result`): a larger task would be refused by the client
(``InvalidField``), a larger result failed by the node; the spec is
refused with a clear ``ConfigError`` naming the bound instead. Pure: no
I/O; the only randomness is the ``random.Random`` handed to
:meth:`SizeSpec.pick`.
"""
from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass

import msgpack

from ..errors import ConfigError

UNITS = {"": 1, "k": 1024, "m": 1024 * 1024}
_SIZE = re.compile(r"(\d+(?:\.\d+)?)([km]?)")
MAX_SEQ = 2 ** 63 - 1
RESULT_ENVELOPE = 5
"""Bytes msgpack adds to a result of bytes (a bin32 header): a result of
``max_payload - 5`` bytes is the largest a node takes."""


def parse_size(text: str, flag: str = "size") -> int:
    """``text`` (see the module docstring) in bytes; ConfigError if it is no size."""
    match = _SIZE.fullmatch(text.strip().lower())
    if match is None:
        raise ConfigError(f"{flag}: {text!r} is no size: a number of bytes, with k (KiB) or m (MiB) after it "
                          f"if you like (512, 200k, 1.5m)")
    return int(float(match.group(1)) * UNITS[match.group(2)])


@dataclass(frozen=True)
class SizeSpec:
    """Sizes from ``low`` to ``high`` bytes, inclusive (one size when equal)."""

    low: int
    high: int

    def __post_init__(self) -> None:
        if not 0 <= self.low <= self.high:
            raise ConfigError(f"a size range runs from a smaller size to a larger one, not {self.low}-{self.high}")

    def pick(self, rng: random.Random) -> int:
        """One size: ``low`` and ``high`` alike when equal, else log-uniform
        between them (over ``size + 1``, so a range from 0 works)."""
        if self.low == self.high:
            return self.low
        size = int(math.exp(rng.uniform(math.log(self.low + 1), math.log(self.high + 2)))) - 1
        return min(max(size, self.low), self.high)

    def mean(self) -> float:
        """The mean size :meth:`pick` draws (of the log-uniform law, to
        within a byte)."""
        if self.low == self.high:
            return float(self.low)
        a, b = self.low + 1, self.high + 2
        return (b - a) / math.log(b / a) - 1.5

    def __str__(self) -> str:
        """As the flag reads it: ``1k-1m``, ``300``."""
        return show(self.low) if self.low == self.high else f"{show(self.low)}-{show(self.high)}"


def show(size: int) -> str:
    """``size`` bytes as :func:`parse_size` reads them back: with ``m`` or
    ``k`` when a whole number of MiB or KiB, else in bytes."""
    for suffix in ("m", "k"):
        if size and size % UNITS[suffix] == 0:
            return f"{size // UNITS[suffix]}{suffix}"
    return str(size)


def parse_spec(text: str, flag: str, largest: int) -> SizeSpec:
    """``SIZE`` or ``MIN-MAX`` to a :class:`SizeSpec`, at most ``largest``
    bytes (ConfigError, naming ``flag``, otherwise); ``max`` for either
    size is ``largest``."""
    parts = text.split("-")
    if len(parts) > 2 or not text.strip():
        raise ConfigError(f"{flag}: {text!r} is neither a size (200k) nor a range of sizes (1k-1m)")
    sizes = [largest if p.strip().lower() == "max" else parse_size(p, flag) for p in parts]
    if sizes[0] > sizes[-1]:
        raise ConfigError(f"{flag} {text}: the range's first size ({sizes[0]}) is larger than its last ({sizes[-1]})")
    if sizes[-1] > largest:
        raise ConfigError(f"{flag} {text}: {sizes[-1]} bytes is more than the nodes take: at most {largest} "
                          f"(their max_payload less what the encoding adds)")
    return SizeSpec(sizes[0], sizes[-1])


def task_body(seconds: float, seq: int, reject: bool, pad: bytes, result: int) -> bytes:
    """A chaos task's body as the client encodes it (``[args, kwargs]``)."""
    return msgpack.packb([[seconds, seq, reject, pad, result], {}], use_bin_type=True)


def payload_envelope() -> int:
    """Bytes a chaos task's body holds beside its padding, at most (a float
    time, the largest sequence number and result size, the flag)."""
    return len(task_body(-1.5, MAX_SEQ, True, b"\0" * 65536, 2 ** 32 - 1)) - 65536


def largest_payload(max_payload: int) -> int:
    """The largest ``--payload`` a node with this ``max_payload`` takes."""
    return max(0, max_payload - payload_envelope())


def largest_result(max_payload: int) -> int:
    """The largest ``--result`` a node with this ``max_payload`` takes."""
    return max(0, max_payload - RESULT_ENVELOPE)


def node_max_payload(node_args: list[str], default: int) -> int:
    """The ``max_payload`` the run's nodes have (:func:`node_setting`)."""
    return node_setting(node_args, "--max-payload", default)


def node_setting(node_args: list[str], flag: str, default: int) -> int:
    """An integer setting the run's nodes have: ``flag`` among ``node_args``
    (``--max-payload=N`` or ``--max-payload N``, the last one given), else
    ``default``. A value that is no integer is left to the node to refuse
    (the default is returned)."""
    value: str | None = None
    for i, arg in enumerate(node_args):
        if arg.startswith(flag + "="):
            value = arg.split("=", 1)[1]
        elif arg == flag and i + 1 < len(node_args):
            value = node_args[i + 1]
    try:
        return int(value) if value is not None else default
    except ValueError:
        return default


def results_fill_seconds(result: SizeSpec, rate: float, replicas: int, nodes: int, max_result_bytes: int) -> float:
    """Seconds until a node holds ``max_result_bytes`` of results, at
    ``rate`` tasks a second each returning :meth:`SizeSpec.mean` bytes, a
    node holding ``replicas / nodes`` of them (every result is kept for
    max(``result_ttl``, ``dedup_window``), an hour by default: longer than
    any run). After that the node refuses submits (``busy``) until results
    expire. ``inf`` when the results are empty."""
    per_second = rate * min(1.0, replicas / max(1, nodes)) * result.mean()
    return math.inf if per_second <= 0 else max_result_bytes / per_second
