"""The web console in a real browser: Debian's headless Chromium
(``/usr/bin/chromium``, installed by scripts/test) driven by Playwright,
against a live node with a real worker and real tasks. Each page loads
without a script error or a Content-Security-Policy violation, the chart
draws, a click on Retry revives a dead letter and a click on Pause pauses a
queue, both checked through the JSON API.

Playwright never downloads a browser here (no ``playwright install``): it
launches the system Chromium with the flags this machine needs. Without that
browser the tests fail (never skip): the README's test command installs it.

``MIYAQ_SCREENSHOTS=1`` also writes the screenshots in docs/images/ that
README.md and docs/console.md show (after a few seconds of load, so the
chart has something to draw); without it nothing is written.
"""
from __future__ import annotations

import os
import pathlib
import time
from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import expect, sync_playwright
from gateway_harness import FIXTURES, Http, wait_for
from test_gateway_admin import make_dead

from miyaq.testing.harness import ThreadWorker

http_node, api, make_http_node, make_web_worker = FIXTURES   # pytest finds fixtures in module globals

CHROMIUM = os.environ.get("MIYAQ_CHROMIUM", "/usr/bin/chromium")
# --headless is Playwright's own; the rest keep Chromium off this machine's closed network
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]
IMAGES = pathlib.Path(__file__).resolve().parent.parent / "docs" / "images"
SCREENSHOTS = os.environ.get("MIYAQ_SCREENSHOTS") == "1"
EVIL = '<img src=x onerror="alert(1)"><script>alert(2)</script>'
TOKEN = "open-sesame-0123456789"    # http_token: 16 characters or more


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: scripts/test installs Debian's chromium (apt-get install chromium)")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS, timeout=30_000)
        yield chromium
        chromium.close()


class Tab:
    """A browser page that records script errors, CSP violations and dialogs."""

    def __init__(self, browser: Any, base: str) -> None:
        self.context = browser.new_context(viewport={"width": 1280, "height": 820})
        self.context.set_default_timeout(10_000)
        self.page = self.context.new_page()
        self.base = base
        self.errors: list[str] = []
        self.dialogs: list[str] = []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("dialog", self._dialog)

    def _dialog(self, dialog: Any) -> None:
        self.dialogs.append(dialog.message)
        dialog.dismiss()

    def open(self, path: str) -> Any:
        response = self.page.goto(self.base + path)
        assert response is not None and response.ok, f"{path}: {response and response.status}"
        return self.page

    def shot(self, name: str) -> None:
        if SCREENSHOTS:
            IMAGES.mkdir(parents=True, exist_ok=True)
            self.page.screenshot(path=str(IMAGES / name), full_page=True)

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def live(http_node: Any, api: Http) -> Iterator[dict[str, Any]]:
    """The node with a real worker, finished, failed, running and dead tasks."""
    from apps.console_app import app
    worker = ThreadWorker(app, [f"tcp://127.0.0.1:{http_node.config.port}"], concurrency=4,
                          heartbeat=0.25, grace=0.1).start()
    try:
        wait_for(lambda: api.get("/workers")[1]["workers"], "the worker to register")
        for i in range(20):
            api.post("/tasks", {"name": "resize", "queue": "images", "args": [640 + i, 480]})
        charged = [api.post("/tasks", {"name": "charge", "queue": "billing", "args": [f"acct-{i}"],
                                       "max_retries": 0})[1]["id"] for i in range(3)]
        api.post("/tasks", {"name": "slow", "queue": "images", "args": [30]})
        evil = api.post("/tasks", {"name": "resize", "queue": "images", "args": [EVIL, 1], "key": "evil-key",
                                   "countdown": 3600})[1]["id"]
        held = make_dead(api, "mail", 2)        # dead letters no worker will pick up again once retried
        wait_for(lambda: all(api.get(f"/tasks/{i}")[1]["task"]["state"] == "dead" for i in charged),
                 "the failing tasks to die")
        if SCREENSHOTS:
            _load(api, 8.0)
            wait_for(lambda: (q := api.get("/queues/billing")[1])["ready"] + q["running"] == 0,
                     "the load to drain")
        yield {"charged": charged, "evil": evil, "mail": held}
    finally:
        worker.stop()


def _load(api: Http, seconds: float) -> None:
    """A few seconds of traffic so the overview chart has a shape (screenshots only)."""
    end = time.monotonic() + seconds
    i = 0
    while time.monotonic() < end:
        api.post("/tasks", {"name": "resize", "queue": "images", "args": [i, i]})
        if i % 7 == 0:
            api.post("/tasks", {"name": "charge", "queue": "billing", "args": [f"load-{i}"], "max_retries": 0})
        i += 1
        time.sleep(0.02)


@pytest.fixture
def tab(browser: Any, http_node: Any) -> Iterator[Tab]:
    t = Tab(browser, http_node.url)
    yield t
    t.close()


