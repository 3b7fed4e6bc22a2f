"""The fault kinds by name: the default mix, the kinds each flag adds, and
how ``--faults`` is read (:func:`parse_kinds`) and the nemesis's order of
trying them (:func:`choose`). What a kind is: :mod:`.fault_kind`.
"""
from __future__ import annotations

import random

from ..errors import ConfigError
from .fault_kind import FaultKind
from .hostfaults import HOST_KINDS
from .netfaults import NETWORK_KINDS
from .nodefaults import NODE_KINDS
from .zkfaults import ZK_KINDS

KINDS_DEFAULT = ("kill", "pause", "leader", "worker", "zk", "wipe")
KINDS_NETWORK = ("partition", "isolate", "deaf", "mute", "zkcut", "lossy", "delay", "slow", "duplicate", "split")
KINDS_ZK = ("zkserver", "zkleader", "zkquorum")
"""With ``--zk-servers`` 3 or more (in the default mix then)."""
KINDS_ZK_NETWORK = ("zkminority",)
"""With ``--zk-servers`` 3 or more and ``--partitions``."""
ZK_FAULTS = ("zk", *KINDS_ZK, *KINDS_ZK_NETWORK)
"""Kinds that break ZooKeeper: one at a time."""
KINDS_HOST = ("clock", "diskfull")
"""Not in the default mix: ``clock`` needs faketime, ``diskfull`` root."""

KINDS: dict[str, FaultKind] = {k.name: k() for k in (*NODE_KINDS, *NETWORK_KINDS, *HOST_KINDS, *ZK_KINDS)}


def parse_kinds(text: str | None, partitions: bool, zk_servers: int = 1) -> list[str]:
    """``--faults`` to a list of kinds: comma-separated names, ``all``,
    ``none``, or empty for the default mix (plus the network kinds with
    ``--partitions``, the ensemble's with ``--zk-servers`` 3 or more)."""
    ensemble = zk_servers >= 3
    if text is None or not text.strip():
        return (list(KINDS_DEFAULT) + (list(KINDS_NETWORK) if partitions else [])
                + (list(KINDS_ZK) if ensemble else []) + (list(KINDS_ZK_NETWORK) if ensemble and partitions else []))
    text = text.strip().lower()
    if text == "none":
        return []
    if text == "all":
        return list(KINDS_DEFAULT) + list(KINDS_NETWORK) + list(KINDS_HOST) + list(KINDS_ZK) + list(KINDS_ZK_NETWORK)
    kinds = [k.strip() for k in text.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        raise ConfigError(f"unknown fault kind(s) {', '.join(unknown)}; choose from {', '.join(KINDS)}")
    return list(dict.fromkeys(kinds))


def choose(kinds: list[str], rng: random.Random, injected: dict[str, int] | None = None) -> list[FaultKind]:
    """The enabled kinds in the order the nemesis tries them: random, or
    (``injected``: how many times each kind was injected so far) rounds:
    only the kinds injected fewest times, in the given order -- a kind that
    has to wait for the node budget is waited for, not passed over by the
    kinds that need none, and every kind comes once a round."""
    order = list(kinds)
    if injected is None:
        rng.shuffle(order)
    elif order:
        least = min(injected.get(k, 0) for k in order)
        order = [k for k in order if injected.get(k, 0) == least]
    return [KINDS[k] for k in order]
