"""Shell blocks: split into commands; long-running ones start in the background.

A block is run command by command, in order. Consecutive ordinary commands
run together as one bash script with ``set -euo pipefail``, so the first
failing command fails the block. A command that serves until stopped
(:data:`BACKGROUND`: ``miyaq node``, ``miyaq worker``, ``miyaq dev-cluster``)
is started in the background in its own process group, as a reader would
start it in another terminal; the block goes on once the command printed
its ready line, and the page's teardown stops it (:class:`Background`).

``curl`` is the runner's (:data:`CURL_SHIM`, first on the page's ``PATH``):
an answer of 400 or above fails the command, unless its line ends with
``# answers <status>`` (:data:`EXPECTED_STATUS`), when it must be that one.
A command that fails on purpose ends its line with ``# exits <status>``
(:data:`EXPECTED_EXIT`), and must exit with that status.
"""
from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

BACKGROUND: dict[tuple[str, ...], re.Pattern[str]] = {
    ("miyaq", "node"): re.compile(r"serving on tcp://"),
    ("miyaq", "worker"): re.compile(r"worker \S+: queues="),
    ("miyaq", "dev-cluster"): re.compile(r"^ready ", re.MULTILINE),
}
"""Commands that run until stopped, and the line each prints once it serves."""

EXPECTED_STATUS = re.compile(r"#\s*answers\s+([1-5][0-9][0-9])\b")
"""A command line that shows an HTTP error on purpose ends with this comment: ``# answers 403``."""
EXPECTED_EXIT = re.compile(r"#\s*exits\s+([0-9]{1,3})\b")
"""A command line that fails on purpose ends with this comment: ``# exits 2``."""
CURL_SHIM = Path(__file__).resolve().parent / "bin"
"""The directory of the runner's ``curl``, which fails on an HTTP error status (see ``bin/curl``)."""

READY_TIMEOUT = 60.0     # seconds a background command may take to print its ready line
SCRIPT_TIMEOUT = 120.0   # seconds one group of ordinary commands may run
STOP_GRACE = 15.0        # seconds between SIGTERM and SIGKILL at teardown
_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
_OPERATORS = ("&&", "||", "|", ";", "&", ">", "<")


class BlockFailed(AssertionError):
    """A command of a block failed; the message carries its output."""


@dataclass
class Command:
    text: str
    background: re.Pattern[str] | None   # the ready line, for a background command
    expect_status: int | None = None     # ``# answers 403``: the HTTP status its curl must get
    expect_exit: int | None = None       # ``# exits 2``: the exit status the command must end with

    def script(self) -> str:
        """The command as the block's script runs it, its line's expectation checked."""
        if self.expect_status is not None:
            # The variable is the runner's curl's (bin/curl), for this line only.
            return f"export DOCRUN_EXPECT_STATUS={self.expect_status}\n{self.text}\nunset DOCRUN_EXPECT_STATUS"
        if self.expect_exit is not None:
            # `then` on a line of its own: the command's line ends with its comment.
            return (f"if {self.text}\nthen docrun_exit=0; else docrun_exit=$?; fi\n"
                    f"if [ \"$docrun_exit\" -ne {self.expect_exit} ]; then\n"
                    f"  echo \"docrun: this command exits {self.expect_exit}; it exited $docrun_exit\" >&2\n"
                    f"  exit 1\nfi")
        return self.text


def split_commands(source: str) -> list[Command]:
    """The block's commands in order (continuation lines joined, comments and blank lines kept out)."""
    commands: list[Command] = []
    pending = ""
    for line in source.splitlines():
        if pending:
            pending += "\n" + line
        elif not line.strip() or line.lstrip().startswith("#"):
            continue
        else:
            pending = line
        if pending.endswith("\\"):
            continue
        commands.append(_command(pending))
        pending = ""
    if pending:
        commands.append(_command(pending))
    return commands


def _command(text: str) -> Command:
    command = Command(text, _ready_pattern(text))
    comment = trailing_comment(text)
    exits = EXPECTED_EXIT.match(comment)
    if exits:
        if command.background is not None:
            raise BlockFailed(f"a long-running command's exit status is not waited for: {text!r}")
        command.expect_exit = int(exits.group(1))
    expected = EXPECTED_STATUS.match(comment)
    if expected:
        try:
            words = shlex.split(text, comments=True)
        except ValueError:
            words = text.split()
        if "curl" not in words or command.background is not None:
            raise BlockFailed(f"'# answers {expected.group(1)}' is the status a curl of the line gets; "
                              f"this line runs no curl: {text!r}")
        command.expect_status = int(expected.group(1))
    return command


