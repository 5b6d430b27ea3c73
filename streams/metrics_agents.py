"""The Prometheus side of :class:`streams.app.Monitor`: its timer, its HTTP server and its readiness.

With ``monitor.metrics_port`` set, the worker serves :mod:`streams.exposition`'s metrics, ``/healthz`` and
``/readyz`` on that port. A timer on the event loop refreshes the snapshot every
:data:`REFRESH_S` seconds from the agents' plain state (the trackers this worker owns, its join
partitions); the metrics events are recorded as the watch agent publishes them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Any

import faust

from schemas.errors import ConfigError
from services.config import Settings
from streams.activations import RULE as ACTIVATION_RULE
from streams.experiments import Experiments
from streams.exposition import JoinPartition, MonitorMetrics, firing_alerts
from streams.history import CommandFollower
from streams.join import Joiner, JoinStats
from streams.tables import PartitionedTable
from streams.tracker import Emission, VersionTracker
from streams.watch import Watch

log = logging.getLogger("modelwatch.monitor")

#: How often the snapshot is rebuilt: well under Prometheus' usual 15 s scrape interval.
REFRESH_S = 1.0
#: How often the join's pending requests are counted: a pass over the whole ``pending`` table, on the loop.
PENDING_EVERY_S = 10.0


class MetricsAgents:
    """Mixed into :class:`streams.app.Monitor`, which sets these attributes up."""

    settings: Settings
    app: faust.App
    joinable: faust.TopicT
    pending: PartitionedTable
    joiners: dict[int, Joiner]
    watching: Watch
    experiments: Experiments
    join_stats: JoinStats
    follower: CommandFollower
    published: set[tuple[str, str]] | None
    _owned: set[int]
    _generation: int
    exposition: MonitorMetrics | None = None
    _pending_counted: tuple[float, dict[int, int]] = (-PENDING_EVERY_S, {})  # (when, partition -> count)

    def _install_metrics(self) -> None:
        """Serve the metrics if ``monitor.metrics_port`` is set (else nothing is exported)."""
        m = self.settings.monitor
        if m.metrics_port is None:
            return
        self.exposition = MonitorMetrics(m.unlabelled)
        self.app.timer(REFRESH_S, name=f"{self.app.conf.id}.metrics")(self.refresh_metrics)
        # Served from now on, not from a Faust task: /healthz answers as soon as the process lives, and
        # never after the worker says it is ready (a task may start later than that).
        self.exposition.refresh({}, [], [], ready=False)
        try:
            self.exposition.start_http(m.metrics_port, ready=self.is_ready)
        except OSError as exc:
            raise ConfigError(f"cannot serve metrics on port {m.metrics_port}: {exc}") from exc
        log.info("metrics, /healthz and /readyz on port %d", m.metrics_port)

    def is_ready(self) -> bool:
        """Connected and recovered: the first rebalance's tables are restored, no rebalance or recovery is
        under way, and the deployment history is read. Called from the HTTP thread (reads flags only)."""
        app: Any = self.app
        return (
            self._generation > 0
            and not app.rebalancing
            and not getattr(app, "in_recovery", False)
            and self.follower.ready.is_set()
        )

    def _exported(self, emissions: Iterable[tuple[VersionTracker, Emission]]) -> None:
        """Record the metrics events of an evaluation, as they are sent."""
        if self.exposition is not None:
            for _, emission in emissions:
                for event in emission.metrics:
                    self.exposition.emitted(event)

    def _pending_requests(self, partitions: set[int]) -> dict[int, int]:
        """Pending requests per join partition (``r:<partition>:<request_id>`` keys), counted again every
        :data:`PENDING_EVERY_S` seconds: the count is a pass over the table, which may be large."""
        when, counts = self._pending_counted
        if time.monotonic() - when >= PENDING_EVERY_S or set(counts) != partitions:
            counts = dict.fromkeys(partitions, 0)
            for key in self.pending:
                kind, _, rest = key.partition(":")
                if kind == "r":
                    partition = int(rest.partition(":")[0])
                    if partition in counts:
                        counts[partition] += 1
            self._pending_counted = (time.monotonic(), counts)
        return counts

    async def refresh_metrics(self, *_: Any) -> None:
        if self.exposition is None:
            return
        joinable = self.joinable.get_topic_name()
        partitions = {tp.partition for tp in self.app.consumer.assignment() if tp.topic == joinable}
        pending = self._pending_requests(partitions)
        joins = [
            JoinPartition.of(p, self.joiners[p], pending.get(p, 0)) for p in partitions if p in self.joiners
        ]
        activations: list[str] = []
        if 0 in self._owned and self.published is not None:  # the owner of partition 0 sends them
            activations = [
                aid
                for aid, state in self.published
                if state == "firing"
                and aid.startswith(f"{ACTIVATION_RULE}:")
                and (aid, "resolved") not in self.published
            ]
        trackers = self.watching.trackers
        stats = self.join_stats
        self.exposition.refresh(
            trackers,
            joins,
            firing_alerts(trackers.values(), activations),
            self.is_ready(),
            experiments=self.experiments.standing(),
            shadow=(stats.paired, stats.shadow_unpaired),
        )
