"""A worker app with a periodic schedule, for the cluster tests: each run is
recorded (as ``["tick", task id, pid]``) in the file named by
$MIYAQ_TEST_EVENTS, so a tick that ran twice shows as a repeated id."""
from __future__ import annotations

import os

import miyaq
from apps.basic import record

app = miyaq.App()


@app.periodic(every=1, name="tick")
def tick() -> None:
    record("tick", miyaq.current_task().id, os.getpid())
