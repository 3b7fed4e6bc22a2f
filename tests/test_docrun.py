"""The doc-test runner itself (tests/docrun): what a writer relies on when a page runs."""
from __future__ import annotations

import os
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.docrun.ports import DOC_PORT_RANGES, PortMap
from tests.docrun.session import DocSession
from tests.docrun.shell import CURL_SHIM, BlockFailed, split_commands, trailing_comment


@pytest.fixture
def session(tmp_path: Path):
    s = DocSession(str(tmp_path / "page.md"))
    try:
        yield s
    finally:
        s.close()


class _Answers(BaseHTTPRequestHandler):
    """``/ok`` answers 200, every other path 404, each with a JSON body."""

    def do_GET(self) -> None:
        status = 200 if self.path == "/ok" else 404
        body = b'{"ok": true}' if status == 200 else b'{"error": "not_found"}'
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def web() -> Iterator[str]:
    """A loopback HTTP server on a free port (outside the ranges a page's ports are mapped from)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Answers)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def test_ports_map_by_range_keeping_offsets():
    ports = PortMap()
    text = ports.map_text("tcp://127.0.0.1:7450 peer 7451, --port 7460, http://localhost:8088/x "
                          "t=1767225600.0 id=0b7e4b5c 17450 74500 2026")
    base, http = ports.port(7450), ports.port(8088)
    assert text == (f"tcp://127.0.0.1:{base} peer {base + 1}, --port {base + 10}, http://localhost:{http}/x "
                    "t=1767225600.0 id=0b7e4b5c 17450 74500 2026")
    assert ports.environment()["MIYAQ_CONNECT"] == f"tcp://127.0.0.1:{base}"


def test_a_pages_ports_are_drawn_from_its_workers_own_slice_and_not_handed_out_again(monkeypatch):
    """Fault: with three pytest workers, README.md's ``miyaq dev-cluster
    --nodes 3`` found a node's HTTP port taken between its check and its
    bind (CI, 2026-12-07): a page drew its blocks anywhere in 20000-32000,
    where the other workers' tests take their ports too. Now each block is
    in this worker's own slice (miyaq.testing.ports) and remembered, so no
    other test of the worker is handed a port of it."""
    from miyaq.testing import ports as testing_ports
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw2")
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "3")
    ports = PortMap()
    blocks = [(ports.port(first), count) for first, count in DOC_PORT_RANGES]
    for base, count in blocks:
        low, high = testing_ports._slice(count)     # gw2's third of the ports below the ephemeral range
        assert low <= base < high, (base, count, low, high)
    taken = {port for base, count in blocks for port in range(base, base + count)}
    assert len(taken) == sum(count for _, count in blocks), "the blocks overlap"
    handed = {testing_ports.free_port() for _ in range(200)}
    assert not handed & taken


def test_commands_split_and_long_running_ones_recognised():
    commands = split_commands("# a comment\nmiyaq node --port 7450   # serve\n\ncurl -s \\\n  http://x\n"
                              "MIYAQ_PORT=7460 miyaq worker tasks:app\n")
    assert [c.text for c in commands] == ["miyaq node --port 7450   # serve", "curl -s \\\n  http://x",
                                          "MIYAQ_PORT=7460 miyaq worker tasks:app"]
    assert [c.background is not None for c in commands] == [True, False, True]
    with pytest.raises(BlockFailed, match="stand alone"):
        split_commands("miyaq node && echo served")


def test_the_first_failing_command_fails_the_block(session, capsys):
    """Fault: a command of a page fails; the commands after it must not run as if nothing happened."""
    with pytest.raises(BlockFailed, match="exit status 3") as failure:
        session.run_shell("echo first\n(exit 3)\necho never")
    assert "first" in str(failure.value) and "never" not in str(failure.value).split("--- output ---")[1]
    with pytest.raises(BlockFailed):
        session.run_shell("false | cat")      # pipefail: a failure inside a pipe counts


def test_the_expected_status_is_read_from_the_comment_that_ends_the_line():
    [a, b, c, d] = split_commands("curl -s http://h/x   # answers 403 (a producer's token)\n"
                                  "curl -s -d '{\"a\": \"# answers 404\"}' http://h/#answers-404\n"
                                  "curl -s \\\n  -d '{}' http://h/y  # answers 413\n"
                                  "curl -s http://h/z;# answers 429\n")
    assert [x.expect_status for x in (a, b, c, d)] == [403, None, 413, 429]
    assert trailing_comment("echo 'it''s' \\# not # this one") == "# this one"
    assert trailing_comment('echo "a \\" # b" c') == ""


def test_a_block_sees_the_mapped_environment(session, capsys):
    session.run_shell('echo "$MIYAQ_CONNECT" 7450; pwd')
    out = capsys.readouterr().out
    port = session.ports.port(7450)
    assert f"tcp://127.0.0.1:{port} {port}" in out and str(session.dir) in out
    assert os.environ["MIYAQ_PORT"] == str(port) and os.getcwd() == str(session.dir)


def test_a_long_running_command_that_dies_at_start_fails_with_its_output(session):
    """Fault: `miyaq node` exits at once (here: a setting it refuses) instead of serving."""
    with pytest.raises(BlockFailed, match="exited with status 2") as failure:
        session.run_shell("miyaq node --max-tasks -1")
    assert "max_tasks" in str(failure.value)


def test_background_commands_are_stopped_and_the_process_restored(tmp_path: Path):
    """Fault: a page ends (or fails) with a node and a worker still running."""
    cwd, path = os.getcwd(), list(sys.path)
    s = DocSession(str(tmp_path / "page.md"))
    s.write_file("tasks.py", "import miyaq\napp = miyaq.App()\n@app.task(name='add')\ndef add(a, b):\n"
                             "    return a + b\n")
    s.run_shell("miyaq node\nmiyaq worker tasks:app\nmiyaq status")
    pids = [b.proc.pid for b in s.background]
    s.close()
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]
    assert os.getcwd() == cwd and sys.path == path and not s.dir.exists()


def test_a_curl_that_gets_an_http_error_fails_the_block(session, web, capsys):
    """Fault: an example's curl gets a 404 (a route renamed, a body refused); curl exits 0 on an HTTP
    error unless told otherwise, so the page passed while its example no longer worked."""
    session.run_shell(f"curl -s {web}/ok")
    assert '{"ok": true}' in capsys.readouterr().out
    with pytest.raises(BlockFailed, match="exit status 22") as failure:
        session.run_shell(f"curl -s {web}/gone\necho never")
    message = str(failure.value)
    assert "HTTP 404" in message and "# answers 404" in message and "not_found" in message
    with pytest.raises(BlockFailed, match="HTTP 404"):
        session.run_shell(f"curl -s {web}/gone | cat")        # in a pipe too
    with pytest.raises(BlockFailed, match="HTTP 404"):
        session.run_shell(f"curl -s --fail-with-body {web}/gone")


def test_a_curl_that_shows_an_error_on_purpose_must_get_that_error(session, web, capsys):
    """Fault: an example that shows a 404 on purpose passed whatever it got, so it went on passing
    once the route answered something else (a 200, a 403, no server at all)."""
    session.run_shell(f"curl -s {web}/gone   # answers 404\ncurl -s --fail-with-body {web}/gone  # answers 404")
    assert capsys.readouterr().out.count("not_found") == 2
    with pytest.raises(BlockFailed, match="answers 403; curl got HTTP 404"):
        session.run_shell(f"curl -s {web}/gone   # answers 403")
    with pytest.raises(BlockFailed, match="answers 404; curl got HTTP 200"):
        session.run_shell(f"curl -s {web}/ok   # answers 404")
    # The expectation is the line's own: the next curl of the block must succeed again.
    with pytest.raises(BlockFailed, match="HTTP 404"):
        session.run_shell(f"curl -s {web}/gone   # answers 404\ncurl -s {web}/gone")
    with pytest.raises(BlockFailed, match="runs no curl"):
        session.run_shell("echo hello   # answers 404")


def test_a_command_that_fails_on_purpose_must_fail_so(session, capsys):
    """Fault: an example that shows a refusal (`miyaq tasks` with a producer's key, then
    `|| echo refused`) passed whatever the command did, refused or not."""
    session.run_shell("echo shown; (exit 2)   # exits 2: refused\necho after")
    assert capsys.readouterr().out.split() == ["shown", "after"]
    with pytest.raises(BlockFailed, match="this command exits 2; it exited 0"):
        session.run_shell("true   # exits 2")
    with pytest.raises(BlockFailed, match="this command exits 2; it exited 3"):
        session.run_shell("(exit 3)   # exits 2")
    with pytest.raises(BlockFailed, match="not waited for"):
        session.run_shell("miyaq node   # exits 2")


def test_a_session_opened_inside_a_page_still_runs_the_real_curl(session, web, tmp_path, capsys):
    """Fault: a session opened while a page's environment is in place (the runner's curl first on
    PATH) took that curl for the real one, and its curl called itself."""
    inner = DocSession(str(tmp_path / "inner.md"))
    try:
        assert Path(inner.env["DOCRUN_REAL_CURL"]).name == "curl"
        assert Path(inner.env["DOCRUN_REAL_CURL"]).parent != CURL_SHIM
        inner.run_shell(f"curl -s {web}/ok")
        assert '{"ok": true}' in capsys.readouterr().out
    finally:
        inner.close()


@pytest.mark.parametrize("line", [
    "curl -sD /dev/null {web}/gone",            # a -D among short options: the page's, the last, wins
    "curl -s -D/dev/null {web}/gone",           # its file written on to it
    "curl -s {web}/gone {web}/ok",              # two answers, the error first
    "curl -s {web}/ok --next {web}/gone",       # a second transfer, whose headers -D does not dump
], ids=["-sD", "-Dfile", "two-urls", "next"])
def test_a_curl_whose_error_the_runner_cannot_see_still_fails_the_block(session, web, line):
    """Fault: the runner's curl read the status of the last answer its own -D
    dumped, so an error it did not see there passed: a -D of the page's
    given as ``-sD file`` or ``-Dfile`` replaced the runner's (no status read:
    the curl's exit 0 passed), and of two URLs, or a ``--next`` transfer,
    only the last or the first was read."""
    with pytest.raises(BlockFailed, match="docrun: "):
        session.run_shell(line.format(web=web))
    session.run_shell(f"curl -s {web}/ok {web}/ok")      # two answers, both good: passes
    session.run_shell("curl --version")                  # no HTTP answer to read: passes


def test_after_a_dev_cluster_is_ready_a_page_finds_it_through_its_state_file_not_the_mapped_default():
    """Fault (CI, 2026-12-08): cluster.md's ``miyaq dev-cluster --nodes 3``
    moved n1 to the next free block (another process took a port of its
    own after the check), and wrote its real endpoint to ``.miyaq-dev.json``;
    the page's ``miyaq worker tasks:app`` and ``tasks.add.call`` still
    dialled the mapped default ``MIYAQ_CONNECT`` (the port n1 had left) --
    the page says they read the file when ``MIYAQ_CONNECT`` is not given."""
    session = DocSession("docs/example.md")
    try:
        assert "MIYAQ_CONNECT" in session.env and "MIYAQ_CONNECT" in os.environ
        session._after_ready("miyaq node --port 7450")
        assert "MIYAQ_CONNECT" in session.env, "a lone node's page keeps the mapped default"
        session._after_ready("miyaq dev-cluster --nodes 3")
        assert "MIYAQ_CONNECT" not in session.env and "MIYAQ_CONNECT" not in os.environ
    finally:
        session.close()
