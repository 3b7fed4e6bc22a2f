"""The check of a JSON body (:func:`miyaq.gateway.json_body.json_problem`)
costs no entry per value: it runs on the node's one thread, and a body of
``http_max_body`` may hold 1.4 million values.

Checked by what it allocates (tracemalloc, deterministic), never by a
duration; and against the check it replaced, on random values, for what
it refuses.
"""
from __future__ import annotations

import math
import random
import tracemalloc
from typing import Any

import pytest

from gateway_harness import FIXTURES
from miyaq.constants import MAX_JSON_DEPTH
from miyaq.gateway.json_body import MAX_INT, MIN_INT, json_problem

http_node, api, make_http_node, make_web_worker = FIXTURES

pytestmark = pytest.mark.timeout(60)


def test_a_body_of_200000_empty_arrays_is_checked_without_an_entry_each():
    """Fault: a producer posts a body of empty arrays (``[[],[],...]``, 3
    bytes a value). The check kept a stack entry, a new tuple, for every
    value: a 4 MiB body of 1.4 million took 4-5 s of the node's thread and
    90 MB more (another client's /healthz waited 9.9 s). Here 200,000 of
    them: before the fix the check allocated 14 MiB and more; now under
    1 MiB -- only arrays and maps that hold something wait on its stack."""
    value: dict[str, Any] = {"args": [[] for _ in range(200_000)]}
    tracemalloc.start()
    try:
        assert json_problem(value) == ""
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1024 * 1024, f"the check allocated {peak:,} bytes for 200,000 empty arrays"


def _old_problem(value: Any, limit: int = MAX_JSON_DEPTH) -> str:
    """The check as it was before 2026-12-07 (one stack entry per value): the reference."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return "surrogate"
            continue
        if isinstance(item, int) and not isinstance(item, bool):
            if not MIN_INT <= item <= MAX_INT:
                return "integer"
            continue
        if isinstance(item, float):
            if not math.isfinite(item):
                return "float"
            continue
        if isinstance(item, dict):
            if depth > limit:
                return "nested"
            stack.extend((key, depth) for key in item)
            stack.extend((child, depth + 1) for child in item.values())
        elif isinstance(item, list):
            if depth > limit:
                return "nested"
            stack.extend((child, depth + 1) for child in item)
    return ""


SCALARS = [0, 1, -1, MAX_INT, MIN_INT, MAX_INT + 1, MIN_INT - 1, 1.5, math.inf, -math.inf, True, False, None,
           "", "text", "caf\u00e9", "\udc80", "a\ud800b"]


def _random_value(rng: random.Random, depth: int) -> Any:
    roll = rng.random()
    if depth > MAX_JSON_DEPTH + 2 or roll < 0.45:
        return rng.choice(SCALARS[:7] * 6 + SCALARS)      # mostly harmless
    if roll < 0.75:
        return [_random_value(rng, depth + 1) for _ in range(rng.choice([0, 0, 1, 1, 2, 3]))]
    keys = ["k", "x", "caf\u00e9", "\udc80"] if rng.random() < 0.1 else ["k", "x", "y"]
    return {rng.choice(keys): _random_value(rng, depth + 1) for _ in range(rng.choice([0, 1, 2]))}


def _deep(levels: int, inner: Any) -> Any:
    value = inner
    for i in range(levels):
        value = [value] if i % 2 else {"k": value}
    return value


@pytest.mark.parametrize("seed", range(20))
def test_it_refuses_what_the_old_check_refused(seed):
    rng = random.Random(seed)
    for _ in range(300):
        value = _random_value(rng, 1)
        if rng.random() < 0.2:      # near the depth limit, empty or not at the bottom
            value = _deep(MAX_JSON_DEPTH - 2 + rng.randrange(4), rng.choice([[], {}, 0, [1], value]))
        assert bool(json_problem(value)) == bool(_old_problem(value)), value


@pytest.mark.parametrize("value, kind", [
    (_deep(MAX_JSON_DEPTH, []), "nested"), (_deep(MAX_JSON_DEPTH - 1, []), ""),
    ({"\udc80": 1}, "surrogate"), ([1, [MAX_INT + 1]], "integer"), ({"a": [math.inf]}, "float"),
    ("\udc80", "surrogate"), (MIN_INT - 1, "integer"), (True, ""), ([None, False, "x", 2.5], ""),
])
def test_each_problem_is_named(value, kind):
    problem = json_problem(value)
    assert bool(problem) == bool(kind) == bool(_old_problem(value))
    words = {"nested": "nested deeper", "surrogate": "surrogate", "integer": "64-bit", "float": "overflows"}
    assert kind == "" or words[kind] in problem, problem


def test_parsing_a_body_of_200000_arrays_starts_no_collection():
    """Fault: a body of many small containers (``[[0],[0],...]``) made the
    cycle collector walk the young ones every 700 allocations while the
    node's one thread parsed it: 60-75% of the parse (a 4 MiB body of a
    million ``[0]``: 1.7 s, 0.47 s without). The collector is paused for
    the parse, and as it was after it, a failed parse too."""
    import gc
    from miyaq.gateway.json_body import parse_json
    from miyaq.errors import InvalidField
    text = "[" + ",".join(["[0]"] * 200_000) + "]"
    runs: list[str] = []

    def seen(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            runs.append(phase)

    assert gc.isenabled()
    gc.callbacks.append(seen)
    try:
        assert len(parse_json(text)) == 200_000
        assert len(runs) <= 1 and gc.isenabled()    # at most the one owed once it is back (286 before)
        with pytest.raises(InvalidField):
            parse_json("[" * 100_000 + "]" * 100_000)      # too deep: RecursionError inside the parse
        assert gc.isenabled()
        gc.disable()
        parse_json("[1]")
        assert not gc.isenabled()          # left as it was found
    finally:
        gc.enable()
        gc.callbacks.remove(seen)


def test_a_large_result_is_converted_once_for_all_who_ask(make_http_node, client_for, monkeypatch):
    """Fault: callers ask for one task's large result (here 300,000 empty
    arrays; a million, 1 MB, took 0.75 s of the node's one thread to decode,
    walk and write as JSON). Each caller's answer was converted anew: 500
    HTTP long-polls of one task, or one client asking again and again, held
    the node for minutes. Now the last large result shown is converted once
    and its answer shared; every caller gets the same JSON."""
    from gateway_harness import Http

    from miyaq.gateway import tasks_api

    conversions: list[int] = []
    real = tasks_api.convert.result_fields

    def counted(raw):
        conversions.append(len(raw or b""))
        return real(raw)

    monkeypatch.setattr(tasks_api.convert, "result_fields", counted)
    node = make_http_node()
    client = client_for(f"tcp://127.0.0.1:{node.config.port}")
    handle = client.submit("job", [], queue="big", wait=True)
    received = client.receive(["big"], timeout=10)
    assert received is not None and received.ack([[]] * 300_000)
    api = Http(node.url)
    answers = [api.get(f"/tasks/{handle.id}/result") for _ in range(5)]
    assert all(status == 200 for status, _, _ in answers)
    assert all(body == answers[0][1] for _, body, _ in answers) and len(answers[0][1]["result"]) == 300_000
    assert len([n for n in conversions if n >= 64 * 1024]) == 1       # 5 before
