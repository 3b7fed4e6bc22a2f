"""An application that imports in ``miyaq worker``'s supervising process
but whose worker processes (``MIYAQ_PROCESSES=1``, as the supervisor starts
them) exit at once with status 3: workers that keep dying."""
from __future__ import annotations

import os

import miyaq

app = miyaq.App()

if os.environ.get("MIYAQ_PROCESSES") == "1":
    os._exit(3)
