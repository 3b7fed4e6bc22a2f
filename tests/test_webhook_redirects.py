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
