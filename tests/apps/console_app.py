"""The worker app of the console's browser tests: a handler that works, one
that always fails (so dead letters carry a real traceback), one that takes
a while (so tasks show as running), and two periodic schedules that fire
rarely (the periodic page shows their next run)."""
from __future__ import annotations

import miyaq
from miyaq.runtime import green

app = miyaq.App()


@app.task(name="resize", queue="images")
def resize(width: int, height: int) -> dict[str, int]:
    return {"width": width // 2, "height": height // 2}


@app.task(name="charge", queue="billing", max_retries=0)
def charge(account: str) -> None:
    raise RuntimeError(f"card declined for account {account}")


@app.task(name="slow", queue="images")
def slow(seconds: float) -> float:
    green.sleep(seconds)     # cooperative: the worker's heartbeats go on meanwhile
    return seconds


@app.periodic(every=3600, name="hourly-report", queue="reports")
def hourly_report() -> None:
    return None


@app.periodic(cron="30 2 * * *", name="nightly-cleanup", queue="maint")
def nightly_cleanup() -> None:
    return None
