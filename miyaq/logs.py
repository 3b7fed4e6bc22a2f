"""How miyaq's programs (node, worker, dev-cluster, bench, chaos) set up logging."""
from __future__ import annotations

import logging
import re
from typing import Any, Mapping

# Real time, not miyaq.runtime.clock: a log line's rate is a matter of the
# reader's seconds, and the clients use LogLimiter without importing the runtime.
from time import monotonic


FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_logging(level: str = "INFO") -> None:
    """Log to stderr at ``level`` (an unknown name means INFO), one line a
    record: miyaq's own messages with their control characters escaped
    (:class:`OneLineMessages`), the ZooKeeper client's tracebacks too, except
    at DEBUG (:class:`OneLineLibraryErrors`); the ZooKeeper password never
    (:class:`ZooKeeperCredentials`); the ZooKeeper client's reconnect lines
    at a bounded rate (:class:`ZooKeeperReconnects`)."""
    numeric = getattr(logging, level.upper(), logging.INFO)
    stderr = logging.StreamHandler()
    stderr.setFormatter(OneLineMessages(FORMAT))
    logging.basicConfig(level=numeric, handlers=[stderr])
    redact_zookeeper_credentials()
    quiet_zookeeper_reconnects()
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, ZooKeeperCredentials) for f in handler.filters):
            handler.addFilter(ZooKeeperCredentials())     # a record of another kazoo logger too
    if numeric > logging.DEBUG:
        for handler in logging.getLogger().handlers:
            if not any(isinstance(f, OneLineLibraryErrors) for f in handler.filters):
                handler.addFilter(OneLineLibraryErrors())


#: What could end a line, or make one look like another, where a log or a
#: table is read: C0 and C1 controls (the tab aside), DEL, the Unicode line
#: and paragraph separators, and the bidirectional controls (marks,
#: embeddings, overrides, isolates): a right-to-left override in a task name
#: shows the rest of a row in another order than it holds ("Trojan source");
#: and the characters of no width that join nothing (the zero-width space,
#: the word joiner and invisible operators, the byte order mark), which make
#: two names that read alike differ, and their kin shown as nothing (the soft
#: hyphen, the combining grapheme joiner, the deprecated format characters
#: U+206A-206F, the interlinear annotation marks, and the tag characters
#: but where they spell an emoji flag: :func:`_escaped`; before 2026-12-07,
#: review31, ``send\xadmail`` still read as ``sendmail``). The zero-width
#: joiner and non-joiner (``\u200c``, ``\u200d``) stay: emoji and Persian or
#: Indic text need them.
_CONTROL = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\xad\u034f\u061c\u200b\u200e\u200f\u2028-\u202e"
                      "\u2060-\u2064\u2066-\u206f\ufeff\ufff9-\ufffb\U000e0000-\U000e007f]")


#: What :data:`_CONTROL` and :data:`_INVISIBLE` find in ASCII text (``str.isascii()``
#: is O(1)): the same result at the cost of the old expression. A class with
#: the astral tag characters in it is some 150 ns slower on a log line of 100
#: characters, and nearly every log line is ASCII.
_CONTROL_ASCII = re.compile("[\x00-\x08\x0a-\x1f\x7f]")
_INVISIBLE_ASCII = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")

#: A flag emoji made of tags (England's: the black flag, tags spelling
#: ``gbeng``, the cancel tag; Unicode's subdivision flags hold 5 tags),
#: kept as it is: the first alternative of the expressions used on text
#: that holds the black flag (``_FLAGGED``). Other text takes the plain
#: ones, which escape every tag: the alternative tried at each character
#: made a non-ASCII line of 110 characters cost 1,930 ns instead of 630.
_BLACK_FLAG = "\U0001f3f4"
_FLAG = "(" + _BLACK_FLAG + "[\U000e0020-\U000e007e]{1,32}\U000e007f)|"
_CONTROL_FLAGGED = re.compile(_FLAG + _CONTROL.pattern)


