"""The documentation's examples are tests: README.md and docs/*.md are
collected by the Sybil configuration in tests/docrun (docs/writing-docs.md)."""
from tests.docrun.collect import pytest_collect_file  # noqa: F401
