"""``miyaq``: the command line. Each group of subcommands lives in a
module of its own and registers itself here."""
from __future__ import annotations

import argparse
import errno
import os
import sys
from typing import Callable

from .. import __version__
from ..errors import MiyaqError

COMMAND_MODULES = ("node_cmd", "worker_cmd", "tasks_cmd", "bench_cmd", "queue_cmd", "ring_cmd",
                   "dev_cluster_cmd", "chaos_cmd", "keys_cmd")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="miyaq", description="miyaq: a replicated task queue on ZeroMQ")
    parser.add_argument("--version", action="version", version=f"miyaq {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    import importlib
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"{__package__}.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"{__package__}.{name}":
                raise
            continue   # a command not built into this install
        module.register(sub)
    return parser


def parse(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """``parser.parse_args(argv)``, but arguments left over are refused by
    the (sub)command's own parser, with its usage: ``argparse`` refuses
    them at the top, with ``usage: miyaq [-h] [--version] COMMAND ...``,
    which says nothing of the command typed (``miyaq status a b``; the
    newcomer audit of 2026-12-07) -- unless the command has a positional
    of any number that takes them (:func:`_taken_as_list`)."""
    args, extras = parser.parse_known_args(argv)
    if extras:
        command = _command_parser(parser, args)
        if not _taken_as_list(command, args, extras):
            command.error(f"unrecognized arguments: {' '.join(extras)}")
    return args


def _taken_as_list(command: argparse.ArgumentParser, args: argparse.Namespace, extras: list[str]) -> bool:
    """Give ``extras`` -- words, no option among them -- to the command's one
    positional of any number (``miyaq dead``'s ``ids``), as
    ``parse_intermixed_args`` would: argparse fills it where it first could,
    so ``miyaq dead retry --json ID`` left ``ID`` over and was refused (before
    2026-12-07; review31). True if taken. What the command then makes of
    them is its own check (``dead list`` takes no ids, and says so)."""
    if any(word.startswith("-") for word in extras):
        return False
    lists = [a for a in command._actions if not a.option_strings and a.nargs == "*"]
    if len(lists) != 1 or not isinstance(getattr(args, lists[0].dest, None), list):
        return False
    setattr(args, lists[0].dest, getattr(args, lists[0].dest) + extras)
    return True


def _command_parser(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.ArgumentParser:
    """The parser of the deepest (sub)command ``args`` chose (``miyaq keys
    list``'s, ``miyaq dead``'s), else ``parser``."""
    while True:
        chosen = None
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                name = getattr(args, action.dest, None) if action.dest != argparse.SUPPRESS else None
                chosen = action.choices.get(name) if isinstance(name, str) else None
        if chosen is None:
            return parser
        parser = chosen


def main(argv: list[str] | None = None) -> int:
    """Run one command; its exit status. A Ctrl-C at any point after this
    module is imported -- while the commands' modules load, too -- ends with
    130 and no traceback; output to a pipe whose reader went away, with 141
    and no traceback; output to a full disk (or one that fails), with 1 and
    one line saying so."""
    try:
        args = parse(build_parser(), argv)
        run: Callable[[argparse.Namespace], int] = args.run
        code = run(args) or 0
        sys.stdout.flush()      # here, where a closed pipe is caught, not at the interpreter's exit
        return code
    except MiyaqError as err:
        print(f"miyaq: error: {err.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader of the output went away (`miyaq status | head -3`): as
        # other commands do, end without a traceback (141: 128 + SIGPIPE).
        _drop_buffered_output()
        return 141
    except OSError as exc:
        if exc.errno not in UNWRITABLE or exc.filename is not None:
            raise
        # The output's file cannot take it (`miyaq dead list > /dev/full`, a
        # full disk): before 2026-12-06 a traceback of a dozen lines.
        _drop_buffered_output()
        print(f"miyaq: error: cannot write the output: {exc.strerror}", file=sys.stderr)
        return 1


#: What writing the output fails with when its file cannot take it.
UNWRITABLE = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO})


def _drop_buffered_output() -> None:
    """What is still buffered for the output goes nowhere, not to a second
    error when the interpreter flushes it at exit."""
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass


if __name__ == "__main__":
    sys.exit(main())
