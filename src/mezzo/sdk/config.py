"""Where clients (SDK and CLI) find the server and the token, the same way everywhere."""

from __future__ import annotations

import os
from pathlib import Path


def default_url() -> str:
    """``MEZZO_URL``, else built from ``MEZZO_HOST`` and ``MEZZO_API_PORT``."""
    explicit = os.environ.get("MEZZO_URL")
    if explicit:
        return explicit.rstrip("/")
    host = os.environ.get("MEZZO_HOST", "127.0.0.1")
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{os.environ.get('MEZZO_API_PORT', '7700')}"


def default_token() -> str | None:
    """``MEZZO_TOKEN``, else ``MEZZO_ADMIN_TOKEN``, else the data dir's generated admin token."""
    for name in ("MEZZO_TOKEN", "MEZZO_ADMIN_TOKEN"):
        value = os.environ.get(name)
        if value:
            return value
    from mezzo.node.auth import read_token_file  # the server's module: loaded only when needed

    return read_token_file(Path(os.environ.get("MEZZO_DATA_DIR", ".mezzo")))
