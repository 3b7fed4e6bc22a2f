"""Waiting in the test's own hub for something the greenlets under test do."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from miyaq.runtime import green

GUARD = 15.0
"""Seconds: a guard against a hang, never a timing assertion."""


def until(predicate: Callable[[], Any], what: str, timeout: float = GUARD) -> Any:
    """Run the hub until ``predicate()`` is truthy and return that value;
    fail the test naming ``what`` if it never is within ``timeout``."""
    with green.Timeout(timeout, False):
        while True:
            value = predicate()
            if value:
                return value
            green.sleep(0.01)
    pytest.fail(f"timed out waiting for {what}")
