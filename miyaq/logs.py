"""How miyaq's programs (node, worker, dev-cluster, bench, chaos) set up logging."""
from __future__ import annotations

import logging


def setup_logging(level: str = "INFO") -> None:
    """Log to stderr at ``level`` (an unknown name means INFO), one line a record."""
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
