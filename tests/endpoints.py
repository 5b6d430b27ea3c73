"""Reading the HTTP endpoints the replicas and the monitor serve (/healthz, /readyz, /metrics)."""

from __future__ import annotations

import urllib.error
import urllib.request


def get(port: int, path: str) -> tuple[int, str]:
    """The status and body of ``GET http://127.0.0.1:<port><path>``; an HTTP error is an answer too."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
