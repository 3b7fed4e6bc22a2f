"""The public API as a user's type checker sees it (docs/python-api.md, "Type checking").

miyaq ships a PEP 561 ``py.typed`` marker: without it (before 2026-12-06) a
user's mypy treated ``import miyaq`` as untyped and saw ``Any`` everywhere,
and ``@app.task`` returned ``Any`` even to a checker that read the source, so
no wrong call of a handler was caught. These tests run mypy (its API, a cache
in a tmp dir) on a small user program against the package as the suite
imports it, asserting that correct uses pass and that each named wrong use
fails with the expected error.
"""
from __future__ import annotations

import configparser
import gc
import os
from pathlib import Path

import pytest

import miyaq

api = pytest.importorskip("mypy.api")

ROOT = Path(miyaq.__file__).resolve().parent.parent

USER_TASKS = '''
import miyaq

app = miyaq.App("tcp://127.0.0.1:7450", window=100, submit_timeout=5.0)


@app.task(name="add")
def add(a: int, b: int) -> int:
    return a + b


@app.task(name="greet", queue="q", max_retries=2)
def greet(name: str, *, punct: str = "!") -> str:
    return name + punct


@app.task
async def fetch(host: str) -> str:
    return host
'''

GOOD = '''
import miyaq
import miyaq.aio
from tasks import add, app, fetch, greet

n: int = add(2, 3)
s: str = greet.call("ann", punct="?")
m: int = add.call(2, 3, timeout=5)
h: miyaq.TaskHandle = add.submit(2, 3)
h2: miyaq.TaskHandle = add.submit(2, 3, countdown=60, key="k", queue="q")
h3: miyaq.TaskHandle = add.submit_with((2, 3), None, queue="q")
td: miyaq.TaskDef[[int, int], int] = add
reveal_type(add)
reveal_type(fetch.call("x"))
ctx: miyaq.TaskContext | None = miyaq.current_task()
attempt: int = ctx.attempt if ctx is not None else 0
h4 = miyaq.Client().submit("add", [1, 2], countdown=1.5, eta=None, at_most_once=True, key="k", wait=False)
v: object = miyaq.Client().call("add", [1, 2], timeout=3, queue="q", id=miyaq.new_id())
with miyaq.Client() as client:
    job = client.receive("jobs")
    if job is not None:
        first: list[object] = job.args
        done: bool = job.ack(first)


async def main() -> None:
    fetched: str = await fetch.call_async("x")
    total: int = await add.call_async(1, 2, timeout=1)
    ah: miyaq.aio.TaskHandle = await add.submit_async(1, 2, wait=True)
    async with miyaq.aio.Client() as aio:
        r: object = await aio.call("add", [1, 2], id=miyaq.new_id(), timeout=3, queue="q")
    await app.aclose()
    added: int = await (await add.submit_async(1, 2)).result()
    got: str = await (await (await fetch.submit_async("x", queue="q")).wait_accepted()).result(timeout=1)


summed: int = add.submit(2, 3).result(timeout=5)
fetched_later: str = fetch.submit("x", countdown=1).result()
reveal_type(add.submit(2, 3))
reveal_type(fetch.submit_with(("x",), queue="q").wait_accepted().result())
untyped: miyaq.TaskHandle = miyaq.Client().submit("add", [1, 2])
anything: str = untyped.result()
widened: miyaq.TaskHandle[object] = add.submit(2, 3)


def bare(h: miyaq.TaskHandle, ah: miyaq.aio.TaskHandle) -> miyaq.TaskHandle:
    return h
'''

