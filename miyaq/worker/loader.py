"""Finding the application a worker serves: ``module:attribute``."""
from __future__ import annotations

import importlib
import os
import sys
import sysconfig
import traceback

from ..app import App
from ..errors import ConfigError


def load_app(spec: str) -> App:
    """Import ``module:attribute`` (or ``module``, attribute ``app``)."""
    module_name, _, attr = spec.partition(":")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())     # `miyaq worker tasks:app` from the app's directory
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"cannot import {module_name!r}: {exc}") from None
    except Exception as exc:
        # The module itself failed (a missing setting, a syntax error): the
        # same one-line error, naming where, not a traceback through miyaq.
        raise ConfigError(f"cannot import {module_name!r}: {type(exc).__name__}: {exc}{_where(exc)}") from None
    obj = getattr(module, attr or "app", None)
    if not isinstance(obj, App):
        raise ConfigError(f"{spec!r} is not a miyaq.App")
    return obj


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
