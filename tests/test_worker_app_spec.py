"""The one-line errors of ``miyaq worker module:app`` for the mistakes a
newcomer makes typing the app: each says what is wrong and what to type."""
from __future__ import annotations

import sys
import uuid
from pathlib import Path

import pytest

from miyaq.errors import ConfigError
from miyaq.worker.loader import load_app

APP_MODULE = """
import miyaq

app = miyaq.App("tcp://127.0.0.1:1")


@app.task(name="double")
def double(x):
    return 2 * x
"""


@pytest.fixture
def module_here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A module of a fresh name in a fresh current directory, as a user's
    ``tasks.py`` next to where they run the worker; forgotten afterwards."""
    name = f"newuser_tasks_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(APP_MODULE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    sys.modules.pop(name, None)


def refusal(spec: str) -> str:
    with pytest.raises(ConfigError) as err:
        load_app(spec)
    return str(err.value)


def test_a_dot_written_for_the_colon_is_named(module_here):
    """Mistake: ``miyaq worker tasks.app``. Before, "cannot import
    'tasks.app': No module named 'tasks.app'; 'tasks' is not a package",
    with nothing saying the colon was wanted."""
    message = refusal(f"{module_here}.app")
    assert message.startswith(f"cannot import '{module_here}.app': "), message
    assert f"did you mean '{module_here}:app'?" in message, message


@pytest.mark.parametrize("written,meant", [("{m}.py", "{m}:app"), ("{m}.py:app", "{m}:app"),
                                            ("./{m}.py", "{m}:app")])
def test_the_file_name_written_for_the_module_is_named(module_here, written, meant):
    """Mistake: ``miyaq worker tasks.py`` (the file, as ``python tasks.py``
    takes it). Before 2026-12-07 the hint said "did you mean 'tasks:py'?",
    which fails the same way; now it names the module, ``tasks:app``."""
    message = refusal(written.format(m=module_here))
    assert f"did you mean '{meant.format(m=module_here)}'?" in message, message
    assert ":py'" not in message, message


def test_a_mistyped_attribute_names_the_module_s_app(module_here):
    """Mistake: ``miyaq worker tasks:ap``. Before, "'tasks:ap' is not a
    miyaq.App", as if ``ap`` were there and of the wrong kind."""
    message = refusal(f"{module_here}:ap")
    assert message == f"'{module_here}:ap': module '{module_here}' has no 'ap'; its miyaq.App: {module_here}:app"


def test_a_task_given_for_the_app_says_what_it_is(module_here):
    """Mistake: the task's name in place of the app's (``tasks:double``)."""
    message = refusal(f"{module_here}:double")
    assert message.startswith(f"'{module_here}:double': {module_here}:double is a TaskDef, not a miyaq.App; "), message
    assert message.endswith(f"its miyaq.App: {module_here}:app"), message


def test_a_module_not_found_says_where_it_was_looked_for(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Mistake: the worker started from another directory than the one that
    holds the module. Before, only "No module named ...", nothing saying
    where the worker looked."""
    monkeypatch.chdir(tmp_path)
    message = refusal("newuser_no_such_module_here:app")
    assert message.startswith("cannot import 'newuser_no_such_module_here': No module named "), message
    assert f"looked for from {tmp_path}" in message and "PYTHONPATH" in message, message


def test_the_right_spec_still_loads(module_here):
    """Not a fault: ``module:app`` and ``module`` alone load the app."""
    assert sorted(load_app(f"{module_here}:app").tasks) == ["double"]
    assert load_app(module_here) is load_app(f"{module_here}:app")
