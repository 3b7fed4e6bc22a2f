"""Finding the application a worker serves: ``module:attribute``."""
from __future__ import annotations

import importlib
import os
import sys

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
    obj = getattr(module, attr or "app", None)
    if not isinstance(obj, App):
        raise ConfigError(f"{spec!r} is not a miyaq.App")
    return obj