def test_every_page_loads_without_errors(tab, live, api):
    page = tab.open("/ui")
    page.wait_for_selector("#activity-chart[data-ready='1'] canvas")
    assert page.locator("#live-dead a").inner_text() == str(api.get("/status")[1]["totals"]["dead"])
    tab.shot("console-overview.png")
    page = tab.open("/ui/queues")
    assert page.locator("tr[data-queue='images']").is_visible()
    dead = str(api.get("/queues/billing")[1]["dead"])
    assert page.locator("tr[data-queue='billing'] td").nth(5).inner_text() == dead   # the dead column
    tab.shot("console-queues.png")
    page = tab.open("/ui/workers")
    assert page.get_by_role("cell", name="4", exact=True).first.is_visible()         # its concurrency
    page = tab.open("/ui/ring")
    assert page.get_by_role("cell", name="100.0%").is_visible()
    page = tab.open("/ui/periodic")
    assert page.locator("tr[data-schedule='hourly-report']").is_visible()
    assert "in " in page.locator("tr[data-schedule='nightly-cleanup'] td").nth(4).inner_text()
    page = tab.open("/ui/dead?queue=billing")
    assert page.locator("tr[data-task]").count() == min(50, int(dead))   # one page at most
    page = tab.open(f"/ui/tasks/{live['charged'][0]}")
    assert page.locator("#task-state").inner_text() == "dead"
    assert "card declined for account acct-0" in page.locator("table.attempts").inner_text()
    tab.shot("console-task.png")
    assert tab.errors == [] and tab.dialogs == []


def test_find_a_task_by_key_shows_its_payload_escaped(tab, live):
    page = tab.open("/ui")
    page.fill("input[name=ref]", "evil-key")
    page.click("header form.search button")
    page.wait_for_url(f"**/ui/tasks/{live['evil']}")
    assert page.locator("#task-state").inner_text() == "scheduled"
    assert EVIL.replace('"', '\\"') in page.locator("pre.payload").inner_text()   # shown as JSON text
    assert page.locator("pre.payload img").count() == 0
    assert tab.dialogs == [] and tab.errors == []


def test_clicking_retry_revives_a_dead_letter(tab, live, api):
    task_id = live["mail"][0]
    page = tab.open("/ui/dead?queue=mail")
    page.locator(f"tr[data-task='{task_id}'] button", has_text="Retry").click()
    page.wait_for_selector(".flash")
    assert "1 dead letter put back" in page.locator(".flash").inner_text()
    assert api.get(f"/tasks/{task_id}")[1]["task"]["state"] == "ready"
    assert [t["id"] for t in api.get("/dead?queue=mail")[1]["tasks"]] == [live["mail"][1]]
    assert page.locator(f"tr[data-task='{task_id}']").count() == 0
    assert tab.errors == []


def test_clicking_pause_pauses_a_queue_and_resume_undoes_it(tab, live, api):
    page = tab.open("/ui/queues")
    page.locator("tr[data-queue='images'] button", has_text="Pause").click()
    page.wait_for_selector(".flash")
    assert "Queue images paused on 1 of 1 node" in page.locator(".flash").inner_text()
    assert api.get("/queues/images")[1]["paused"] is True
    assert page.locator("tr[data-queue='images'] .paused").is_visible()
    page.locator("tr[data-queue='images'] button", has_text="Resume").click()
    page.wait_for_selector("tr[data-queue='images'] button:has-text('Pause')")
    assert api.get("/queues/images")[1]["paused"] is False
    assert tab.errors == []


def test_pages_update_themselves(tab, live, api):
    """htmx polls the page: a task dying after the page loaded shows up without a reload."""
    page = tab.open("/ui/dead?queue=mail")
    before = page.locator("tr[data-task]").count()
    make_dead(api, "mail", 1)
    expect(page.locator("tr[data-task]")).to_have_count(before + 1)   # no eval: the CSP forbids it
    assert tab.errors == []


def test_signing_in_with_the_token(browser, make_http_node):
    node = make_http_node(http_token=TOKEN)
    tab = Tab(browser, node.url)
    try:
        page = tab.open("/ui/ring")
        assert page.url.endswith("/ui/login?next=%2Fui%2Fring")
        page.fill("input[name=token]", "wrong")
        page.click("form.login button")
        assert page.get_by_role("alert").inner_text() == "That is not the token."
        page.fill("input[name=token]", TOKEN)
        page.click("form.login button")
        page.wait_for_url("**/ui/ring")
        page.click("header form.inline button")            # sign out
        page.wait_for_url("**/ui/login")
        assert tab.open("/ui").url.endswith("/ui/login?next=%2Fui")
        assert len(tab.errors) == 1 and "401" in tab.errors[0]     # the wrong token's answer, nothing else
    finally:
        tab.close()
