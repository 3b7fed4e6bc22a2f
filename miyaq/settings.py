"""Settings declared once: name, type, default, help (:class:`Settings`,
the base of the node's :class:`~miyaq.config.NodeConfig` and the worker's
:class:`~miyaq.worker.config.WorkerConfig`; each field made with
:func:`setting`).

Each setting can come from (highest first) a command-line flag
(``--max-tasks``), an environment variable (``MIYAQ_MAX_TASKS``), a TOML
config file (``max_tasks = 1000``, given by ``--config`` or ``MIYAQ_CONFIG``)
or its default; a value of the wrong type is a ConfigError naming the
setting and where it came from (``--max-tasks``, ``MIYAQ_MAX_TASKS``, the
config file), and one that the settings' checks refuse names the variable
it came from when that is the environment (a variable set long ago in a
shell or unit file is easy to forget). Nothing is read from the
environment at import time.
"""
from __future__ import annotations

import argparse
import datetime
import math
import os
import re
import tomllib
from dataclasses import field, fields
from typing import Any, ClassVar, Mapping, TypeVar

from miyaq.errors import ConfigError

#: The largest integer a setting takes, either side of 0: a signed 64-bit
#: one, as msgpack carries it (a node's STATUS reports its settings, and a
#: larger number would fail every STATUS instead of the start).
MAX_SETTING_INT = 2**63 - 1


def setting(default: Any, help: str, *, choices: tuple[str, ...] | None = None, short: str | None = None,
         repeat: bool = False, listed: bool = False) -> Any:
    """A setting. ``repeat``: the flag may be given more than once, the values
    joined with commas (as the environment variable and a TOML list give them).
    ``listed`` (implied by ``repeat``): a comma-separated list, which a TOML
    file may also give as an array of strings (joined with commas)."""
    return field(default=default, metadata={"help": help, "choices": choices, "short": short, "repeat": repeat,
                                            "listed": listed or repeat})


class Settings:
    """Settings declared once as dataclass fields made with :func:`setting`:
    one flag per field (``--max-tasks``), one environment variable
    (``MIYAQ_MAX_TASKS``) and, when ``config_file`` is true, a TOML file.
    Subclasses are dataclasses; ``load`` merges flags > environment > file >
    defaults and builds the instance (whose ``__post_init__`` validates)."""

    config_file: ClassVar[bool] = True

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """One flag per setting; defaults are resolved later by :meth:`load`."""
        if cls.config_file:
            parser.add_argument("--config", default=None, help="TOML file of settings [env MIYAQ_CONFIG]")
        for f in fields(cls):  # type: ignore[arg-type]
            flags = ["--" + f.name.replace("_", "-")] + ([f.metadata["short"]] if f.metadata.get("short") else [])
            env = "MIYAQ_" + f.name.upper()
            text = f"{f.metadata['help']} [{_default_text(f.default, f.metadata['help'])}env {env}]"
            if f.type in ("bool", bool):
                parser.add_argument(*flags, dest=f.name, default=None, action=argparse.BooleanOptionalAction,
                                    help=text)
            elif f.metadata.get("repeat"):
                parser.add_argument(*flags, dest=f.name, default=None, help=text, action="append")
            else:
                parser.add_argument(*flags, dest=f.name, default=None, help=text,
                                    choices=f.metadata.get("choices"))

    @classmethod
    def load(cls: type[S], args: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None) -> S:
        """Merge flags > environment > config file > defaults."""
        args = dict(args or {})
        environ = os.environ if environ is None else environ
        file_values: dict[str, Any] = {}
        path = (args.get("config") or environ.get("MIYAQ_CONFIG")) if cls.config_file else None
        if path:
            try:
                with open(path, "rb") as fh:
                    file_values = tomllib.load(fh)
            except (OSError, tomllib.TOMLDecodeError) as exc:
                raise ConfigError(f"cannot read config file {path}: {exc}") from None
            except UnicodeDecodeError as exc:     # TOML is UTF-8: a binary or Latin-1 file
                raise ConfigError(f"cannot read config file {path}: it is not UTF-8 text ({exc.reason} at "
                                  f"byte {exc.start})") from None
            known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
            unknown = set(file_values) - known
            if unknown:
                raise ConfigError(f"unknown settings in {path}: {', '.join(sorted(unknown))}")
        values: dict[str, Any] = {}
        from_env: dict[str, str] = {}     # setting -> the variable it was read from
        given_as: dict[str, str] = {}     # setting -> the flag or variable it was read from
        for f in fields(cls):  # type: ignore[arg-type]
            raw = args.get(f.name)
            source = "--" + f.name.replace("_", "-")
            if raw is None:
                source = "MIYAQ_" + f.name.upper()
                raw = environ.get(source)
                if raw is not None:
                    from_env[f.name] = source
            if raw is not None:       # text (a flag, the environment); a list: a repeated flag
                given_as[f.name] = source
                if f.metadata.get("repeat") and isinstance(raw, list):
                    raw = ",".join(str(item) for item in raw)
                values[f.name] = _coerce(f.name, f.type, raw, source)
            elif f.name in file_values:
                values[f.name] = _from_toml(f.name, f.type, file_values[f.name], bool(f.metadata.get("listed")))
        try:
            loaded = cls(**values)
            loaded.check_loaded()
            return loaded
        except ConfigError as err:
            message = err.message
            lead = err.details.get("setting")
            if lead in given_as and message.startswith(lead):     # refused(): its name is where it came from
                message = given_as[lead] + message[len(lead):]
            named = [f"{name} from {var}" for name, var in from_env.items()
                     if name != lead and re.search(rf"(?<![\w-]){name}(?!\w)", message)]
            if message == err.message and not named:
                raise
            raise ConfigError(message + (f" ({', '.join(named)})" if named else ""), **err.details) from None

    def check_loaded(self) -> None:
        """Checks of settings as :meth:`load` gives them (a program's own, not
        every construction's); raises ConfigError, named as a check's in
        construction is (the variable a value came from). None here."""

    def check_fields(self) -> None:
        """Every choice is one of its choices; no number is negative, NaN or
        infinite (NaN passes every comparison with a bound, and an infinite
        wait never ends), nor an integer beyond :data:`MAX_SETTING_INT`."""
        for f in fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            choices = f.metadata.get("choices")
            if choices and value not in choices:
                raise ConfigError(f"{f.name} must be one of {', '.join(choices)}, not {value!r}")
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                continue
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"{f.name} must be a finite number, not {value!r}")
            if value < 0:
                raise ConfigError(f"{f.name} must not be negative, not {value!r}")
            if value > MAX_SETTING_INT:
                raise ConfigError(f"{f.name} must be at most {MAX_SETTING_INT:,}, not {value:,}")