#: Each wrong use, the fault it simulates, and the message mypy must give.
BAD = [
    ('add("2", 3)', "a handler called here with a str for an int",
     'Argument 1 to "__call__" of "TaskDef" has incompatible type "str"; expected "int"'),
    ('add.submit("2", 3)', "submit with a str for an int",
     'No overload variant of "submit" of "TaskDef" matches argument types "str", "int"'),
    ("add.call(1)", "call with an argument missing",
     'No overload variant of "call" of "TaskDef" matches argument type "int"'),
    ("x: str = add.call(1, 2)", "a result used as the wrong type",
     'Incompatible types in assignment (expression has type "int", variable has type "str")'),
    ('greet.submit("ann", punc="?")', "a misspelt keyword of the handler",
     'No overload variant of "submit" of "TaskDef" matches argument types "str", "str"'),
    ('add.submit(1, 2, countdown="5")', "a task option of the wrong type",
     'No overload variant of "submit" of "TaskDef" matches argument types "int", "int", "str"'),
    ("app.task(queue=1)", "a decorator option of the wrong type",
     'No overload variant of "task" of "App" matches argument type "int"'),
    ("app.task(retries=3)", "a misspelt decorator option",
     'Unexpected keyword argument "retries" for overloaded function "task" of "App"; did you mean "max_retries"?'),
    ("y: int = fetch.call(\"x\").upper()", "an async handler's result used as the wrong type",
     'Incompatible types in assignment (expression has type "str", variable has type "int")'),
    ('miyaq.Client().submit("add", [1], countdwon=5)', "a misspelt option of Client.submit",
     'Unexpected keyword argument "countdwon" for "submit" of "Client"; did you mean "countdown"?'),
    ('miyaq.Client().submit("add", [1], queue=1)', "an option of the wrong type in Client.submit",
     'Argument "queue" to "submit" of "Client" has incompatible type "int"; expected "str | None"'),
    ('add.submit_with((1, 2), queue=["a"])', "an option of the wrong type in submit_with",
     'Argument "queue" to "submit_with" of "TaskDef" has incompatible type "list[str]"; expected "str | None"'),
    ("miyaq.App(windw=100)", "a misspelt client option of App (a ConfigError from App at run time)",
     'Unexpected keyword argument "windw" for "App"; did you mean "window"?'),
    ("miyaq.App(green=True)", "App(green=...) (the app decides green; a ConfigError at run time)",
     'Unexpected keyword argument "green" for "App"'),
    ("def step(ctx: miyaq.TaskContext) -> str: return ctx.attempt", "a TaskContext field used as the wrong type",
     'Incompatible return value type (got "int", expected "str")'),
    ("r1: str = add.submit(1, 2).result()", "a submitted task's result used as the wrong type",
     'Incompatible types in assignment (expression has type "int", variable has type "str")'),
    ('r2: int = fetch.submit("x", countdown=1).result()', "an async handler's result, with a task option",
     'Incompatible types in assignment (expression has type "str", variable has type "int")'),
    ('r3: str = add.submit_with((1, 2), queue="q").wait_accepted().result()', "submit_with's result",
     'Incompatible types in assignment (expression has type "int", variable has type "str")'),
    ("async def r4() -> str: return await (await add.submit_async(1, 2)).result()", "a miyaq.aio handle's result",
     'Incompatible return value type (got "int", expected "str")'),
    ('async def r5() -> int: return await (await fetch.submit_async("x", wait=True)).result()',
     "an async handler's result through a miyaq.aio handle",
     'Incompatible return value type (got "str", expected "int")'),
    ("r6: miyaq.TaskHandle[str] = add.submit(1, 2)", "a handle kept as one of another result type",
     'Incompatible types in assignment (expression has type "TaskHandle[int]", variable has type "TaskHandle[str]")'),
]


BAD_PROGRAM = "import miyaq\nfrom tasks import add, app, fetch, greet\n" + "".join(f"{line}\n" for line, _, _ in BAD)


COLLECTOR_BEFORE: list[tuple[int, ...]] = []
"""The cycle collector's thresholds when :func:`checked` ran mypy."""


@pytest.fixture(scope="module")
def checked(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[str]]:
    """mypy --strict, once, on ``good.py`` and ``bad.py`` (beside the user's
    ``tasks.py``): each file's output lines. mypy finds miyaq where this
    process imports it from (PYTHONPATH, or site-packages), as it finds an
    installed package: there only a ``py.typed`` marker makes it read the
    annotations (without, ``missing library stubs or py.typed marker``).
    mypy sets the process's collector thresholds for its own run (200,000
    allocations a young collection): they are put back after it."""
    tmp = tmp_path_factory.mktemp("typing")
    (tmp / "tasks.py").write_text(USER_TASKS)
    (tmp / "good.py").write_text(GOOD)
    (tmp / "bad.py").write_text(BAD_PROGRAM)
    cwd = os.getcwd()
    COLLECTOR_BEFORE[:] = [gc.get_threshold()]
    os.chdir(tmp)
    try:
        stdout, stderr, _ = api.run([
            "--strict", "--no-error-summary", "--show-error-codes", "--hide-error-context",
            "--cache-dir", str(tmp / ".mypy_cache"), "--python-version", "3.11",
            "--config-file", "", "good.py", "bad.py"])
    finally:
        os.chdir(cwd)
        gc.set_threshold(*COLLECTOR_BEFORE[0])
    lines = (stdout + stderr).splitlines()
    return {name: [line for line in lines if line.startswith(f"{name}:")] for name in ("good.py", "bad.py", "tasks.py")}


def test_the_package_ships_a_py_typed_marker() -> None:
    """Without the marker a user's mypy reads an installed miyaq as untyped
    ("missing library stubs or py.typed marker"): it must be in the package
    and in the files setup.cfg installs."""
    assert (ROOT / "miyaq" / "py.typed").is_file()
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    assert "py.typed" in cfg["options.package_data"].get("miyaq", "").replace(",", " ").split()


def test_running_mypy_here_leaves_the_collector_of_this_process_as_it_found_it(
        checked: dict[str, list[str]]) -> None:
    """Fault: mypy, run in this process, sets the cycle collector's
    thresholds to (200000, 30, 30) for its own speed, and they stayed so for
    every later test of the same pytest worker: one that counts the young
    collections of 100,000 allocations (tests/test_decode_bounds.py) saw
    none (a suite run with ``-n 4 --dist loadfile`` that ran this file
    first on that worker, 2026-12-08)."""
    assert COLLECTOR_BEFORE and gc.get_threshold() == COLLECTOR_BEFORE[0]


