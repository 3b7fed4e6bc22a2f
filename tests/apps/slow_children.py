"""An app whose processes-pool children take $MIYAQ_TEST_CHILD_START seconds
to start (the import sleeps in a child, not in the worker itself): a task
handed to the worker as it starts waits that long for a child."""
from __future__ import annotations

import os
import sys
import time

import miyaq

_main = sys.modules.get("__main__")
if getattr(getattr(_main, "__spec__", None), "name", "") == "miyaq.worker.pools.child":
    time.sleep(float(os.environ.get("MIYAQ_TEST_CHILD_START", "0")))

app = miyaq.App(os.environ.get("MIYAQ_CONNECT") or "tcp://127.0.0.1:7450")


@app.task(name="nap")
def nap(seconds: float) -> str:
    time.sleep(seconds)
    return "rested"
