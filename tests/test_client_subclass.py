"""A user's subclass of :class:`miyaq.Client` (docs/python-api.md): the
client's base (:mod:`miyaq.client.lifecycle`, split out of client.py on
2026-12-07) must not change what a subclass may be."""
from __future__ import annotations

from typing import Any

import pytest

import miyaq
from miyaq.errors import MiyaqError
from raw_nodes import CountingNode

pytestmark = pytest.mark.timeout(60)


class _FrameworkMeta(type):
    """The metaclass of a framework's base class (an ORM's, a GUI toolkit's)."""


class _FrameworkBase(metaclass=_FrameworkMeta):
    pass


def test_a_client_subclass_may_mix_in_a_class_with_its_own_metaclass() -> None:
    """Fault (review39): the move of the client's close, fork and exit
    handling into its base made that base an ``abc.ABC``, so ``Client``'s
    metaclass became ``ABCMeta``: a user's ``class C(miyaq.Client,
    Base)`` where ``Base`` has a metaclass of its own raised TypeError
    (metaclass conflict) at its definition, where it was a plain class
    before. Now it is defined, made, used and closed as before."""

    class Mixed(miyaq.Client, _FrameworkBase):
        closes = 0

        def close(self, flush: bool = True, timeout: float = 10.0) -> None:
            Mixed.closes += 1
            super().close(flush=flush, timeout=timeout)

    assert type(miyaq.Client) is type
    node = CountingNode()
    client: Any = None
    try:
        client = Mixed(node.endpoint, green=False)
        assert isinstance(client, _FrameworkBase)
        client.close(flush=False)
        assert Mixed.closes == 1 and client._closed
        with pytest.raises(MiyaqError, match="client is closed"):
            client.submit("echo", [1])
    finally:
        if client is not None:
            client.close(flush=False)
        node.close()
