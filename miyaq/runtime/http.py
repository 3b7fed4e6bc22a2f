"""The hub's HTTP client: geventhttpclient, a gevent library, imported here
so that the runtime stays the one package that owns gevent and what is
built on it (the gateway's webhook delivery and the console's peer pages
use it)."""
from __future__ import annotations

from geventhttpclient import HTTPClient
from geventhttpclient.response import HTTPParseError

__all__ = ["HTTPClient", "HTTPParseError"]
