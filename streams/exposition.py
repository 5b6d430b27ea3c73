"""The monitor's Prometheus metrics and its health probes, on ``monitor.metrics_port``.

Per model version (a label, never part of a name) and window kind (``window``: ``count`` or ``time``),
the values of the last metrics event the monitor emitted on ``rec.metrics``, so a scrape and the topic
agree::

    modelwatch_monitor_accuracy_ratio{model_version,window}            rolling accuracy
    modelwatch_monitor_precision_ratio{model_version,window}           ... precision (absent: undefined)
    modelwatch_monitor_recall_ratio{model_version,window}              ... recall (absent: undefined)
    modelwatch_monitor_f1_ratio{model_version,window}                  ... F1 (absent: undefined)
    modelwatch_monitor_error_ratio{model_version,window}               failed / (failed + answered)
    modelwatch_monitor_window_requests{model_version,window}           requests in the window (n)
    modelwatch_monitor_label_completeness_ratio{model_version,window}  labelled by a real outcome / n
    modelwatch_monitor_labelled_requests_total{model_version}          labelled by a real outcome
    modelwatch_monitor_expired_requests_total{model_version}           no outcome within the label window
    modelwatch_monitor_model_failures_total{model_version}             dead letters naming the version

Per join partition this worker owns (``partition``), and per input stream (``stream``: ``predictions`` or
``outcomes``), in event time only (the storefront's clock; the monitor's own clock is not mixed in)::

    modelwatch_monitor_join_pending_requests{partition}                waiting for their other half
    modelwatch_monitor_join_watermark_seconds{partition,stream}        the stream's watermark
    modelwatch_monitor_join_event_time_lag_seconds{partition,stream}   latest event time read - watermark

and ``modelwatch_monitor_alert_firing{alertname,model_version,severity}`` (1 per alert firing now) and
``modelwatch_monitor_ready`` (1 once recovered).

Per experiment this worker runs (the owner of its evidence partition, :mod:`streams.experiments`; the
last one ended stays until another starts), what its experiment events say::

    modelwatch_monitor_experiment_labelled_requests{experiment_id,arm}   arm: candidate or incumbent
    modelwatch_monitor_experiment_estimate{experiment_id}                per-request F1, candidate - incumbent
    modelwatch_monitor_experiment_interval_low{experiment_id}            its confidence sequence's interval
    modelwatch_monitor_experiment_interval_high{experiment_id}
    modelwatch_monitor_experiment_decision{experiment_id,decision}       1: running, promote, abort, ...

and per worker the join's shadow predictions, ``modelwatch_monitor_shadow_paired_total`` (labelled beside
their incumbent's answer) and ``modelwatch_monitor_shadow_unpaired_total`` (their request resolved first,
or its incumbent prediction never came).

Ownership. A version's windows belong to the worker that owns its partition of ``<prefix>monitor-labelled``
(:mod:`streams.watch`); only that worker exports them, so a ``sum by (model_version)`` over the workers
counts each version once. After a rebalance the versions that moved away disappear from this worker's
scrape and appear in their new owner's.

Threads. The state lives on the worker's event loop; :meth:`MonitorMetrics.refresh` (a Faust timer, on
the loop) builds an immutable snapshot and the HTTP thread only ever reads the latest one.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import ThreadingWSGIServer
from prometheus_client.registry import Collector

from services.serving.metrics import with_probes
from streams.join import Joiner
from streams.tracker import VersionTracker

PREFIX = "modelwatch_monitor_"
#: Metric (name suffix) <- field of the metrics event; each a ratio in [0, 1] (null: undefined, absent).
RATIOS = {
    "accuracy_ratio": ("accuracy", "Rolling accuracy of the version's window (item level, micro-averaged)."),
    "precision_ratio": ("precision", "Rolling precision of the version's window."),
    "recall_ratio": ("recall", "Rolling recall of the version's window."),
    "f1_ratio": ("f1", "Rolling F1 of the version's window."),
    "error_ratio": ("error_rate", "Model failures / (failures + answered requests) in the window."),
}
WINDOW_LABELS = ("model_version", "window")


@dataclass(frozen=True)
class FiringAlert:
    alertname: str
    model_version: str
    severity: str


@dataclass(frozen=True)
class JoinPartition:
    """What the exposition shows of one join partition."""

    partition: int
    pending: int
    #: stream -> (watermark, latest event time read), ms of event time; -1: not known yet.
    clocks: Mapping[str, tuple[int, int]]

    @classmethod
    def of(cls, partition: int, joiner: Joiner, pending: int) -> JoinPartition:
        clocks = {}
        for name in ("predictions", "outcomes"):
            clock = joiner.clocks.stream(name)
            latest = max((s.latest for s in clock.sources.values()), default=-1)
            clocks[name] = (clock.watermark, latest)
        return cls(partition, pending, clocks)


def firing_alerts(trackers: Iterable[VersionTracker], activations: Iterable[str]) -> list[FiringAlert]:
    """The alerts firing now on the versions in ``trackers`` (their rules and drift warnings), and the
    rejected-activation alerts whose ids are ``activations``."""
    out = []
    for tracker in trackers:
        severities = {r.name: r.severity for r in tracker.config.rules}
        out += [FiringAlert(name, tracker.version, severities.get(name, "")) for name in tracker.firing()]
        if tracker.drift is not None and tracker.drift.state.firing:
            out.append(FiringAlert(tracker.drift.RULE, tracker.version, "warning"))
    for aid in activations:
        rule, _, rest = aid.partition(":")
        out.append(FiringAlert(rule, rest.rpartition(":")[0], "warning"))
    return out


class MonitorMetrics(Collector):
    """The monitor's metrics as a prometheus-client collector over snapshots the event loop refreshes."""

    def __init__(self, unlabelled: str = "no_purchase") -> None:
        self.counts_expired = unlabelled == "no_purchase"  # an expired request is in the version's total
        self.registry = CollectorRegistry()
        self._emitted: dict[tuple[str, str], dict[str, Any]] = {}  # (version, window kind) -> metrics event
        self._snapshot: list[GaugeMetricFamily | CounterMetricFamily] = []
        self.registry.register(self)
        self._server: WSGIServer | None = None

    # -- on the event loop -------------------------------------------------------------------------------

    def emitted(self, event: Mapping[str, Any]) -> None:
        """A metrics event the monitor sent (its values are what the next snapshot shows)."""
        self._emitted[(event["model_version"], event["window"]["kind"])] = dict(event)

    def refresh(
        self,
        trackers: Mapping[str, VersionTracker],
        joins: Iterable[JoinPartition],
        alerts: Iterable[FiringAlert],
        ready: bool,
        experiments: Iterable[Mapping[str, Any]] = (),
        shadow: tuple[int, int] = (0, 0),
    ) -> None:
        """Build the snapshot the next scrapes read: ``trackers`` are the versions this worker owns now,
        ``experiments`` the experiment events of the runs it owns, ``shadow`` the join's (paired, unpaired)
        shadow predictions."""
        for key in [k for k in self._emitted if k[0] not in trackers]:
            del self._emitted[key]  # moved to another worker, or never ours
        for version, tracker in trackers.items():
            for kind in ("count", "time"):
                if (version, kind) not in self._emitted:  # restored, not emitted since: what it would emit
                    self._emitted[(version, kind)] = tracker.snapshot(kind)
        families: list[GaugeMetricFamily | CounterMetricFamily] = []
        ratios = {
            name: GaugeMetricFamily(PREFIX + name, doc, labels=WINDOW_LABELS)
            for name, (_, doc) in RATIOS.items()
        }
        n = GaugeMetricFamily(PREFIX + "window_requests", "Requests in the window.", labels=WINDOW_LABELS)
        completeness = GaugeMetricFamily(
            PREFIX + "label_completeness_ratio",
            "Share of the window's requests labelled by a real outcome (the rest expired).",
            labels=WINDOW_LABELS,
        )
        labelled = CounterMetricFamily(
            PREFIX + "labelled_requests",
            "Requests labelled by a real outcome, over the version's life.",
            labels=["model_version"],
        )
        expired = CounterMetricFamily(
            PREFIX + "expired_requests",
            "Predictions whose outcome did not come within the label window.",
            labels=["model_version"],
        )
        failures = CounterMetricFamily(
            PREFIX + "model_failures",
            "Requests the version failed on (dead letters).",
            labels=["model_version"],
        )
        for (version, kind), event in sorted(self._emitted.items()):
            labels = [version, kind]
            for name, (field, _) in RATIOS.items():
                value = event.get(field)
                if value is not None:
                    ratios[name].add_metric(labels, float(value))
            n.add_metric(labels, event["n"])
            if event["n"]:
                completeness.add_metric(labels, event["labelled"] / event["n"])
            if kind == "count":
                by_outcome = event["total"] - (event["expired"] if self.counts_expired else 0)
                labelled.add_metric([version], max(by_outcome, 0))
                expired.add_metric([version], event["expired"])
                failures.add_metric([version], event.get("failed", 0))
        families += [*ratios.values(), n, completeness, labelled, expired, failures]

        pending = GaugeMetricFamily(
            PREFIX + "join_pending_requests",
            "Predictions and outcomes waiting in the join for their other half.",
            labels=["partition"],
        )
        watermark = GaugeMetricFamily(
            PREFIX + "join_watermark_seconds",
            "The stream's event-time watermark (the storefront's clock, Unix seconds).",
            labels=["partition", "stream"],
        )
        lag = GaugeMetricFamily(
            PREFIX + "join_event_time_lag_seconds",
            "How far the stream's watermark is behind the latest event time read on it.",
            labels=["partition", "stream"],
        )
        for join in sorted(joins, key=lambda j: j.partition):
            pending.add_metric([str(join.partition)], join.pending)
            for stream, (mark, latest) in sorted(join.clocks.items()):
                if mark < 0:
                    continue  # no watermark yet
                watermark.add_metric([str(join.partition), stream], mark / 1000)
                if latest >= 0:
                    lag.add_metric([str(join.partition), stream], max(latest - mark, 0) / 1000)
        families += [pending, watermark, lag]

        firing = GaugeMetricFamily(
            PREFIX + "alert_firing",
            "1 for each alert firing now (rules of the versions this worker owns).",
            labels=["alertname", "model_version", "severity"],
        )
        for alert in sorted(set(alerts), key=lambda a: (a.alertname, a.model_version)):
            firing.add_metric([alert.alertname, alert.model_version, alert.severity], 1)
        families.append(firing)
        families += _experiment_families(experiments, shadow)
        families.append(
            GaugeMetricFamily(PREFIX + "ready", "1 once the worker's tables are recovered.", value=int(ready))
        )
        self._snapshot = families  # one reference swap: a scrape sees the old snapshot or the new one

    # -- in the HTTP thread ------------------------------------------------------------------------------

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        return iter(self._snapshot)

    def value(self, name: str, **labels: str) -> float | None:
        """A sample's value in the latest snapshot (``None`` when absent), for tests."""
        value = self.registry.get_sample_value(name, labels)
        return None if value is None or math.isnan(value) else value

    def start_http(self, port: int, ready: Callable[[], bool], addr: str = "0.0.0.0") -> None:
        """Serve the metrics, ``/healthz`` (alive) and ``/readyz`` (``ready()``) in a daemon thread."""
        app = with_probes(make_wsgi_app(self.registry), ready)
        self._server = make_server(addr, port, app, ThreadingWSGIServer, handler_class=_QuietHandler)
        threading.Thread(target=self._server.serve_forever, name="monitor-metrics", daemon=True).start()

    def stop_http(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


def _experiment_families(
    experiments: Iterable[Mapping[str, Any]], shadow: tuple[int, int]
) -> list[GaugeMetricFamily | CounterMetricFamily]:
    labelled = GaugeMetricFamily(
        PREFIX + "experiment_labelled_requests",
        "Labelled requests of each arm in the experiment's comparison.",
        labels=["experiment_id", "arm"],
    )
    gauges = {
        name: GaugeMetricFamily(PREFIX + f"experiment_{name}", doc, labels=["experiment_id"])
        for name, doc in (
            ("estimate", "Per-request F1, candidate minus incumbent."),
            ("interval_low", "Low end of the confidence sequence's interval of the estimate."),
            ("interval_high", "High end of the confidence sequence's interval of the estimate."),
        )
    }
    decision = GaugeMetricFamily(
        PREFIX + "experiment_decision",
        "1 for the experiment's decision so far (running, promote, abort or inconclusive).",
        labels=["experiment_id", "decision"],
    )
    for event in experiments:
        eid = str(event["experiment_id"])
        for arm in ("candidate", "incumbent"):
            labelled.add_metric([eid, arm], event["labelled"][arm])
        if event.get("estimate") is not None:
            gauges["estimate"].add_metric([eid], float(event["estimate"]))
        if event.get("interval") is not None:
            gauges["interval_low"].add_metric([eid], float(event["interval"][0]))
            gauges["interval_high"].add_metric([eid], float(event["interval"][1]))
        decision.add_metric([eid, str(event["decision"])], 1)
    paired = CounterMetricFamily(
        PREFIX + "shadow_paired", "Shadow predictions labelled beside their incumbent's.", value=shadow[0]
    )
    unpaired = CounterMetricFamily(
        PREFIX + "shadow_unpaired",
        "Shadow predictions never paired: their request resolved first, or no incumbent prediction came.",
        value=shadow[1],
    )
    return [labelled, *gauges.values(), decision, paired, unpaired]


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Probes and scrapes come every few seconds: not a log line each."""
