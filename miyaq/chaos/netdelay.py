"""A delaying link in user space, for kernels without ``netem``.

``python -m miyaq.chaos.netdelay --queue Q --delay S --jitter S`` runs in a
node's network namespace (``ip netns exec``, started by the chaos run) and
binds netfilter queue ``Q`` there (nfnetlink_queue, spoken directly over a
netlink socket: no library needed). The ``delay`` fault then sends every
packet the node receives (``iptables -A INPUT ! -i lo -j NFQUEUE
--queue-num Q --queue-bypass``, :func:`miyaq.chaos.firewall.to_queue`) to
this process, which holds each one for ``delay`` ± ``jitter`` seconds
(uniform) and lets it go (``NF_ACCEPT``). Packets are released in the order
their time comes, not the order they came: a jitter larger than the gap
between two packets reorders them, as netem's does.

Queue packets where they arrive (INPUT or PREROUTING), not where they
leave (OUTPUT, POSTROUTING). A packet held on the sending side still
belongs to its TCP socket, and TCP Small Queues let a connection have
only about two packets in its host's queues at once (a real NIC sends
them in microseconds; netem orphans the packets it delays for this very
reason): a hold of ``delay`` then makes a link of about 4-5 KB per
``delay``, whatever the congestion window -- 36 KB/s at 100 ms, 100 KB/s
at 50 ms, 450 KB/s at 10 ms, measured with cubic and bbr alike -- not a
link of that round trip. A replicated burst of 2,000 submits then took 3-4 s at 100 ms, and
hundreds were refused at ``replication_timeout`` (2026-12-06, thirty-first
session; docs/performance-log.md). Queued at INPUT the same link moves
300 KB in 0.52 s (TCP's slow start) instead of 2.8 s. The process says so
on stderr, once, when it is handed packets from the sending side.

Bounded: the kernel queues at most ``MAX_QUEUED`` packets for this process
and lets the others through undelayed (fail-open), so the heap never holds
more. With ``--queue-bypass`` in the rule, packets pass undelayed when no
process is bound. On SIGTERM every packet still held is released at once,
then the process exits (0).

Prints ``bound queue Q`` on stdout once it is ready. Linux only, root (or
CAP_NET_ADMIN in the namespace). No gevent: a plain ``select`` loop.
"""
from __future__ import annotations

import argparse
import heapq
import os
import random
import select
import signal
import socket
import struct
import sys
import time
from types import FrameType

NETLINK_NETFILTER = 12
NFNL_SUBSYS_QUEUE = 3
MSG_PACKET, MSG_VERDICT, MSG_CONFIG = 0, 1, 2
NLMSG_ERROR = 2
NLM_F_REQUEST, NLM_F_ACK = 1, 4
CFG_CMD, CFG_PARAMS, CFG_QUEUE_MAXLEN, CFG_MASK, CFG_FLAGS = 1, 2, 3, 4, 5
CMD_BIND = 1
COPY_META = 1
FLAG_FAIL_OPEN = 1
PACKET_HDR = 1
LOCAL_OUT, POST_ROUTING = 3, 4
SENDING_HOOKS = frozenset({LOCAL_OUT, POST_ROUTING})
"""Netfilter hooks on the sending side: a packet queued there is still
charged to its socket (see the module docstring)."""
SENDING_SIDE_WARNING = (
    "netdelay: packets are queued where they leave this host (OUTPUT or POSTROUTING): each one held stays "
    "charged to its TCP socket, and TCP Small Queues let a connection have about two packets held at once -- "
    "the link becomes one of about 5 KB per hold, not one of this delay. Queue them where they arrive: "
    "iptables -A INPUT ! -i lo -j NFQUEUE ...\n")
VERDICT_HDR = 2
NF_ACCEPT = 1
MAX_QUEUED = 4096
RCVBUF = 8 << 20


