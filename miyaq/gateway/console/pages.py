"""The console's pages (GET): overview, queues, workers, ring, a task, dead
letters, periodic schedules, and the chart's data. Each reads through
:class:`~.data.ConsoleData` and renders one template; lists are paged
(``PAGE_SIZE`` rows, ``?page=``). A page runs only for a caller whose role
may use its JSON counterpart (``Console.guard``, :mod:`.access`), so a
page here never checks roles itself, the search by key excepted."""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from ...errors import InvalidField
from ...protocol.taskspec import check_queue
from ..permissions import needs
from ..request import Request, Response
from .access import FIND_BY_KEY, TASK_INTERNALS, TASK_RESULT, Viewer, allowed

if TYPE_CHECKING:
    from . import Console

PAGE_SIZE = 50
MAX_PAGE = 10_000
MAX_REF = 256


def _page(request: Request) -> int:
    return request.arg_integer("page", 1, 1, MAX_PAGE)


def _pager(page: int, total: int) -> dict[str, int]:
    return {"page": page, "pages": max(1, math.ceil(total / PAGE_SIZE)), "total": total}


def _busiest_first(row: dict[str, Any]) -> tuple[int, str]:
    held = sum(row.get(state) or 0 for state in ("scheduled", "ready", "running", "retrying", "dead"))
    return (-held, row["name"])


class Pages:
    def __init__(self, console: Console) -> None:
        self.console = console
        self.data = console.data

    def routes(self) -> list[tuple[str, Callable[[Request, Viewer], Response]]]:
        return [("/ui", self.overview), ("/ui/activity.json", self.activity), ("/ui/queues", self.queues),
                ("/ui/workers", self.workers), ("/ui/ring", self.ring), ("/ui/task", self.find_task),
                ("/ui/tasks/{id}", self.task), ("/ui/dead", self.dead), ("/ui/periodic", self.periodic)]

    def _show(self, request: Request, viewer: Viewer, template: str, **context: Any) -> Response:
        console = self.console
        return console.render.page(template, console.context(request, viewer, **context),
                                   cookie=viewer.fresh_cookie)

    # -- pages ---------------------------------------------------------------------------
    def overview(self, request: Request, viewer: Viewer) -> Response:
        status = self.data.status()      # this node's STATUS, built once for the page (10,000 queues: tens of ms)
        return self._show(request, viewer, "overview.html", status=status, rates=self.data.activity.latest(),
                          members=self.data.members(own=status))

    def activity(self, request: Request, viewer: Viewer) -> Response:
        since = request.arg_number("since", 0.0, 0.0, 1e12)
        return self.console.render.json(self.data.activity.series(since))

    def queues(self, request: Request, viewer: Viewer) -> Response:
        """The queues, busiest first (tasks held, then name), ``PAGE_SIZE`` a
        page: the page is re-fetched every few seconds, and rendering every
        queue of a node with 10,000 took the hub 0.3-0.5 s each time (the
        render, not the counting, was nine tenths of it)."""
        page = _page(request)
        rows = self.data.queues()
        rows.sort(key=_busiest_first)
        shown = rows[(page - 1) * PAGE_SIZE:page * PAGE_SIZE]
        return self._show(request, viewer, "queues.html", queues=shown, members=len(self.data.member_urls()),
                          pager=_pager(page, len(rows)))

    def workers(self, request: Request, viewer: Viewer) -> Response:
        page = _page(request)
        groups = self.data.workers(PAGE_SIZE * page)
        total = max((len(g["workers"]) for g in groups), default=0)
        for group in groups:
            group["workers"] = group["workers"][(page - 1) * PAGE_SIZE:page * PAGE_SIZE]
        return self._show(request, viewer, "workers.html", groups=groups, pager=_pager(page, total))

    def ring(self, request: Request, viewer: Viewer) -> Response:
        status = self.data.status()
        return self._show(request, viewer, "ring.html", ring=status["ring"], members=self.data.members(own=status),
                          cluster=status.get("cluster"))

    def find_task(self, request: Request, viewer: Viewer) -> Response:
        """The search box: a task id, or a key; redirects to the task's page.
        By id for every caller (as ``GET /tasks/{id}``); by key only for a
        role that may list tasks (``GET /tasks``): a producer searching a
        key gets 403 whether or not the key exists (no oracle for other
        tenants' keys), with the ring's holders of that id as for a 404.

        What was typed is looked up as it is first -- a key may start or
        end with spaces, as both doors take it (before 2026-12-05 the
        search stripped them, and could not find such a key) -- then
        without its leading and trailing spaces (a pasted id)."""
        typed = request.arg("ref") or ""
        refs = [r for r in dict.fromkeys((typed, typed.strip())) if r and len(r) <= MAX_REF]
        if not refs:
            raise InvalidField("type a task id or key" if not typed.strip() else
                               f"a task id or key has at most {MAX_REF} characters", field="ref")
        by_key = allowed(viewer, *FIND_BY_KEY)
        for ref in refs:
            task_id = self.data.find(ref, by_key)
            if task_id is not None:
                return self.console.render.redirect("/ui/tasks/" + quote(task_id, safe=""))
        return self._missing(request, viewer, refs[-1], by_key)

    def task(self, request: Request, viewer: Viewer) -> Response:
        """A task by its id: what ``GET /tasks/{id}`` answers this caller;
        the result if it may ``GET /tasks/{id}/result``; the payload and the
        failed attempts' tracebacks for admins only (before 2026-12-05 any
        token that may look up a task by id saw them)."""
        task_id = request.params["id"]
        view = self.data.task(task_id, internals=allowed(viewer, *TASK_INTERNALS),
                              result=allowed(viewer, *TASK_RESULT)) if len(task_id) <= MAX_REF else None
        if view is None:
            return self._missing(request, viewer, task_id)
        return self._show(request, viewer, "task.html", task_id=task_id, view=view,
                          urls=self.data.member_urls())

    def _missing(self, request: Request, viewer: Viewer, ref: str, by_key: bool = True) -> Response:
        """404: no such task here; 403 when ``ref`` was not an id and the
        caller may not search by key (the page says which role it needs)."""
        context = self.console.context(request, viewer, ref=ref, holders=self.data.holders_of(ref),
                                       urls=self.data.member_urls(), by_key=by_key,
                                       key_role=needs(*FIND_BY_KEY).value)
        status = 404 if by_key else 403
        return self.console.render.page("task_missing.html", context, status, viewer.fresh_cookie)

    def dead(self, request: Request, viewer: Viewer) -> Response:
        queue = request.arg("queue") or None
        if queue is not None:
            check_queue(queue)
        page = _page(request)
        total = self.data.dead_count(queue)
        tasks = self.data.dead(queue, (page - 1) * PAGE_SIZE, PAGE_SIZE)
        return self._show(request, viewer, "dead.html", tasks=tasks, queue=queue or "",
                          pager=_pager(page, total))

    def periodic(self, request: Request, viewer: Viewer) -> Response:
        page = _page(request)
        total, rows = self.data.schedules((page - 1) * PAGE_SIZE, PAGE_SIZE)
        status = self.data.status()
        return self._show(request, viewer, "periodic.html", schedules=rows, pager=_pager(page, total),
                          ring=status["ring"], periodic=status.get("periodic", {}))