S = TypeVar("S", bound=Settings)


def refused(name: str, rest: str) -> ConfigError:
    """A check's error about setting ``name`` that begins with the name,
    as the place of the value refused (``queues: 'a b' is not a queue
    name``): :meth:`Settings.load` puts where the value came from in that
    place (``--queues: ...``, ``MIYAQ_QUEUES: ...``), and a value given in
    Python keeps the setting's name. ``rest`` follows the name as is."""
    return ConfigError(name + rest, setting=name)


#: TOML's name of each type ``tomllib`` gives a value as.
_TOML_TYPES = ((bool, "boolean"), (int, "integer"), (float, "float"), (str, "string"), (list, "array"),
               (dict, "table"), (datetime.datetime, "date-time"), (datetime.date, "date"), (datetime.time, "time"))


def _toml_type(value: Any) -> str:
    return next((name for kind, name in _TOML_TYPES if isinstance(value, kind)), type(value).__name__)


def _from_toml(name: str, type_: Any, raw: Any, listed: bool) -> Any:
    """A setting's value from the config file, which must be of the setting's
    TOML type: a boolean for a boolean setting, an integer for an integer one,
    an integer or a float for a number, a string for a text setting (for a
    comma-separated list, also an array of strings, joined with commas).
    Anything else is a ConfigError naming the setting, the type given and the
    type expected: ``str()`` of it made ``http_token = true`` the token
    ``True`` and a list of allowed hosts the text ``['a', 'b']``."""
    kind = type_ if isinstance(type_, str) else getattr(type_, "__name__", str(type_))
    kind = kind.removesuffix(" | None")       # TOML has no null: a value given is of the type
    given = _toml_type(raw)
    if kind == "bool":
        expected, ok = "a boolean (true or false)", given == "boolean"
    elif kind == "int":
        expected, ok = "an integer", given == "integer"
    elif kind == "float":
        expected, ok = "a number", given in ("integer", "float")
    elif listed:
        expected = "a string or an array of strings"
        ok = given == "string" or (given == "array" and all(isinstance(item, str) for item in raw))
        if ok and given == "array":
            raw = ",".join(raw)
    else:
        expected, ok = "a string", given == "string"
    if not ok:
        shown = f"a TOML {given}"
        if given == "array" and raw:
            shown += " of " + " and ".join(sorted({_toml_type(item) for item in raw})) + " values"
        # The value itself is not shown: it may be a secret (http_token, zk_auth).
        raise ConfigError(f"setting {name} expects {expected} in the config file, got {shown}")
    return _coerce(name, type_, raw)


def _coerce(name: str, type_: Any, raw: Any, source: str | None = None) -> Any:
    """``raw`` as the setting's type; ``source``, where it was given (a flag,
    an environment variable), is named in the error if it is not of that
    type. Before 2026-12-07 the error named the setting alone:
    ``MIYAQ_CONCURRENCY=abc`` said "setting concurrency expects int"."""
    kind = type_ if isinstance(type_, str) else getattr(type_, "__name__", str(type_))
    if kind.endswith(" | None"):      # optional: empty or "none" means unset
        if isinstance(raw, str) and raw.strip().lower() in ("", "none"):
            return None
        kind = kind[:-len(" | None")]
    try:
        if kind == "bool":
            if isinstance(raw, bool):
                return raw
            text = str(raw).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if kind == "int":
            if isinstance(raw, bool) or isinstance(raw, float):
                raise ValueError(raw)       # TOML gave the wrong type: refuse, never round
            return int(raw)
        if kind == "float":
            if isinstance(raw, bool):
                raise ValueError(raw)
            return float(raw)
        return str(raw)
    except (TypeError, ValueError, OverflowError):
        given = f" (from {source})" if source else ""
        raise ConfigError(f"setting {name} expects {kind}, got {raw!r}{given}") from None


def _default_text(default: Any, help_text: str) -> str:
    """A setting's default as ``--help`` shows it: nothing where the help
    says it (``--concurrency``: "default: 8; with --pool processes ...") or
    it is None (decided later), "empty" for an empty string (the help says
    what empty means: ``--data-dir``'s "(empty: memory only)"), else its
    repr. Before 2026-12-06 ``[default None]`` and ``[default '']``
    contradicted the help's own "default: ..."."""
    if default is None or "default:" in help_text:
        return ""
    return "default empty; " if default == "" else f"default {default!r}; "