def _escaped(match: re.Match[str]) -> str:
    """The match written as an escape -- but a flag emoji made of tags
    (:data:`_FLAG`: the black flag, 1 to 32 tags, the cancel tag), left as
    it is (a match of the ``_FLAGGED`` expressions' group). Any other tag
    character (U+E0000-E007F) is escaped, so a name holding tags never
    reads as one without, nor as one with other tags.
    Until review32 (2026-12-07) every tag after the black flag or another
    tag stayed: ``admin`` and two tags showed the first one's escape alone,
    the black flag and tags never cancelled the flag alone."""
    if match.lastindex:           # the flag's group (none in the ASCII expressions)
        return match.group()
    return match.group().encode("unicode_escape").decode("ascii")


def escape_controls(text: str) -> str:
    """``text`` with its control characters (:data:`_CONTROL`) written as
    escapes (``\\n``, ``\\x1b``, ``\\u2028``), so it cannot end a line, move
    the cursor or otherwise command a terminal; other text (tabs included)
    is left as it is. What log records and the CLI's tables both use on
    values from another process."""
    if text.isascii():
        return _CONTROL_ASCII.sub(_escaped, text)
    return (_CONTROL_FLAGGED if _BLACK_FLAG in text else _CONTROL).sub(_escaped, text)


#: What a web page shows nothing of, or shows in another order than it is
#: held: :data:`_CONTROL` less the line breaks (``\n``, ``\r``), which a page
#: shows as white space and a ``<pre>`` (a traceback, a payload) as lines.
_INVISIBLE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\xad\u034f\u061c\u200b\u200e\u200f"
                        "\u2028-\u202e\u2060-\u2064\u2066-\u206f\ufeff\ufff9-\ufffb\U000e0000-\U000e007f]")
_INVISIBLE_FLAGGED = re.compile(_FLAG + _INVISIBLE.pattern)


def escape_invisible(text: str) -> str:
    """``text`` with the characters a web page would hide or reorder
    (:data:`_INVISIBLE`: C0 and C1 controls but the tab and line breaks,
    DEL, the Unicode line separators and bidirectional controls, and the
    zero-width space, word joiner and byte order mark) written as
    escapes (``\\x1b``, ``\\u202e``): what the console shows of values from
    another process, as :func:`escape_controls` is for a terminal."""
    if text.isascii():
        return _INVISIBLE_ASCII.sub(_escaped, text)
    return (_INVISIBLE_FLAGGED if _BLACK_FLAG in text else _INVISIBLE).sub(_escaped, text)


