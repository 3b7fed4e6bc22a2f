"""Finding the application a worker serves: ``module:attribute``."""
from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import sysconfig
import traceback

from ..app import App
from ..errors import ConfigError


def load_app(spec: str) -> App:
    """Import ``module:attribute`` (or ``module``, attribute ``app``).
    Raises :class:`ConfigError` with one line saying what is wrong and, where
    it can tell, what to type instead: a module that is not found (looked for
    from the current directory), ``module.app`` written for ``module:app``,
    an attribute the module does not have or that is not a ``miyaq.App``
    (naming the module's Apps)."""
    module_name, _, attr = spec.partition(":")
    if module_name.endswith(".py") and os.sep in module_name and os.path.isfile(module_name):
        # ``./tasks.py``: importlib takes it for a relative import (a TypeError)
        raise ConfigError(f"cannot import {module_name!r}: it is a file{_file_hint(spec, module_name)}")
    here = _cwd()
    if here is not None and here not in sys.path and "" not in sys.path:
        sys.path.insert(0, here)     # `miyaq worker tasks:app` from the app's directory
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"cannot import {module_name!r}: {exc}{_import_hint(spec, module_name, exc)}") from None
    except Exception as exc:
        # The module itself failed (a missing setting, a syntax error): the
        # same one-line error, naming where, not a traceback through miyaq.
        raise ConfigError(f"cannot import {module_name!r}: {type(exc).__name__}: {exc}{_where(exc)}") from None
    attr = attr or "app"
    obj = getattr(module, attr, None)
    if not isinstance(obj, App):
        apps = sorted(name for name, value in vars(module).items() if isinstance(value, App))
        what = (f"module {module_name!r} has no {attr!r}" if obj is None
                else f"{module_name}:{attr} is a {type(obj).__name__}, not a miyaq.App")
        found = (f"; its miyaq.App: {', '.join(f'{module_name}:{name}' for name in apps[:5])}" if apps
                 else "; the module defines no miyaq.App (app = miyaq.App(...))")
        raise ConfigError(f"{spec!r}: {what}{found}")
    return obj


def _import_hint(spec: str, module_name: str, exc: ImportError) -> str:
    """What to try when ``module_name`` cannot be imported: ``tasks.app``
    written for ``tasks:app``, ``tasks.py`` (the file) for ``tasks``, or a
    module not found from here."""
    if module_name.endswith(".py") and isinstance(exc, ModuleNotFoundError):
        return _file_hint(spec, module_name)
    if ":" not in spec and "." in module_name and isinstance(exc, ModuleNotFoundError) and exc.name == module_name:
        parent, _, last = module_name.rpartition(".")
        try:
            found = importlib.util.find_spec(parent) is not None
        except (ImportError, ValueError):
            found = False
        if found:
            return f" (the App is named after a colon: did you mean '{parent}:{last}'?)"
    if isinstance(exc, ModuleNotFoundError) and exc.name == module_name.partition(".")[0]:
        here = _cwd()
        where = "a directory since deleted" if here is None else here
        return (f" (looked for from {where} and the Python path: run the worker from the directory "
                f"that holds it, or add that directory to PYTHONPATH)")
    return ""


def _file_hint(spec: str, module_name: str) -> str:
    """The module a file name given for it (``tasks.py``, ``./tasks.py``,
    ``src/tasks.py``) stands for: its name without ``.py``, from the
    directory that holds it."""
    directory, _, file = module_name.rpartition(os.sep)
    attr = spec.partition(":")[2] or "app"
    where = f", run in {directory}" if directory not in ("", ".") else ""
    return f" (the worker takes a module, not a file: did you mean '{file[:-3]}:{attr}'{where}?)"


def _cwd() -> str | None:
    """The current directory; None when it was deleted (a release directory
    removed under a running worker: the children it starts since then)."""
    try:
        return os.getcwd()
    except OSError:
        return None


def _where(exc: BaseException) -> str:
    """Where in the application ``exc`` was raised: the last frame of its
    traceback outside the import machinery, the standard library and
    installed packages (``os.environ["X"]`` raises in ``os.py``, the line
    to change is the app's). A SyntaxError names its place already."""
    if isinstance(exc, SyntaxError):
        return ""
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return ""
    libraries = tuple({sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib", "purelib", "platlib")})
    own = [f for f in frames if not f.filename.startswith("<") and not f.filename.startswith(libraries)]
    frame = (own or frames)[-1]
    return f" (at {frame.filename}, line {frame.lineno})"
