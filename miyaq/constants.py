"""The node's fixed numbers: intervals and bounds that are part of how it
works rather than settings an operator tunes (those are in
:mod:`miyaq.config`, with their documentation).

One place, so a reader finds each number once, with why it has its value.
"""
from __future__ import annotations

#: Seconds the process may go without running its housekeeping before it
#: counts as frozen (SIGSTOP, swap, a VM pause) rather than merely busy.
STALL = 2.0

#: Seconds between two passes of the node's housekeeping loop (long-poll
#: deadlines, worker heartbeats, freeze detection).
HOUSEKEEPING_INTERVAL = 0.1
