"""What a kind of task shares: the interned, immutable :class:`Spec` of
:class:`~miyaq.store.task.Task` (queue, handler name, webhook URL and
method, priority, retry and lease settings, replicas), so a million tasks
of a few kinds hold a few specs and one copy of each name. Moved out of
``task.py`` on 2026-12-08 (the module had grown past 400 lines);
``miyaq.store.task`` still gives ``Spec``, ``spec_for`` and ``SPEC_FIELDS``.
"""
from __future__ import annotations

import weakref
from typing import Any

WEBHOOK_LANE_PREFIX = "@http/"   # '@' is not allowed in queue names

SPEC_FIELDS = ("queue", "name", "url", "method", "priority", "max_retries", "backoff", "backoff_max",
               "timeout", "replicas", "at_most_once")
MAX_SPECS = 65_536     # interned specs in use at once; beyond, new ones are still correct, just not shared


class Spec:
    """What a kind of task shares; never changed once made (see :func:`spec_for`)."""

    __slots__ = SPEC_FIELDS + ("lane", "__weakref__")

    def __init__(self, queue: str, name: str | None, url: str | None, method: str, priority: int,
                 max_retries: int, backoff: float, backoff_max: float, timeout: float, replicas: int,
                 at_most_once: bool) -> None:
        self.queue = queue
        self.name = name
        self.url = url
        self.method = method
        self.priority = priority
        self.max_retries = max_retries
        self.backoff = backoff
        self.backoff_max = backoff_max
        self.timeout = timeout
        self.replicas = replicas
        self.at_most_once = at_most_once
        # The ready lane: named tasks wait in their queue's lane, webhook tasks
        # in a lane of their own that only the webhook deliverer consumes.
        self.lane = queue if url is None else WEBHOOK_LANE_PREFIX + queue

    def values(self) -> tuple[Any, ...]:
        """The field values in SPEC_FIELDS order (the key :func:`spec_for` interns by)."""
        return (self.queue, self.name, self.url, self.method, self.priority, self.max_retries, self.backoff,
                self.backoff_max, self.timeout, self.replicas, self.at_most_once)


_specs: "weakref.WeakValueDictionary[tuple[Any, ...], Spec]" = weakref.WeakValueDictionary()


def spec_for(*values: Any) -> Spec:
    """The interned :class:`Spec` of these field values (in SPEC_FIELDS order).

    A spec is kept for as long as a task uses it (a weak reference): queue
    names, handler names and webhook URLs that producers make up, each used
    once, leave nothing behind. Before 2026-12-05 every kind of task ever
    seen was kept, up to ``MAX_SPECS``: 2.7 KB for each webhook URL of 2 KB,
    up to 175 MB a node for good."""
    spec = _specs.get(values)
    if spec is None:
        spec = Spec(*values)
        if len(_specs) < MAX_SPECS:
            _specs[values] = spec
    return spec
