"""Signed webhook deliveries (``webhook_signing_secrets``, Standard Webhooks v1).

Fault simulated throughout: a receiver that cannot tell a delivery of the
node from a request anyone forged -- before 2026-12-07 nothing was signed.
Every signature here is checked by :func:`verify`, written from the
Standard Webhooks spec with ``hmac`` alone (not the node's code): a real
delivery to a 127.0.0.1 server verifies, a tampered body, another secret or
an old timestamp does not; two secrets sign twice (rotation); a task's own
headers of these names never reach the receiver while the node signs; a
node without the setting sends what it always sent; a file the node cannot
use stops it at start, naming the file, never a secret; the file is
re-read when it changes and on SIGHUP, and a broken reload keeps signing
with the secrets in force.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from gateway_harness import FIXTURES, Http, NodeThread, wait_for
from loopback_server import LoopbackServer, read_request
from miyaq.errors import ConfigError
from miyaq.gateway import outbound as outbound_module
from miyaq.gateway.destinations import Destinations
from miyaq.gateway.outbound import Outbound, Outcome
from miyaq.gateway.signing import MAX_SECRETS, WebhookSigner
from miyaq.store.task import Task
from miyaq.testing.harness import in_own_hub
from miyaq.testing.ports import free_port

http_node, api, make_http_node, make_web_worker = FIXTURES

pytestmark = pytest.mark.timeout(60)

TOLERANCE = 300     # seconds: the spec's advice to receivers


def new_secret(fill: int) -> tuple[str, bytes]:
    """A secret as the file holds it, and its bytes (32 of them, ``fill``-derived)."""
    raw = hashlib.sha256(f"secret-{fill}".encode()).digest()
    return "whsec_" + base64.b64encode(raw).decode(), raw


OLD, OLD_RAW = new_secret(1)
NEW, NEW_RAW = new_secret(2)


def verify(secret: bytes, headers: dict[str, str], body: bytes, now: float) -> bool:
    """The receiver's check, from the spec: all three headers, a timestamp
    within ``TOLERANCE`` of ``now``, and one ``v1`` signature equal (in
    constant time) to HMAC-SHA256(secret, "id.timestamp.body")."""
    lower = {k.lower(): v for k, v in headers.items()}
    try:
        msg_id, stamp, signatures = (lower["webhook-id"], lower["webhook-timestamp"], lower["webhook-signature"])
        timestamp = int(stamp)
    except (KeyError, ValueError):
        return False
    if abs(now - timestamp) > TOLERANCE:
        return False
    expected = base64.b64encode(hmac.new(secret, f"{msg_id}.{stamp}.".encode() + body, hashlib.sha256).digest())
    return any(version == "v1" and hmac.compare_digest(sig.encode(), expected)
               for version, _, sig in (entry.partition(",") for entry in signatures.split(" ")))


def write_secrets(path, *lines: str, mode: int = 0o600) -> str:
    path.write_text("".join(line + "\n" for line in lines))
    os.chmod(path, mode)
    return str(path)


def signed_node(make_http_node, path: str, **settings) -> tuple[NodeThread, Http]:
    node = make_http_node(webhook_signing_secrets=path, webhook_allow_private=True, default_backoff=0.01,
                          **settings)
    return node, Http(node.url)


def enqueue(api: Http, body: dict) -> str:
    status, answer, _ = api.post("/queue", body)
    assert status == 200, answer
    return answer["id"]


# -- a real delivery -----------------------------------------------------------------------------


def test_a_delivery_carries_a_signature_the_receiver_verifies(make_http_node, make_web_worker, tmp_path, caplog):
    """A node with one secret delivers a task to a 127.0.0.1 server: the
    delivery verifies with the secret (over its exact body), its
    ``webhook-id`` is the task's id (a ``.`` as ``%2E``); the same request
    with a tampered body, under another secret, or checked long after its
    timestamp, does not verify. No secret reaches the log (DEBUG), the
    status or the metrics."""
    caplog.set_level(logging.DEBUG)
    worker = make_web_worker()
    node, client = signed_node(make_http_node, write_secrets(tmp_path / "secrets", "# the current one", OLD))
    try:
        task_id = enqueue(client, {"url": f"{worker.url}/hook", "id": "order.42:paid",
                                   "params": {"amount": 12, "note": "caf\u00e9"}})
        wait_for(lambda: worker.count() == 1, "the delivery")
        request = worker.requests[0]
        now = time.time()
        assert request.headers["webhook-id"] == "order%2E42:paid" and request.headers["X-Task-Id"] == task_id
        assert request.headers["webhook-signature"].count("v1,") == 1
        assert verify(OLD_RAW, request.headers, request.body, now)
        assert not verify(OLD_RAW, request.headers, request.body + b" ", now), "a tampered body verified"
        assert not verify(OLD_RAW, request.headers, request.body.replace(b"12", b"99"), now)
        assert not verify(NEW_RAW, request.headers, request.body, now), "another secret verified"
        assert not verify(OLD_RAW, request.headers, request.body, now + 2 * TOLERANCE), "an old delivery verified"
        forged = dict(request.headers, **{"webhook-id": "order%2E43:paid"})
        assert not verify(OLD_RAW, forged, request.body, now), "another id verified"

        shown = [client.get(path)[1] for path in ("/status", "/metrics", f"/tasks/{task_id}")]
        assert shown[0]["webhooks"]["signing_secrets"] == 1     # how many, never which
        for text in [caplog.text, *map(str, shown)]:
            assert OLD not in text and OLD[6:] not in text and OLD_RAW.hex() not in text
        assert "webhook signing: 1 secret(s) from" in caplog.text
    finally:
        client.close()


def test_two_secrets_sign_twice_each_verifies_alone(make_http_node, make_web_worker, tmp_path):
    """Rotation: with the old and the new secret in the file, a delivery
    carries two ``v1`` signatures (the file's order), and a receiver holding
    either secret alone verifies it."""
    worker = make_web_worker()
    node, client = signed_node(make_http_node, write_secrets(tmp_path / "secrets", OLD, NEW))
    try:
        enqueue(client, {"url": f"{worker.url}/hook", "params": {"n": 1}})
        wait_for(lambda: worker.count() == 1, "the delivery")
        request = worker.requests[0]
        assert len(request.headers["webhook-signature"].split(" ")) == 2
        assert verify(OLD_RAW, request.headers, request.body, time.time())
        assert verify(NEW_RAW, request.headers, request.body, time.time())
    finally:
        client.close()


def test_a_retry_keeps_its_id_and_verifies(make_http_node, make_web_worker, tmp_path):
    """A 503, then 200: both attempts carry the same ``webhook-id`` (the
    receiver dedups on it), and each verifies with its own timestamp."""
    worker = make_web_worker(script={1: (503, {}, 0.0)})
    node, client = signed_node(make_http_node, write_secrets(tmp_path / "secrets", OLD))
    try:
        task_id = enqueue(client, {"url": f"{worker.url}/hook", "params": {"n": 1}, "backoff": 0.01})
        wait_for(lambda: worker.count() == 2, "the retry")
        first, second = worker.requests
        assert first.headers["webhook-id"] == second.headers["webhook-id"] == task_id
        assert second.headers["X-Task-Retry-Count"] == "1"
        assert all(verify(OLD_RAW, r.headers, r.body, time.time()) for r in (first, second))
    finally:
        client.close()


def test_without_the_setting_nothing_is_signed_and_a_tasks_own_headers_go_as_before(make_http_node,
                                                                                     make_web_worker):
    """No ``webhook_signing_secrets``: no signing header is added, and a
    task's own ``webhook-id`` (a producer relaying an event it signed
    itself) is sent as it always was."""
    worker = make_web_worker()
    node = make_http_node(webhook_allow_private=True)
    client = Http(node.url)
    try:
        enqueue(client, {"url": f"{worker.url}/hook", "params": {"n": 1}, "headers": {"webhook-id": "mine"}})
        wait_for(lambda: worker.count() == 1, "the delivery")
        headers = {k.lower(): v for k, v in worker.requests[0].headers.items()}
        assert headers["webhook-id"] == "mine"
        assert "webhook-signature" not in headers and "webhook-timestamp" not in headers
        assert client.get("/status")[1]["webhooks"]["signing_secrets"] == 0
    finally:
        client.close()


# -- a task's own headers, and the send time (one Outbound, a raw destination) ---------------------


class RawDestination(LoopbackServer):
    """Records each request's head as sent (every header line, duplicates
    too) and its body; answers 200."""

    def __init__(self) -> None:
        self.requests: list[tuple[bytes, bytes]] = []
        super().__init__()

    def _serve(self, conn) -> None:
        conn.settimeout(30)
        try:
            while (request := read_request(conn)) is not None:
                head, body = request
                with self.lock:
                    self.requests.append((head + b"\r\n", body))
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        except OSError:
            return
        finally:
            conn.close()

    def headers(self, n: int) -> list[tuple[str, str]]:
        lines = self.requests[n][0].decode("latin-1").split("\r\n")[1:]
        return [(name.strip().lower(), value.strip()) for name, _, value in
                (line.partition(":") for line in lines if line)]


@pytest.fixture
def raw_destination() -> Iterator[RawDestination]:
    destination = RawDestination()
    yield destination
    destination.close()


def send(task: Task, signer: WebhookSigner | None) -> Outcome:
    def run() -> Outcome:
        outbound = Outbound(1, 5.0, Destinations("", True), signer)
        try:
            return outbound.send(task, 5.0)
        finally:
            outbound.close()

    return in_own_hub(run)


def test_a_task_cannot_set_or_override_the_signing_headers(raw_destination, tmp_path):
    """Fault: a producer puts its own ``webhook-signature`` (and id, and
    timestamp, in other cases) in a task's headers, hoping the receiver
    reads its value. While the node signs, each of the three is sent once,
    with the node's value, and verifies; the task's other headers still go."""
    signer = WebhookSigner(write_secrets(tmp_path / "secrets", OLD))
    task = Task("t-1", "hooks", None, b'{"a": 1}', url=f"{raw_destination.url}/hook")
    task.meta = {"headers": {"Webhook-Signature": "v1,forged", "WEBHOOK-ID": "other", "webhook-timestamp": "1",
                             "X-Kept": "yes"}}
    assert send(task, signer).ok
    headers = raw_destination.headers(0)
    names = [name for name, _ in headers]
    for name in ("webhook-id", "webhook-timestamp", "webhook-signature"):
        assert names.count(name) == 1, headers
    values = dict(headers)
    assert values["webhook-id"] == "t-1" and "forged" not in values["webhook-signature"]
    assert values["x-kept"] == "yes"
    assert verify(OLD_RAW, values, raw_destination.requests[0][1], time.time())


def test_the_timestamp_is_the_send_time_of_each_attempt(raw_destination, tmp_path, monkeypatch):
    """Each attempt is signed when it is sent: two attempts of one task at
    two clock readings carry those two timestamps (and one id), each
    signature over its own."""
    signer = WebhookSigner(write_secrets(tmp_path / "secrets", OLD))
    task = Task("t-2", "hooks", None, b"body", url=f"{raw_destination.url}/hook")
    for now in (1_800_000_000.25, 1_800_000_777.9):
        monkeypatch.setattr(outbound_module, "wall", lambda now=now: now)
        assert send(task, signer).ok
    stamps = [dict(raw_destination.headers(n))["webhook-timestamp"] for n in (0, 1)]
    assert stamps == ["1800000000", "1800000777"]
    for n, now in ((0, 1_800_000_000), (1, 1_800_000_777)):
        assert verify(OLD_RAW, dict(raw_destination.headers(n)), b"body", now)


def test_a_get_without_a_body_signs_an_empty_body(raw_destination, tmp_path):
    """A GET sends no body: the signature is over ``id.timestamp.`` and verifies with an empty body."""
    signer = WebhookSigner(write_secrets(tmp_path / "secrets", OLD))
    task = Task("t-3", "hooks", None, b"", url=f"{raw_destination.url}/hook?x=1", method="GET")
    assert send(task, signer).ok
    assert raw_destination.requests[0][1] == b""
    assert verify(OLD_RAW, dict(raw_destination.headers(0)), b"", time.time())


def test_the_signature_is_the_standard_webhooks_one(tmp_path):
    """Interoperability: the Standard Webhooks reference libraries' test
    vector (secret, id, timestamp, body -> signature), which any receiver's
    library reproduces, is what the node signs."""
    path = write_secrets(tmp_path / "secrets", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    headers = WebhookSigner(path).headers("msg_p5jXN8AQM9LWM0D4loKWxJek", b'{"test": 2432232314}', 1614265330.6)
    assert headers == {"webhook-id": "msg_p5jXN8AQM9LWM0D4loKWxJek", "webhook-timestamp": "1614265330",
                       "webhook-signature": "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="}


# -- the file ------------------------------------------------------------------------------------

BAD_FILES = {
    "empty": ("", "holds no secret"),
    "comments only": ("# nothing yet\n\n", "holds no secret"),
    "no prefix": (OLD[6:] + "\n", ":1: does not start with whsec_"),
    "not base64": ("whsec_not*base64!\n", ":1: what follows whsec_ is not base64"),
    "too short": ("whsec_" + base64.b64encode(b"x" * 16).decode() + "\n", ":1: a secret of 16 bytes"),
    "too long": ("whsec_" + base64.b64encode(b"x" * 65).decode() + "\n", ":1: a secret of 65 bytes"),
    "two words": (f"{OLD} {NEW}\n", ":1: expected one secret a line"),
    "twice": (f"{OLD}\n# again\n{OLD}\n", ":3: the same secret as line 1"),
    "too many": ("".join(new_secret(n)[0] + "\n" for n in range(MAX_SECRETS + 1)), f"more than {MAX_SECRETS}"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_a_bad_secrets_file_is_refused_naming_the_file_never_a_secret(tmp_path, case):
    """Each file a node cannot sign with is a ConfigError naming the file
    (and the line), saying what a secret is -- and holding no secret."""
    text, words = BAD_FILES[case]
    path = tmp_path / "secrets"
    path.write_text(text)
    os.chmod(path, 0o600)
    with pytest.raises(ConfigError) as info:
        WebhookSigner(str(path))
    message = info.value.message
    assert str(path) in message and words in message, message
    assert OLD[6:] not in message and NEW[6:] not in message


@pytest.mark.parametrize("case", ["missing", "a directory", "not UTF-8"])
def test_a_secrets_file_that_cannot_be_read_is_refused(tmp_path, case):
    path = tmp_path / "secrets"
    if case == "a directory":
        path.mkdir()
    elif case == "not UTF-8":
        path.write_bytes(b"whsec_\xff\xfe\n")
    with pytest.raises(ConfigError) as info:
        WebhookSigner(str(path))
    assert str(path) in info.value.message and "\\xff" not in info.value.message


def test_a_node_with_a_bad_secrets_file_does_not_start(tmp_path):
    """``MIYAQ_WEBHOOK_SIGNING_SECRETS`` naming a file without a secret:
    the node stops at start, exit status 2, one line naming the file."""
    path = write_secrets(tmp_path / "secrets", "# to do")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIYAQ_")}
    env["MIYAQ_WEBHOOK_SIGNING_SECRETS"] = path
    proc = subprocess.run([sys.executable, "-m", "miyaq.cli.main", "node", "--port", str(free_port()),
                           "--http-port", str(free_port())], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().startswith(f"miyaq: error: {path} holds no secret"), proc.stderr


def test_a_secrets_file_others_may_read_is_warned_about(tmp_path, caplog):
    """The rule of every secret file the node reads (docs/security.md,
    "Files and their modes"): readable by others, a WARNING naming the file,
    its mode and the fix -- never the secret."""
    caplog.set_level(logging.WARNING, "miyaq.gateway.signing")
    path = write_secrets(tmp_path / "secrets", OLD, mode=0o644)
    WebhookSigner(path)
    assert f"webhook signing secrets file {path} is readable by others (mode 644" in caplog.text
    assert "chmod 600" in caplog.text and OLD[6:] not in caplog.text


def test_the_file_is_reloaded_when_it_changes_and_on_sighup(make_http_node, make_web_worker, tmp_path, caplog):
    """The old secret is replaced by the new one in the file: the node signs
    with the new one from its next delivery, without a restart. A broken
    file then (a reload that fails) keeps the new one in force, logged
    without a secret; a SIGHUP reload reads the file again too."""
    caplog.set_level(logging.INFO, "miyaq.gateway.signing")
    worker = make_web_worker()
    path = tmp_path / "secrets"
    node, client = signed_node(make_http_node, write_secrets(path, OLD))
    signer = node.node.part("gateway").signer
    try:
        enqueue(client, {"url": f"{worker.url}/hook", "params": {"n": 1}})
        wait_for(lambda: worker.count() == 1, "the first delivery")
        assert verify(OLD_RAW, worker.requests[0].headers, worker.requests[0].body, time.time())

        write_secrets(path, "# rotated", NEW)
        wait_for(lambda: node.call(lambda: signer.reloads["ok"]) == 1, "the file's reload")
        enqueue(client, {"url": f"{worker.url}/hook", "params": {"n": 2}})
        wait_for(lambda: worker.count() == 2, "the second delivery")
        second = worker.requests[1]
        assert verify(NEW_RAW, second.headers, second.body, time.time())
        assert not verify(OLD_RAW, second.headers, second.body, time.time())

        write_secrets(path, "whsec_broken!")
        wait_for(lambda: node.call(lambda: signer.reloads["failed"]) == 1, "the failed reload")
        enqueue(client, {"url": f"{worker.url}/hook", "params": {"n": 3}})
        wait_for(lambda: worker.count() == 3, "the third delivery")
        third = worker.requests[2]
        assert verify(NEW_RAW, third.headers, third.body, time.time())
        assert "webhook signing secrets not reloaded (the file changed), signing with the previous ones" \
            in caplog.text

        write_secrets(path, OLD, NEW)
        caplog.set_level(logging.INFO, "miyaq.node.node")
        node.call(node.node.reload)     # what SIGHUP runs
        assert "reading the webhook signing secrets again" in caplog.text
        assert "webhook signing secrets reloaded (SIGHUP): 2 secret(s)" in caplog.text
        assert client.get("/status")[1]["webhooks"]["signing_secrets"] == 2
        for secret in (OLD, NEW):
            assert secret[6:] not in caplog.text
    finally:
        client.close()


def test_a_sighup_reload_is_not_read_again_by_the_next_poll(tmp_path, caplog):
    """Fault (review33): a SIGHUP reloads the file (``reload``), and the
    next look for changes (``poll``, every second) found the file changed
    since *it* last looked and read it again -- a second reload and a
    second log line for one change; a file broken at the SIGHUP was
    reported twice. The same for the HTTP tokens file (same change watch)."""
    from miyaq.gateway.tokens import TokenTable
    secrets = write_secrets(tmp_path / "secrets", OLD)
    signer = WebhookSigner(secrets)
    tokens = tmp_path / "tokens"
    tokens.write_text("producer-token-0123456789abcdef producer\n")
    os.chmod(tokens, 0o600)
    table = TokenTable("", str(tokens))
    write_secrets(tmp_path / "secrets", OLD, NEW)
    tokens.write_text("producer-token-0123456789abcdef producer\nworker-token-0123456789abcdef worker\n")
    assert signer.reload("SIGHUP") and signer.count == 2
    assert table.reload("SIGHUP")
    assert not signer.poll() and not table.poll()
    assert signer.reloads["ok"] == 1 and table.reloads["ok"] == 1
    with open(secrets, "w") as broken:
        broken.write("whsec_not-base64!\n")
    with caplog.at_level(logging.ERROR, logger="miyaq.gateway.signing"):
        assert not signer.reload("SIGHUP")
        assert not signer.poll()
    assert signer.reloads["failed"] == 1 and signer.count == 2
    assert len([r for r in caplog.records if "not reloaded" in r.getMessage()]) == 1
