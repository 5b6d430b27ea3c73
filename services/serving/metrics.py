"""Prometheus metrics of one replica, in a registry of its own (two replicas in one process do not mix).

    modelwatch_serve_requests_total                    requests consumed (valid or not)
    modelwatch_serve_predictions_total{model_version}  predictions, by the version that computed them
    modelwatch_serve_dead_letters_total{reason}        dead letters: contract (bad input) or model (it raised)
    modelwatch_serve_batch_size                        requests per polled batch (histogram)
    modelwatch_serve_latency_seconds                   arrival at the replica to production, per request
    modelwatch_serve_active_model{model_version}       1 for the version serving now
    modelwatch_serve_model_commands_total{outcome}     commands activated or rejected
    modelwatch_serve_rewinds_total                     replays after a failed delivery or an abort

The same port answers the probes Kubernetes and Docker healthchecks use: ``/healthz`` (200 while the process
serves HTTP at all: alive) and ``/readyz`` (200 once the replica has reached the broker, loaded a model and
joined the group; 503 before and while it stops). Every other path is the metrics, as before.

Every request of a batch shares its latency (arrival of the batch to production of its predictions), so
the latency histogram takes one observation per batch weighted by the batch's size: exact per request,
without a Python call per request.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_wsgi_app
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.exposition import ThreadingWSGIServer
from prometheus_client.registry import Collector

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000)


class WeightedHistogram(Collector):
    """A histogram that takes ``count`` observations of one value in one call."""

    def __init__(self, name: str, documentation: str, buckets: tuple[float, ...]) -> None:
        self.name, self.documentation, self.bounds = name, documentation, list(buckets)
        self.counts = [0] * (len(buckets) + 1)  # the last one is +Inf
        self.total = 0.0
        self._lock = threading.Lock()

    def observe(self, value: float, count: int = 1) -> None:
        slot = bisect.bisect_left(self.bounds, value)
        with self._lock:
            self.counts[slot] += count
            self.total += value * count

    @property
    def count(self) -> int:
        return sum(self.counts)

    def collect(self) -> Iterator[HistogramMetricFamily]:
        with self._lock:
            counts, total = list(self.counts), self.total
        cumulative, running = [], 0
        for bound, c in zip([*map(str, self.bounds), "+Inf"], counts, strict=True):
            running += c
            cumulative.append((bound, float(running)))
        family = HistogramMetricFamily(self.name, self.documentation)
        family.add_metric([], cumulative, total)
        yield family


WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Probes come every few seconds: not one stderr line each (the replica's log is key=value)."""


def with_probes(metrics: WsgiApp, ready: Callable[[], bool]) -> WsgiApp:
    """``metrics`` with ``/healthz`` (alive) and ``/readyz`` (``ready()``) in front of it."""

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path not in ("/healthz", "/readyz"):
            return metrics(environ, start_response)
        ok = path == "/healthz" or ready()
        body = b"ok\n" if ok else b"not ready\n"
        status = "200 OK" if ok else "503 Service Unavailable"
        start_response(
            status, [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))]
        )
        return [body]

    return app


class ServeMetrics:
    """The replica's metrics; ``start_http`` serves them on a port."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("modelwatch_serve_requests", "Requests consumed.", registry=r)
        self.predictions = Counter(
            "modelwatch_serve_predictions", "Predictions produced.", ["model_version"], registry=r
        )
        self.dead_letters = Counter(
            "modelwatch_serve_dead_letters", "Requests dead-lettered.", ["reason"], registry=r
        )
        self.batch_size = Histogram(
            "modelwatch_serve_batch_size", "Requests per polled batch.", buckets=BATCH_BUCKETS, registry=r
        )
        self.latency = WeightedHistogram(
            "modelwatch_serve_latency_seconds",
            "Arrival of a request at the replica to the production of its prediction.",
            LATENCY_BUCKETS,
        )
        r.register(self.latency)
        self.active = Gauge(
            "modelwatch_serve_active_model",
            "1 for the model version serving now.",
            ["model_version"],
            registry=r,
        )
        self.commands = Counter(
            "modelwatch_serve_model_commands", "Model commands by outcome.", ["outcome"], registry=r
        )
        self.rewinds = Counter(
            "modelwatch_serve_rewinds",
            "Replays after a failed delivery or an aborted transaction.",
            registry=r,
        )
        self._active_versions: dict[str, str] = {}  # model -> its active version
        self._server: WSGIServer | None = None

    def activated(self, version: str, model: str = "") -> None:
        """``version`` is now ``model``'s active version (a replica serving several models has one each)."""
        previous = self._active_versions.get(model)
        if previous is not None and previous != version:
            self.active.remove(previous)
        self.active.labels(version).set(1)
        self._active_versions[model] = version

    def value(self, name: str, **labels: str) -> float:
        """A sample's current value (0 when absent), for tests and the benchmark."""
        return self.registry.get_sample_value(name, labels) or 0.0

    def start_http(self, port: int, ready: Callable[[], bool] = lambda: False, addr: str = "0.0.0.0") -> None:
        """Serve the metrics, ``/healthz`` and ``/readyz`` (``ready()``) on ``port`` in a daemon thread."""
        app = with_probes(make_wsgi_app(self.registry), ready)
        self._server = make_server(addr, port, app, ThreadingWSGIServer, handler_class=_QuietHandler)
        threading.Thread(target=self._server.serve_forever, name="metrics-http", daemon=True).start()

    def stop_http(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
