"""One multipart message on a plain ZeroMQ socket.

:func:`send_frames` and :func:`recv_frames` send and read a message
without pyzmq's per-frame overhead; :func:`recv_bounded` and
:func:`recv_with_user` read one, within limits or with the User-Id its
connection authenticated as, and say where it came from
(:class:`MessageSource`, :class:`SenderAddress`). The socket the gevent
hub drives reads and sends with them: :mod:`.hub_socket`. Sockets are
made by :class:`miyaq.runtime.sockets.SocketFactory`.
"""
from __future__ import annotations

from typing import Any, Sequence

import zmq

_zmq_poll = zmq.backend.zmq_poll
_POLLIN = int(zmq.POLLIN)
# -- sending ----------------------------------------------------------------------------
# pyzmq's send_multipart ORs SNDMORE into the flags of every frame with Python enum
# arithmetic and sends each frame through its keyword-checking send: 9-13 us of CPU
# for a four-frame message, against 3-4 us for the same frames sent one by one with
# the flags computed once as plain ints (docs/performance-log.md, "Sending frames"), and
# through the Cython backend's send: the sugar's send only adds a Python call that
# forwards its arguments as keywords when, as here, no routing_id or group is given.
_backend_send = zmq.backend.Socket.send
_MORE_NOW = int(zmq.SNDMORE | zmq.NOBLOCK)
_NOW = int(zmq.NOBLOCK)


def send_frames(sock: Any, frames: Sequence[bytes]) -> None:
    """``sock.send_multipart(frames, zmq.NOBLOCK)`` on a plain socket, with the same outcome
    (not for ``zmq.green`` sockets: their ``send`` re-reads the socket's state after
    every frame unless called from their own ``send_multipart``).

    libzmq takes a multipart message whole or not at all: room is checked
    when its first frame is sent, so ``zmq.Again`` (no room, or no such
    peer on a ``ROUTER``) can only come from the first frame, and nothing of
    the message has been queued then. ``frames`` must not be empty.

    An exception raised between two frames -- a KeyboardInterrupt in the
    thread that sends, the only kind that can come there -- would leave the
    message open, and the socket would glue the next message onto it: the
    peer drops both (``expected 3 frames``). So once its first frame is
    queued the message is always ended, with an empty last frame if need be
    (the peer refuses that one message, counted), before the exception goes on."""
    last = len(frames) - 1
    if last == 0:
        _backend_send(sock, frames[0], _NOW)
        return
    _backend_send(sock, frames[0], _MORE_NOW)
    sent = 1
    try:
        while sent < last:
            _backend_send(sock, frames[sent], _MORE_NOW)
            sent += 1
        _backend_send(sock, frames[last], _NOW)
        sent = last + 1
    except BaseException:
        if sent <= last:
            _backend_send(sock, b"", _NOW)       # close the message: the next one stands alone
        raise


# -- receiving --------------------------------------------------------------------------
def has_message(sock: Any) -> bool:
    """A message can be received from the plain socket ``sock`` now. Like
    reading ``ZMQ_EVENTS`` it makes libzmq process the socket's pending
    commands (a system call), so it may take the edge of the socket's
    descriptor. It asks through libzmq's ``zmq_poll`` with a zero timeout
    (pyzmq's Cython backend), which reads ``ZMQ_EVENTS`` in C: pyzmq's
    getsockopt first turns the option into an enum in Python, three times
    the instructions of the rest (docs/performance-log.md, "Asking whether a
    message waits"). ``zmq_poll`` adds a zero-timeout ``poll`` of the
    descriptor (0.2 µs) and lets go of the GIL for the call. The client's
    I/O loop asks through it too."""
    return bool(_zmq_poll([(sock, _POLLIN)], 0))


def recv_frames(sock: Any, flags: int = 0) -> list[bytes]:
    """``sock.recv_multipart(flags)`` on a plain socket, with the same outcome
    (not for ``zmq.green`` sockets, whose ``recv`` wakes their waiters).

    pyzmq's recv_multipart asks ``RCVMORE`` after every frame through
    ``getsockopt``, which converts the option to an enum in Python each
    time; a frame received without copying carries that flag already (read
    in C), so each frame is read that way and copied out. libzmq delivers a
    multipart message whole: with ``NOBLOCK``, ``zmq.Again`` (nothing waits)
    can only come from the first frame."""
    recv = sock.recv        # looked up once: pyzmq's sockets have a __getattr__, which slows every lookup
    frame = recv(flags, copy=False)
    frames = [frame.bytes]
    while frame.more:
        frame = recv(flags, copy=False)
        frames.append(frame.bytes)
    return frames


def recv_with_user(sock: Any, flags: int = 0) -> tuple[list[bytes], str | None]:
    """One multipart message and the User-Id its connection authenticated as
    (None without CURVE). Reads the first frame as a zero-copy frame to get
    its metadata, the rest as bytes; raises like ``recv`` (``zmq.Again``)."""
    first = sock.recv(flags, copy=False)
    try:
        user: str | None = first.get("User-Id")
    except zmq.ZMQError:
        user = None
    frames = [first.bytes]
    while sock.getsockopt(zmq.RCVMORE):
        frames.append(sock.recv())
    return frames, user


