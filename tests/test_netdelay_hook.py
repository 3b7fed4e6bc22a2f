"""The chaos harness's delaying link holds packets where they arrive.

A packet held by the user-space delay (:mod:`miyaq.chaos.netdelay`) at
OUTPUT still belongs to its TCP socket, and TCP Small Queues let a
connection have about two packets in its host's queues at once: the link
then carried about 4-5 KB per hold (100 KB/s at 50 ms) whatever TCP's
window, and a replicated burst of 2,000 submits over a 100 ms round trip
was refused ``not_enough_replicas`` by the hundreds (2026-12-06,
docs/performance-log.md). No network here: the rule's chain, and the
queue's reading of the hook each packet was queued at.
"""
from __future__ import annotations

import random
import struct

from miyaq.chaos import netdelay
from miyaq.chaos.firewall import to_queue

LOCAL_IN = 1


def _queued_packet(packet_id: int, hook: int) -> bytes:
    """One nfnetlink_queue "packet" message as the kernel sends it: its
    header attribute only (11 bytes long: id, hw_protocol, hook; padded to 12)."""
    attr = struct.pack("HH", 4 + 7, netdelay.PACKET_HDR) + struct.pack(">IHB", packet_id, 0x0800, hook) + b"\0"
    body = struct.pack("BBH", 0, 0, 0) + attr
    kind = (netdelay.NFNL_SUBSYS_QUEUE << 8) | netdelay.MSG_PACKET
    return struct.pack("IHHII", 16 + len(body), kind, 0, 0, 0) + body


class _Reads:
    """A netlink socket that returns the given reads, one per recv."""

    def __init__(self, reads: list[bytes]) -> None:
        self.reads = reads

    def recv(self, size: int) -> bytes:
        return self.reads.pop(0)


def _queue(reads: list[bytes]) -> netdelay.DelayQueue:
    queue = netdelay.DelayQueue.__new__(netdelay.DelayQueue)     # no netlink socket: the reads given
    queue.queue, queue.delay, queue.jitter, queue.rng = 7, 0.05, 0.0, random.Random(1)
    queue.held, queue.warned = [], False
    queue.sock = _Reads(reads)
    return queue


def test_the_delay_fault_queues_the_packets_a_node_receives_not_those_it_sends() -> None:
    """Fault: the ``delay`` fault's rule sent the packets a node sends
    (OUTPUT) to the queue; each one held stayed charged to its TCP socket
    (TCP Small Queues), so the link carried about 5 KB per hold instead of
    having that round trip. The rule now takes what the node receives, as
    a real link's delay does not touch the sender's queues."""
    chain, spec = to_queue(7)
    assert chain == "INPUT"
    assert spec[:3] == ("!", "-i", "lo")
    assert spec[spec.index("--queue-num") + 1] == "7" and "--queue-bypass" in spec


def test_the_delaying_queue_reads_each_packets_hook_and_says_once_when_it_is_the_sending_side(capsys) -> None:
    """Fault: handed packets queued at OUTPUT the queue delayed them without a
    word, and a run measured a link some 20 times slower than the delay it
    asked for. It now says so on stderr, once, and still delays them;
    packets queued where they arrive (INPUT) pass without a word."""
    assert netdelay.queued_packets(_queued_packet(5, LOCAL_IN) + _queued_packet(6, netdelay.LOCAL_OUT)) == [
        (5, LOCAL_IN), (6, netdelay.LOCAL_OUT)]
    arriving = _queue([_queued_packet(1, LOCAL_IN) + _queued_packet(2, LOCAL_IN)])
    arriving._read()
    assert sorted(packet for _, packet in arriving.held) == [1, 2]
    assert capsys.readouterr().err == "" and not arriving.warned

    leaving = _queue([_queued_packet(3, netdelay.LOCAL_OUT), _queued_packet(4, netdelay.POST_ROUTING)])
    leaving._read()
    leaving._read()
    assert sorted(packet for _, packet in leaving.held) == [3, 4]
    err = capsys.readouterr().err
    assert err.count("netdelay:") == 1 and "TCP Small Queues" in err and "INPUT" in err