def _attr(kind: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return struct.pack("HH", length, kind) + payload + b"\0" * (-length % 4)


def _message(kind: int, queue: int, attrs: list[bytes], flags: int = NLM_F_REQUEST) -> bytes:
    body = struct.pack("BBH", socket.AF_UNSPEC, 0, socket.htons(queue)) + b"".join(attrs)
    return struct.pack("IHHII", 16 + len(body), (NFNL_SUBSYS_QUEUE << 8) | kind, flags, 0, 0) + body


def packet_ids(data: bytes) -> list[int]:
    """The packet ids of every queued-packet message in one netlink read."""
    return [packet for packet, _ in queued_packets(data)]


def queued_packets(data: bytes) -> list[tuple[int, int]]:
    """``(packet id, netfilter hook)`` of every queued-packet message in one
    netlink read (a torn or foreign message is skipped)."""
    ids: list[tuple[int, int]] = []
    offset = 0
    while offset + 16 <= len(data):
        length, kind = struct.unpack_from("IH", data, offset)
        if length < 16:
            break
        if kind == (NFNL_SUBSYS_QUEUE << 8) | MSG_PACKET:
            attr = offset + 20           # netlink header, then nfgenmsg
            while attr + 4 <= offset + length:
                attr_len, attr_kind = struct.unpack_from("HH", data, attr)
                if attr_len < 4:
                    break
                if attr_kind & 0x7FFF == PACKET_HDR and attr_len >= 8:
                    # nfqnl_msg_packet_hdr: packet id (be32), hw_protocol (be16), hook (u8)
                    hook = data[attr + 10] if attr_len >= 11 else -1
                    ids.append((struct.unpack_from(">I", data, attr + 4)[0], hook))
                attr += (attr_len + 3) & ~3
        offset += (length + 3) & ~3
    return ids


class DelayQueue:
    """One bound netfilter queue and the packets it holds (see the module docstring)."""

    def __init__(self, queue: int, delay: float, jitter: float, rng: random.Random | None = None) -> None:
        self.queue = queue
        self.delay = delay
        self.jitter = jitter
        self.rng = rng or random.Random()
        self.held: list[tuple[float, int]] = []      # (release time, packet id), a heap
        self.warned = False                          # SENDING_SIDE_WARNING said
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
        self.sock.bind((0, 0))
        self._configure([_attr(CFG_CMD, struct.pack("BxH", CMD_BIND, 0))])
        self._configure([_attr(CFG_PARAMS, struct.pack(">IB", 0, COPY_META)),
                         _attr(CFG_QUEUE_MAXLEN, struct.pack(">I", MAX_QUEUED)),
                         _attr(CFG_MASK, struct.pack(">I", FLAG_FAIL_OPEN)),
                         _attr(CFG_FLAGS, struct.pack(">I", FLAG_FAIL_OPEN))])

    def _configure(self, attrs: list[bytes]) -> None:
        self.sock.send(_message(MSG_CONFIG, self.queue, attrs, NLM_F_REQUEST | NLM_F_ACK))
        answer = self.sock.recv(65536)
        _, kind = struct.unpack_from("IH", answer)
        if kind == NLMSG_ERROR:
            error = struct.unpack_from("i", answer, 16)[0]
            if error:
                raise OSError(-error, f"configuring netfilter queue {self.queue}: {os.strerror(-error)}")

    def run(self, stop: list[bool]) -> None:
        """Hold and release packets until ``stop[0]``; then release everything."""
        while not stop[0]:
            wait = max(0.0, self.held[0][0] - time.monotonic()) if self.held else 0.5
            try:
                ready, _, _ = select.select([self.sock], [], [], wait)
            except InterruptedError:
                continue
            if ready:
                self._read()
            self.release(time.monotonic())
        self.release(float("inf"))

    def _read(self) -> None:
        try:
            data = self.sock.recv(1 << 20)
        except OSError:        # ENOBUFS: notifications lost; those packets pass when the queue unbinds
            return
        now = time.monotonic()
        for packet, hook in queued_packets(data):
            if hook in SENDING_HOOKS and not self.warned:
                self.warned = True
                sys.stderr.write(SENDING_SIDE_WARNING)
                sys.stderr.flush()
            hold = max(0.0, self.delay + self.rng.uniform(-self.jitter, self.jitter))
            heapq.heappush(self.held, (now + hold, packet))

    def release(self, now: float) -> None:
        while self.held and self.held[0][0] <= now:
            _, packet = heapq.heappop(self.held)
            verdict = _attr(VERDICT_HDR, struct.pack(">II", NF_ACCEPT, packet))
            try:
                self.sock.send(_message(MSG_VERDICT, self.queue, [verdict]))
            except OSError:
                pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m miyaq.chaos.netdelay", description=__doc__.split("\n\n")[0])
    parser.add_argument("--queue", type=int, required=True)
    parser.add_argument("--delay", type=float, required=True, help="seconds each packet is held (mean)")
    parser.add_argument("--jitter", type=float, default=0.0, help="± seconds, uniform")
    args = parser.parse_args(argv)
    if args.delay < 0 or args.jitter < 0 or not 0 <= args.queue < 65536:
        parser.error("--delay and --jitter must not be negative; --queue is 0..65535")
    stop = [False]

    def on_term(signum: int, frame: FrameType | None) -> None:
        stop[0] = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    queue = DelayQueue(args.queue, args.delay, args.jitter)
    sys.stdout.write(f"bound queue {args.queue}\n")
    sys.stdout.flush()
    queue.run(stop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
