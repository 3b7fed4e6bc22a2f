"""A one-line progress display for a terminal: submitted and completed counts.

Runs in its own daemon thread, redrawing a few times per second. Submitted
comes from the load loop's counter; completed from the node's ``completed``
outcome counter (STATUS), minus its value when the run began, so it is
approximate on a node that other producers use at the same time. It only
draws; nothing it does affects the measurement beyond one STATUS request
per redraw.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TextIO

from ..errors import MiyaqError

REDRAW = 0.25
BAR = 24


class Progress:
    def __init__(self, stream: TextIO, total: int, submitted: Callable[[], int],
                 completed: Callable[[], int]) -> None:
        self.stream = stream
        self.total = total
        self._submitted = submitted
        self._completed = completed
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="miyaq-bench-progress", daemon=True)
        self._began = time.monotonic()
        self._last_completed = 0

    def start(self) -> Progress:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Draw a final line and end it. Idempotent."""
        if self._stop.is_set():
            return
        self._stop.set()
        self._thread.join(2.0)
        self._draw()
        self.stream.write("\n")
        self.stream.flush()

    def _run(self) -> None:
        while not self._stop.wait(REDRAW):
            self._draw()

    def _draw(self) -> None:
        try:
            self._last_completed = self._completed()
        except MiyaqError:
            pass   # keep the last count; the run itself reports real failures
        submitted, completed = self._submitted(), min(self._last_completed, self.total)
        filled = BAR * completed // self.total if self.total else BAR
        bar = "#" * filled + "-" * (BAR - filled)
        elapsed = time.monotonic() - self._began
        self.stream.write(f"\r[{bar}] submitted {submitted:,}/{self.total:,}  "
                          f"completed {completed:,}/{self.total:,}  {elapsed:5.1f}s ")
        self.stream.flush()
