"""A webhook destination that answers with a redirect (review30's audit,
2026-12-07): it is never followed -- not to another host, not to a
private address the destination names -- and the task is dead-lettered as
after a 4xx (docs/http.md, "Webhook delivery"). The destinations are raw
socket servers in threads on loopback ports the system picks."""
from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from test_webhook_faults import Destination, deliver_one

from miyaq.store.task import Task

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def servers() -> Iterator[Callable[..., Destination]]:
    made: list[Destination] = []

    def make(answer: Callable[[bytes], bytes]) -> Destination:
        made.append(Destination(answer))
        return made[-1]

    yield make
    for server in made:
        server.close()


@pytest.mark.parametrize("status", [b"301 Moved Permanently", b"302 Found", b"303 See Other",
                                    b"307 Temporary Redirect", b"308 Permanent Redirect"])
def test_a_redirect_is_not_followed_and_is_final(servers, status):
    """Fault simulated: the destination redirects the node elsewhere (here
    to a second loopback server standing for an internal service). An HTTP
    client that follows redirects would send the task there, past every
    destination check: the second server must get no request, and the
    attempt is final (``other``, not retried), the status in its error."""
    inside = servers(lambda head: b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nsecret")
    redirecting = servers(lambda head: b"HTTP/1.1 " + status + b"\r\nLocation: " + inside.url.encode()
                          + b"/admin\r\nContent-Length: 0\r\n\r\n")
    outcome = deliver_one(Task("redirected", "hooks", None, b"{}", url=f"{redirecting.url}/hook"))
    assert (outcome.ok, outcome.kind, outcome.retryable) == (False, "other", False), outcome
    assert outcome.error["status"] == int(status.split()[0])
    assert len(redirecting.heads) == 1
    assert inside.heads == []


@pytest.mark.parametrize("location,shown", [
    (b"/v2/hook?token=s3cr3t", "{redirecting}/v2/hook"),                  # relative: resolved against the task's URL
    (b"https://user:pw@hooks.example:8443/new?sig=abc", "https://hooks.example:8443/new"),
], ids=["relative", "absolute-with-credentials"])
def test_a_redirect_error_names_where_it_points_and_what_to_do(servers, location, shown):
    """Fault: a dead-lettered redirect's error said ``HTTP 302: `` and the
    (usually empty) body: neither where the destination moved nor that the
    node does not follow redirects, so the team looking at the dead letter
    could not tell what to change. It now names the Location (as a log line
    names a URL: no credentials, no query) and says to give the task the
    final URL."""
    redirecting = servers(lambda head: b"HTTP/1.1 302 Found\r\nLocation: " + location
                          + b"\r\nContent-Length: 0\r\n\r\n")
    outcome = deliver_one(Task("moved", "hooks", None, b"{}", url=f"{redirecting.url}/hook?k=1"))
    message = outcome.error["message"]
    assert outcome.error["status"] == 302
    assert shown.format(redirecting=redirecting.url) in message, message
    assert "redirects are not followed" in message, message
    assert "s3cr3t" not in message and "user:pw" not in message and "sig=" not in message, message