def clipped(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters (and ``...``): for what a
    stranger chose (a node id, a value) in a line or message of ours."""
    return text if len(text) <= limit else text[:limit] + "..."


class OneLineMessages(logging.Formatter):
    """miyaq's own records (loggers ``miyaq.*``) on one line each. A message
    may quote what came from the other side of a socket -- a worker id, a
    node's error message, a peer's name -- and a line break in it would start
    a line that reads as a record of its own: a forged log line. Control
    characters in the message are escaped (``\\n``, ``\\x1b``).
    Tracebacks keep their lines, and records of other loggers (an
    application's handlers, in a worker) are left as they are."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        if record.name.startswith("miyaq"):
            record.message = escape_controls(record.message)
        return super().formatMessage(record)


class OneLineLibraryErrors(logging.Filter):
    """Records of the ZooKeeper client (kazoo) as one line: its connection
    loop logs a whole traceback when something that is not a ZooKeeper
    server answers (a wrong ``--zk`` port, a server starting or stopping),
    and retries. The exception's type and message stay on the line; the
    traceback is left out (``--log-level DEBUG`` keeps it)."""

    PREFIX = "kazoo"

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.name.startswith(self.PREFIX):
            exc = record.exc_info[1]
            _append(record, f"{type(exc).__name__}: {exc}")
            record.exc_info = None
            record.exc_text = None
        return True


#: The loggers kazoo writes its requests with: its client's (each request at
#: DEBUG, the credentials' ``Auth`` one too) and its connection's.
KAZOO_LOGGERS = ("kazoo.client", "kazoo.protocol.connection")

#: ``auth='user:password'`` as kazoo's ``Auth`` request prints itself (a
#: namedtuple's repr: single quotes, or double ones around a value that
#: holds a single quote; backslash escapes inside).
_AUTH_VALUE = re.compile(r"""\bauth=(?:'(?P<single>(?:[^'\\]|\\.)*)'|"(?P<double>(?:[^"\\]|\\.)*)")""")
REDACTED = "<redacted>"


def _redacted_auth(match: re.Match[str]) -> str:
    """``auth='user:<redacted>'``: the user stays (which identity a node
    presents is what an operator checks), the password goes."""
    value = match.group("single") if match.group("single") is not None else match.group("double")
    user, colon, _ = value.partition(":")
    return f"auth='{user}:{REDACTED}'" if colon else f"auth='{REDACTED}'"


class ZooKeeperCredentials(logging.Filter):
    """The ZooKeeper password out of kazoo's records: at DEBUG its client
    logs every request it sends, the credentials with them on each
    (re)connect -- ``Sending request(xid=-4): Auth(auth_type=0,
    scheme='digest', auth='miyaq:PASSWORD')`` -- and docs/configuration.md
    sends operators to ``--log-level DEBUG`` to see what ZooKeeper does.
    The ``auth='user:password'`` value becomes ``auth='user:<redacted>'``
    (a value without a colon: ``auth='<redacted>'``); the rest of
    the record, and every other record, is left as it is (it is what an
    operator debugging ZooKeeper reads). Before 2026-12-06 the password
    was written in clear."""

    PREFIX = "kazoo"

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith(self.PREFIX):
            return True
        try:
            message = record.getMessage()
        except Exception:       # a filter must not raise into the library's logging call
            message = str(record.msg)
        if "auth=" in message:
            redacted = _AUTH_VALUE.sub(_redacted_auth, message)
            if redacted != message:
                record.msg = redacted
                record.args = None
        return True


def redact_zookeeper_credentials() -> None:
    """Put :class:`ZooKeeperCredentials` on kazoo's loggers
    (:data:`KAZOO_LOGGERS`), once: every handler -- the node's stderr, an
    application's own -- gets their records without the password."""
    for name in KAZOO_LOGGERS:
        target = logging.getLogger(name)
        if not any(isinstance(f, ZooKeeperCredentials) for f in target.filters):
            target.addFilter(ZooKeeperCredentials())


#: The lines kazoo's connection loop writes for each try while no ZooKeeper
#: server answers (its format strings, kazoo 2.x): two a try, about one try a
#: second for as long as the outage lasts.
KAZOO_RECONNECT_LINES = ("Connecting to %s(%s):%s, use_ssl: %r", "Connection dropped: %s",
                         "Connection time-out: %s")


class ZooKeeperReconnects(logging.Filter):
    """kazoo's reconnect lines (:data:`KAZOO_RECONNECT_LINES`) at most
    ``burst`` of each per ``per`` seconds; the ones held back are counted,
    and the count is told on the next one let through ("(N more like it in
    the last 60s)"). A node that lost ZooKeeper for an hour wrote about
    7,200 of them before 2026-12-06 (a ZooKeeper outage of 27 s: 54 lines a
    node), burying miyaq's own lines -- "ZooKeeper connection suspended",
    "resumed", "session lost" -- which are never held back, nor is any
    other kazoo line. At DEBUG (``--log-level DEBUG``) every line passes."""

    PREFIX = "kazoo"

    def __init__(self, burst: int = 2, per: float = 60.0) -> None:
        super().__init__()
        self._rate = RateWindows(burst, per)     # by format string
        self._windows = self._rate.windows

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg not in KAZOO_RECONNECT_LINES or not record.name.startswith(self.PREFIX):
            return True
        if logging.getLogger(record.name).getEffectiveLevel() <= logging.DEBUG:
            return True
        admitted, held = self._rate.admit(record.msg)
        if admitted and held:
            _append(record, f"{held} more like it in the last {self._rate.per:.0f}s")
        return admitted


def quiet_zookeeper_reconnects() -> None:
    """Put :class:`ZooKeeperReconnects` on kazoo's loggers
    (:data:`KAZOO_LOGGERS`), once."""
    for name in KAZOO_LOGGERS:
        target = logging.getLogger(name)
        if not any(isinstance(f, ZooKeeperReconnects) for f in target.filters):
            target.addFilter(ZooKeeperReconnects())


def _append(record: logging.LogRecord, note: str) -> None:
    """Make ``record``'s message its formatted text and `` (note)`` (a
    filter's addition to a library's line); a message whose arguments do
    not format is taken as written: a filter must not raise into the
    library's logging call."""
    try:
        message = record.getMessage()
    except Exception:
        message = str(record.msg)
    record.msg = f"{message} ({note})"
    record.args = None


class RateWindows:
    """At most ``burst`` events per ``per`` seconds for each key, in fixed
    windows that start with a key's first event after the last one ended;
    what goes over is counted, and the count is handed to the first event
    of the next window, to be told. The keys are the caller's constants
    (kinds of line, format strings), so they are bounded."""

    def __init__(self, burst: int, per: float) -> None:
        self.burst = burst
        self.per = per
        self.windows: dict[str, list[float]] = {}    # key -> [window start, let through, held back]

    def admit(self, key: str) -> tuple[bool, int]:
        """Whether this event of ``key`` goes through, and how many the
        window that just ended held back (0 but for the first event of a
        new window)."""
        now = monotonic()
        window = self.windows.get(key)
        held = 0
        if window is None or now - window[0] >= self.per:
            held = int(window[2]) if window is not None else 0
            window = self.windows[key] = [now, 0.0, 0.0]
        if window[1] >= self.burst:
            window[2] += 1
            return False, held
        window[1] += 1
        return True, held


class LogLimiter:
    """Log lines a flood could repeat (a bad record from a peer, a refused
    message) at a bounded rate: at most ``burst`` lines per ``per`` seconds
    for each ``kind`` (a constant from the code, so the kinds are bounded).
    Lines over the rate are counted and the count is told with the next line
    let through."""

    def __init__(self, logger: logging.Logger, burst: int = 5, per: float = 60.0) -> None:
        self.logger = logger
        self._rate = RateWindows(burst, per)     # by kind

    @property
    def burst(self) -> int:
        return self._rate.burst

    @property
    def per(self) -> float:
        return self._rate.per

    def warning(self, kind: str, message: str, *args: Any) -> bool:
        """Log ``message % args`` at WARNING unless ``kind`` is over its rate;
        True if it was logged."""
        return self.log(logging.WARNING, kind, message, *args)

    def log(self, level: int, kind: str, message: str, *args: Any, exc_info: Any = None,
            extra: Mapping[str, object] | None = None) -> bool:
        """Log ``message % args`` at ``level`` (with ``exc_info`` and
        ``extra``, as :meth:`logging.Logger.log` takes them) unless ``kind`` is over its rate;
        True if it was logged. A line the logger's level hides is neither
        logged nor counted against the rate: it must not use up the lines
        of a kind shown at another level."""
        if not self.logger.isEnabledFor(level):
            return False
        admitted, suppressed = self._rate.admit(kind)
        if suppressed:
            self.logger.log(level, "%d more %s line(s) were not logged in the last %.0fs",
                            suppressed, kind, self.per)
        if admitted:
            self.logger.log(level, message, *args, exc_info=exc_info, extra=extra)
        return admitted