def trailing_comment(text: str) -> str:
    """The comment that ends the command's last line (from its ``#``), or ``""``.

    A ``#`` starts a comment, as in bash, only at the start of a word and
    outside quotes: not in ``'a#b'``, ``"#x"``, ``\\#`` or ``http://h/#frag``.
    """
    quote = ""
    escaped = False
    for i, char in enumerate(text):
        if escaped:
            escaped = False
        elif quote:
            if char == quote:
                quote = ""
            elif char == "\\" and quote == '"':
                escaped = True
        elif char == "\\":
            escaped = True
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or text[i - 1].isspace() or text[i - 1] in ";&|()<>"):
            end = text.find("\n", i)
            return text[i:] if end < 0 else trailing_comment(text[end + 1:])
    return ""


def _ready_pattern(text: str) -> re.Pattern[str] | None:
    try:
        words = shlex.split(text, comments=True)
    except ValueError:
        return None
    while words and _ASSIGNMENT.match(words[0]):
        words = words[1:]
    for prefix, pattern in BACKGROUND.items():
        if tuple(words[:len(prefix)]) == prefix:
            if any(w in _OPERATORS for w in words):
                raise BlockFailed(f"a long-running command must stand alone on its line: {text!r}")
            return pattern
    return None


def run_script(text: str, cwd: Path, env: dict[str, str], timeout: float = SCRIPT_TIMEOUT) -> str:
    """Run ``text`` with bash, stopping at the first failing command; its output, or BlockFailed."""
    script = "set -euo pipefail\n" + text
    proc = subprocess.Popen(["bash", "-c", script], cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        raise BlockFailed(f"still running after {timeout:g}s:\n{text}\n--- output ---\n"
                          f"{out.decode(errors='replace')}") from None
    output = out.decode(errors="replace")
    if proc.returncode != 0:
        raise BlockFailed(f"exit status {proc.returncode}:\n{text}\n--- output ---\n{output}")
    return output


class Background:
    """A long-running command of a page, in its own process group, its output in a log file."""

    def __init__(self, command: Command, cwd: Path, env: dict[str, str], log_path: Path) -> None:
        self.command = command
        self.log_path = log_path
        with open(log_path, "wb") as log:
            self.proc = subprocess.Popen(["bash", "-c", command.text], cwd=cwd, env=env,
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        """Return once the ready line is in the log; BlockFailed if the command exits or times out."""
        assert self.command.background is not None
        deadline = time.monotonic() + timeout
        while True:
            if self.command.background.search(self.log_path.read_text(errors="replace")):
                return
            code = self.proc.poll()
            if code is not None:
                raise BlockFailed(f"{self.command.text!r} exited with status {code} before it was ready; "
                                  f"its output:\n{self.log_tail()}")
            if time.monotonic() >= deadline:
                raise BlockFailed(f"{self.command.text!r} printed no ready line "
                                  f"({self.command.background.pattern!r}) within {timeout:g}s; "
                                  f"its output:\n{self.log_tail()}")
            time.sleep(0.05)

    def stop(self, grace: float = STOP_GRACE) -> None:
        """SIGTERM its group, wait, then SIGKILL the group and every descendant. Never raises."""
        family = descendants(self.proc.pid)
        kill_group(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(grace)
        except subprocess.TimeoutExpired:
            pass
        # Children in sessions of their own (dev-cluster's nodes) outlive a group kill.
        for pid in [self.proc.pid, *family, *descendants(self.proc.pid)]:
            kill_group(pid, signal.SIGKILL)
            _kill(pid, signal.SIGKILL)
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            pass


def kill_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def descendants(pid: int) -> list[int]:
    """Every live descendant of ``pid`` (Linux /proc), children first."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                stat = fh.read().decode(errors="replace")
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        parents.setdefault(ppid, []).append(int(entry))
    found: list[int] = []
    todo = [pid]
    while todo:
        for child in parents.get(todo.pop(), ()):
            found.append(child)
            todo.append(child)
    return found
