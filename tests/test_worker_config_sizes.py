"""``miyaq worker`` sizes out of range: the error names the option and the
value given, as every other refused worker setting's does."""
from __future__ import annotations

import pytest

from miyaq.errors import ConfigError
from miyaq.worker.config import WorkerConfig

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize("given, words", [
    (dict(concurrency=0), "concurrency must be 1..10,000 tasks per process, not 0"),
    (dict(processes=0), "processes must be 1..1,024, not 0"),
    (dict(processes=0, concurrency=0), "processes must be 1..1,024, not 0"),
])
def test_a_size_below_one_names_the_option_and_the_value(given, words):
    """Bad input: ``miyaq worker tasks:app --concurrency 0`` (or
    ``MIYAQ_PROCESSES=0``) said "processes and concurrency must be at least
    1": which of the two, and what was given, was for the user to guess.
    Now it names the option, its range and the value, as a size above the
    range always did."""
    with pytest.raises(ConfigError) as err:
        WorkerConfig(**given)
    assert err.value.message == words


def test_the_range_s_ends_are_taken():
    assert WorkerConfig(processes=1, concurrency=1).slots == 1
    assert WorkerConfig(concurrency=10_000).slots == 10_000
