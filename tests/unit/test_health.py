"""/healthz and /readyz beside the metrics, over real HTTP on a free port."""

from __future__ import annotations

import socket
import threading

from services.serving.metrics import ServeMetrics
from tests.endpoints import get


def test_healthz_is_alive_readyz_follows_readiness_and_the_metrics_stay() -> None:
    ready = threading.Event()
    m = ServeMetrics()
    m.predictions.labels("v1").inc()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    m.start_http(port, ready=ready.is_set, addr="127.0.0.1")
    try:
        assert get(port, "/healthz") == (200, "ok\n")
        assert get(port, "/readyz") == (503, "not ready\n")
        ready.set()
        assert get(port, "/readyz") == (200, "ok\n")
        ready.clear()
        assert get(port, "/readyz")[0] == 503
        for path in ("/metrics", "/"):
            status, body = get(port, path)
            assert status == 200 and 'modelwatch_serve_predictions_total{model_version="v1"} 1.0' in body
    finally:
        m.stop_http()