def test_correct_uses_type_check(checked: dict[str, list[str]]) -> None:
    """The documented uses pass --strict, and ``@app.task`` keeps the
    handler's signature and, for ``call()``, its (awaited) return type."""
    out = "\n".join(checked["good.py"] + checked["tasks.py"])
    assert "py.typed marker" not in out, out
    assert [line for line in checked["good.py"] + checked["tasks.py"] if ": error:" in line] == [], out
    assert 'good.py:13: note: Revealed type is "miyaq.taskdef.TaskDef[[a: int, b: int], int]"' in out, out
    assert 'good.py:14: note: Revealed type is "str"' in out, out


def test_a_handle_is_typed_by_its_handlers_result(checked: dict[str, list[str]]) -> None:
    """``tdef.submit()`` gives a ``TaskHandle[R]`` (for an ``async def``
    handler, what its coroutine returns), so ``result()`` is typed; a bare
    ``TaskHandle`` -- ``Client.submit``'s, or an annotation -- stays valid
    under --strict (its parameter defaults to ``Any``, PEP 696). Before,
    handles were not generic and ``result()`` was ``Any``."""
    out = "\n".join(checked["good.py"])
    assert [line for line in checked["good.py"] if ": error:" in line] == [], out
    lines = GOOD.splitlines()
    handle = lines.index("reveal_type(add.submit(2, 3))") + 1
    assert f'good.py:{handle}: note: Revealed type is "miyaq.client.handle.TaskHandle[int]"' in out, out
    assert f'good.py:{handle + 1}: note: Revealed type is "str"' in out, out


@pytest.mark.parametrize("number, line, fault, message", [(i, *b) for i, b in enumerate(BAD, start=3)],
                         ids=[b[1] for b in BAD])
def test_wrong_uses_fail(checked: dict[str, list[str]], number: int, line: str, fault: str, message: str) -> None:
    """Each wrong use is an error on its own line, with mypy's message."""
    errors = [e for e in checked["bad.py"] if e.startswith(f"bad.py:{number}: error:")]
    assert any(message in e for e in errors), f"{fault}: {line!r}\n" + "\n".join(checked["bad.py"])


def test_the_public_signatures_resolve_at_run_time():
    """Fault: ``Unpack`` was imported for the type checker only, so
    ``typing.get_type_hints`` -- what pydantic's ``validate_call``,
    typeguard and Sphinx call -- raised NameError on the public methods
    that take ``**options``."""
    import typing

    import miyaq.aio

    for method in (miyaq.Client.submit, miyaq.Client.submit_url, miyaq.Client.call, miyaq.aio.Client.submit,
                   miyaq.aio.Client.call, miyaq.App.__init__, miyaq.TaskDef.submit_with, miyaq.TaskDef.submit,
                   miyaq.TaskHandle.result, miyaq.TaskHandle.wait_accepted, miyaq.aio.TaskHandle.result,
                   miyaq.aio.TaskHandle.wait_accepted):
        # (TaskDef.submit_async names miyaq.aio's handle for the checker only, as
        # before: importing miyaq.aio with miyaq would load asyncio before a gevent
        # worker patches the standard library.)
        hints = typing.get_type_hints(method, include_extras=True)
        assert "return" in hints or method is miyaq.App.__init__, method
    for name in ("submit", "submit_with", "call", "call_async"):
        # The overloads too (typing.get_overloads; Sphinx shows them): their
        # self-type aliases exist at run time. submit_async's name miyaq.aio's
        # handle, for the checker only (above).
        overloads = typing.get_overloads(getattr(miyaq.TaskDef, name))
        assert overloads, name
        for overload in overloads:
            assert "return" in typing.get_type_hints(overload), (name, overload)


def test_handles_are_generic_at_run_time_at_no_cost() -> None:
    """``TaskHandle[int]`` is a valid annotation at run time too (typing
    evaluates it), and being generic gives a handle no ``__dict__`` nor a
    ``__new__``/``__init__`` of ``Generic``'s: one is made as before."""
    import typing

    import miyaq.aio

    for cls in (miyaq.TaskHandle, miyaq.aio.TaskHandle):
        assert typing.get_origin(cls[int]) is cls and typing.get_args(cls[int]) == (int,)
        assert cls.__new__ is object.__new__
        assert cls.__init__ is miyaq.client.handle.HandleBase.__init__
        assert not hasattr(cls("t1", None, None), "__dict__")


def test_typing_extensions_is_not_needed_at_run_time() -> None:
    """Only a checker reads the PEP 696 ``TypeVar(default=...)`` (from
    ``typing_extensions``, whose stubs mypy and pyright ship): miyaq must
    import where it is not installed (it is not among its requirements)."""
    import subprocess
    import sys

    code = ("import sys; sys.modules['typing_extensions'] = None\n"
            "import miyaq, miyaq.aio, miyaq.taskdef\n"
            "assert miyaq.TaskHandle[int] is not None and miyaq.aio.TaskHandle[str] is not None\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
