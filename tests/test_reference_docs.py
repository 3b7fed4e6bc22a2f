"""The reference tables say what a node really serves: every metric family
and label value of ``GET /metrics`` (docs/http.md, "Metrics"), every field
of a ``GET /workers`` row, and every variable a worker reads (deploy/README.md)."""
from __future__ import annotations

import dataclasses
import pathlib
import re

from gateway_harness import FIXTURES, Http, wait_for

import miyaq
from miyaq.gateway.outbound import classify
from miyaq.testing.harness import ThreadWorker
from miyaq.worker.config import WorkerConfig

http_node, api, make_http_node, make_web_worker = FIXTURES   # pytest finds fixtures in module globals

ROOT = pathlib.Path(__file__).resolve().parent.parent
HTTP_MD = (ROOT / "docs" / "http.md").read_text()
METRICS_MD = HTTP_MD.split("\n## Metrics\n", 1)[1].split("\n## ", 1)[0]


def row_of(table_text: str, name: str) -> str:
    """The table row (one line) that names ``name`` in backticks."""
    rows = [line for line in table_text.splitlines() if line.startswith("|") and f"`{name}`" in line]
    assert rows, f"no row names `{name}`"
    return rows[0]


def labels_cell(row: str) -> str:
    return row.strip("|").split("|")[2]


def test_every_metric_family_and_webhook_result_is_documented(make_http_node, make_web_worker):
    """Fault: a webhook answered 302 was counted ``result="other"``, a label
    value http.md's table did not list; ``miyaq_greenlet_crashes_total`` was
    not in the table at all; and the table gave ``miyaq_uptime_seconds``
    the labels ``node`` and ``version``, which it has not."""
    worker = make_web_worker(script={1: (302, {"Location": "/elsewhere"}, 0.0)})
    node = make_http_node(webhook_allow_private=True)
    client = Http(node.url)
    try:
        task_id = client.post("/queue", {"url": f"{worker.url}/hook"})[1]["id"]
        wait_for(lambda: client.get(f"/tasks/{task_id}")[1]["task"]["state"] == "dead", "the 302 dead-lettered")
        client.post("/tasks", {"name": "job"})
        text = client.get("/metrics")[1].decode()
    finally:
        client.close()
    # prometheus_client writes each counter's and histogram's creation time as
    # a family of its own, NAME_created: not a metric of miyaq's.
    families = {name for name in re.findall(r"^# TYPE (miyaq_\w+) ", text, re.M) if not name.endswith("_created")}
    assert {"miyaq_greenlet_crashes_total", "miyaq_uptime_seconds", "miyaq_webhook_deliveries_total"} <= families
    undocumented = {name for name in families if f"`{name}`" not in METRICS_MD}
    assert not undocumented, f"metric families missing from docs/http.md: {sorted(undocumented)}"
    assert 'miyaq_webhook_deliveries_total{queue="default",result="other"} 1.0' in text
    results = {classify(status, None, b"", 0.0).kind for status in range(100, 600)}
    assert results == {"2xx", "4xx", "429", "5xx", "other"}
    documented = labels_cell(row_of(METRICS_MD, "miyaq_webhook_deliveries_total"))
    assert all(re.search(rf"\b{re.escape(label)}\b", documented) for label in results), documented
    # miyaq_uptime_seconds has no labels, and its row says so
    assert re.search(r"^miyaq_uptime_seconds [0-9.e+]+$", text, re.M)
    assert "`node`" not in labels_cell(row_of(METRICS_MD, "miyaq_uptime_seconds"))
    assert "`name`" in labels_cell(row_of(METRICS_MD, "miyaq_greenlet_crashes_total"))


def test_every_field_of_a_workers_row_is_documented(make_http_node):
    """Fault: ``GET /workers`` rows carried a ``pool`` field http.md did not list."""
    node = make_http_node()
    app = miyaq.App(f"tcp://127.0.0.1:{node.config.port}")

    @app.task(name="noop")
    def noop() -> int:
        return 1

    client = Http(node.url)
    try:
        with ThreadWorker(app, [f"tcp://127.0.0.1:{node.config.port}"], concurrency=2):
            rows = wait_for(lambda: client.get("/workers")[1]["workers"], "the worker registered")
    finally:
        client.close()
        app.close()
    documented = row_of(HTTP_MD, "GET /workers?limit=")
    missing = {name for name in rows[0] if f"`{name}`" not in documented}
    assert not missing, f"GET /workers fields missing from docs/http.md: {sorted(missing)}"


def test_deploy_readme_names_every_variable_a_worker_reads():
    """Fault: deploy/README.md's list of the worker's variables left out
    ``MIYAQ_POOL`` and ``MIYAQ_MAX_TASKS_PER_CHILD``."""
    readme = (ROOT / "deploy" / "README.md").read_text()
    sentence = readme.split("the worker reads", 1)[1].split("; the", 1)[0]
    variables = {"MIYAQ_" + f.name.upper() for f in dataclasses.fields(WorkerConfig)} | {"MIYAQ_CONNECT"}
    missing = {name for name in variables if f"`{name}`" not in sentence}
    assert not missing, f"deploy/README.md does not name {sorted(missing)}"