class MessageRefused(Exception):
    """A message :func:`recv_bounded` read to its end but did not keep: it had
    more frames than allowed (``reason="frames"``) or more bytes
    (``"bytes"``). ``head`` is its first frame (a ROUTER's routing id, to
    answer it), ``frames`` and ``size`` what it really held."""

    def __init__(self, head: bytes, user: str | None, frames: int, size: int, reason: str) -> None:
        super().__init__(f"message of {frames} frames and {size} bytes refused ({reason})")
        self.head = head
        self.user = user
        self.frames = frames
        self.size = size
        self.reason = reason


def source_fd(part: Any) -> int:
    """The descriptor of the connection ``part`` came by, or -1 when libzmq
    cannot tell: a message of a ZMTP 1.0 or 2.0 connection carries no
    metadata, and asking raises EINVAL. Before 2026-12-05 that escaped and
    ended the node's critical reader: five bytes of ZMTP 1.0 (or any first
    byte other than 0xFF, which libzmq takes for ZMTP 1.0) stopped a node
    without keys, on the service port and on the peer port."""
    try:
        return int(part.get(zmq.SRCFD))
    except zmq.ZMQError:
        return -1


class MessageSource:
    """Where the last message a socket read came from (:func:`recv_bounded`
    fills it): ``fd``, its connection's descriptor (libzmq's ``ZMQ_SRCFD``,
    -1 if it has none: the unread-answers accounting), and ``frame``, a
    frame of it (its first after the routing id: a tag of three bytes, for a
    client), kept until the next read so a line about a refused message can
    name the sender (:class:`SenderAddress`) -- read only when one is
    written."""

    __slots__ = ("fd", "frame")

    def __init__(self) -> None:
        self.fd = -1
        self.frame: Any = None


class SenderAddress:
    """The IP address a message came from, as libzmq stored it with the
    message (its ``Peer-Address`` metadata), formatted only when a log line
    is written: a flood of refusals the line's rate drops costs an object
    each, no system call. An ipc connection says which process it is
    (libzmq's ``localhost:uid:gid:pid``).

    Not the port: only the connection's descriptor has it (``getpeername``),
    and libzmq closes a descriptor as soon as its connection ends, the
    number then reused by the next one. With senders that connect, send one
    bad message and close, up to 85% of such lines named another connection
    (review, 2026-12-06); the metadata named the right IP in 300 of 300."""

    __slots__ = ("frame",)

    def __init__(self, frame: Any) -> None:
        self.frame = frame

    def __str__(self) -> str:
        if self.frame is None:
            return "an address libzmq did not give"
        try:
            address = str(self.frame.get("Peer-Address"))
        except zmq.ZMQError:
            return "an address libzmq did not give (a ZMTP 1.0 or 2.0 peer)"
        parts = address.split(":")
        if len(parts) == 4 and parts[0] == "localhost":
            return f"a unix socket (process {parts[3]}, uid {parts[1]})"
        return address[:64] or "an address libzmq did not give"


def recv_bounded(sock: Any, max_frames: int, max_bytes: int, flags: int = 0,
                 with_user: bool = True, routed: bool = False,
                 source: MessageSource | None = None) -> tuple[list[bytes], str | None]:
    """One multipart message and the User-Id its connection authenticated as
    (None without CURVE, or when ``with_user`` is false: asking costs an
    exception per message on a socket without CURVE), keeping at most
    ``max_frames`` frames and ``max_bytes`` bytes (every frame counted, the
    first included).

    Frames are read one by one without copying; a frame past either limit is
    dropped as soon as it is read, the rest of the message drained the same
    way, and :class:`MessageRefused` raised once the message is over, so the
    next read starts at the next message. Raises like ``recv`` (``zmq.Again``
    with NOBLOCK when no message waits).

    ``routed``: ``sock`` is a ROUTER, whose first frame (the routing id
    libzmq puts before every message) always has more after it, so it is
    read as bytes unless its User-Id is wanted: pyzmq makes a ``zmq.Frame``
    for every frame read without copying, about 3,000 instructions made and
    freed (docs/performance-log.md, "What a frame costs").

    ``source``: gets the descriptor of the connection the message came by
    (libzmq's ``ZMQ_SRCFD``, read from its second frame; -1 if it has none)
    and that frame (:class:`MessageSource`).

    libzmq delivers a multipart message only once all of it has arrived, and
    bounds only each frame (``MAXMSGSIZE``): this reader bounds what the
    process keeps of it, not what libzmq buffered while it came in."""
    user: str | None = None
    recv = sock.recv        # looked up once (see recv_frames)
    if routed and not with_user:
        head = recv(flags)
        more = True
    else:
        first = recv(flags, copy=False)
        if with_user:
            try:
                user = first.get("User-Id")
            except zmq.ZMQError:
                user = None
        head = first.bytes
        more = first.more
    frames = [head]
    size = len(head)
    count = 1
    refused = ""
    if source is not None:
        source.fd = -1
        source.frame = None
    while more:
        part = recv(0, copy=False)          # the rest of the message is here already: never waits
        more = part.more
        if source is not None and count == 1:
            source.fd = source_fd(part)
            source.frame = part
        count += 1
        size += len(part)
        if refused:
            continue                        # drained: the frame is freed as it goes
        if count > max_frames:
            refused = "frames"
        elif size > max_bytes:
            refused = "bytes"
        else:
            frames.append(part.bytes)
    if refused or size > max_bytes:
        raise MessageRefused(head, user, count, size, refused or "bytes")
    return frames, user
