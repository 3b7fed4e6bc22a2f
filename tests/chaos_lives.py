"""What a failed chaos run did to the tasks it failed on, for a test's failure message."""
from __future__ import annotations

import json


def failed_lives(out) -> str:
    """The history lines of a few tasks the run failed on (lost, stuck,
    unexplained duplicates), for the failure message."""
    try:
        summary = json.loads((out / "summary.json").read_text())
        ids = [i for kind, ids in summary["examples"].items()
               if kind in ("lost", "duplicate_unexplained", "started_while_fenced") or kind.startswith("stuck")
               for i in ids[:3]]
        lines = [line for line in (out / "history.jsonl").read_text().splitlines()
                 if any(i in line for i in ids) or ('"fault"' in line and '"skipped"' not in line)]
    except (OSError, ValueError, KeyError):
        return ""
    return "the lives of " + ", ".join(ids) + ":\n" + "\n".join(lines[-200:])
