"""Handlers that do not succeed, for what a worker logs of them
(tests/test_worker_failure_log.py): one that raises, sync and ``async
def``; one that asks to be retried; one that rejects itself; one that
succeeds, beside them."""
from __future__ import annotations

import os

import miyaq

app = miyaq.App(os.environ.get("MIYAQ_CONNECT") or "tcp://127.0.0.1:7450")


def _explode(tag: str) -> None:
    raise ValueError(f"handler failed on purpose {tag}")


@app.task(name="fail")
def fail(tag: str) -> None:
    _explode(tag)


@app.task(name="afail")
async def afail(tag: str) -> None:
    _explode(tag)


@app.task(name="retry_me")
def retry_me(tag: str) -> None:
    raise miyaq.Retry(f"not yet {tag}", delay=0.1)


@app.task(name="reject_me")
def reject_me(tag: str) -> None:
    raise miyaq.Reject(f"never {tag}")


@app.task(name="fine")
def fine(tag: str) -> str:
    return tag
