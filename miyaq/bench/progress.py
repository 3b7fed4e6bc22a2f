"""A one-line progress display for a terminal: which phase runs, for how long.

Runs in its own daemon thread, redrawing a few times per second. It asks
nothing of the system under test (no STATUS polls), so drawing it changes
no measurement.
"""
from __future__ import annotations

import threading
import time
from typing import TextIO

REDRAW = 0.25


class Progress:
    def __init__(self, stream: TextIO, label: str) -> None:
        self.stream = stream
        self.label = label
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="miyaq-bench-progress", daemon=True)
        self._began = time.monotonic()

    def start(self) -> "Progress":
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
        elapsed = time.monotonic() - self._began
        self.stream.write(f"\r{self.label}: {elapsed:5.1f}s ")
        self.stream.flush()
