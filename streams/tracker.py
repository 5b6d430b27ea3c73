"""Everything the monitor knows about one model version: its windows, totals, alerts, and how they persist.

A :class:`VersionTracker` takes the version's labelled requests in the order its partition delivers them
and says when to emit: every ``emit_every_n`` labelled requests (and whenever the worker's timer asks,
every ``emit_every_s`` seconds). An emission is one metrics event per window kind, each judged by the
alert rules of that window (:mod:`streams.version_alerts`).

Persistence, for a worker killed at any moment. The state goes to a compacted changelog as records:

- ``<version>|<block>``: the labelled requests ``BLOCK * block + 1 ...`` in order, as packed rows with the
  hash of each request id (:func:`streams.windows.encode_entries`), written again while the block fills;
- ``<version>|meta``: totals, alert states, the time window's clock, the offset of the last labelled
  event counted, and the deployment epoch.

Deployment epochs. A version's windows and alert states belong to one deployment of it (the command that
made it the commanded version; :mod:`streams.epochs`). :meth:`VersionTracker.retire` ends its firing alerts
when another version is served, after which its late requests are still counted but no longer judged;
:meth:`VersionTracker.begin_epoch` empties its windows and alert states when it is deployed again. The
total goes on across epochs (requests keep their positions, and the blocks their keys); the meta's
``epoch_start`` says which requests belong to the windows of the current epoch.

:meth:`VersionTracker.changes` lists them in the order to write: blocks, then meta, then tombstones of
blocks no longer needed. One version's records share a partition, so whatever prefix of them survives a
crash, the surviving meta names a state the surviving blocks can rebuild exactly: requests beyond its total
are ignored (they will be counted again from the offset after it), and blocks are deleted only after a
meta that no longer needs them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from services.config import AlertRule, MonitorSettings
from streams import version_alerts
from streams.alerts import AlertState, Baseline, DriftWatch, no_baseline
from streams.join import Labelled
from streams.markers import SeqHashes, request_hash
from streams.windows import CountWindow, Entry, ServingWindows, TimeWindow, decode_entries, encode_entries

BLOCK = 256

Record = tuple[str, dict[str, Any] | None]  # (key, value); None deletes


@dataclass(frozen=True)
class TrackerConfig:
    count_window: int = 1000
    time_window_s: int = 300
    emit_every_n: int = 200
    rules: tuple[AlertRule, ...] = ()
    drift_delta: float | None = None
    dedupe_horizon: int = 50_000

    @classmethod
    def from_settings(cls, monitor: MonitorSettings, rules: Iterable[AlertRule]) -> TrackerConfig:
        return cls(
            count_window=monitor.count_window,
            time_window_s=monitor.time_window_s,
            emit_every_n=monitor.emit_every_n,
            rules=tuple(rules),
            drift_delta=monitor.drift_delta,
            dedupe_horizon=monitor.dedupe_horizon,
        )


@dataclass
class Emission:
    """What one emission produces: metrics events, and alert transitions with the rule that made them
    (``None`` for the drift warning)."""

    metrics: list[dict[str, Any]] = field(default_factory=list)
    alerts: list[tuple[AlertRule | None, dict[str, Any]]] = field(default_factory=list)


class VersionTracker:
    def __init__(self, version: str, config: TrackerConfig, partition: int = 0, durable: bool = True) -> None:
        self.version = version
        #: Whether it keeps its requests for the changelog blocks :meth:`changes` writes. A tracker kept in
        #: memory only (the bench's plain loop) never asks for them, so it must not keep them: they would
        #: hold every request it ever counted, two Python objects each.
        self.durable = durable
        self.config = config
        self.partition = partition  # of the labelled stream: where the version's changelog records go
        self.count = CountWindow(config.count_window)
        self.serving = ServingWindows(config.count_window, config.time_window_s)  # the error rate
        self.failed = 0  # model failures counted (dead letters naming this version)
        self.emitted_failed = 0  # failed at the last emission
        self.time = TimeWindow(config.time_window_s)
        self.total = 0  # labelled requests counted (expired ones included unless dropped)
        self.expired = 0  # predictions whose outcome never came within the label window
        self.last_offset = -1  # in the labelled stream's partition: what a redelivery must not count again
        self.emitted = (0, 0)  # (total, expired) at the last emission
        self.alerts: dict[str, AlertState] = {r.name: AlertState() for r in config.rules}
        self.drift = DriftWatch(config.drift_delta) if config.drift_delta else None
        self.epoch: str | None = None  # id of the command that began the deployment counted now
        self.epoch_start = 0  # the total when it began: requests up to it belong to earlier epochs
        self.retired = False  # another version is served: counted, not judged
        self.left_firing = False  # it was firing a rollback rule when it was retired: no rollback target
        self.duplicates = 0
        # The hashes of the requests in the windows and of the last dedupe_horizon ones (kept, and persisted
        # in the blocks, so that a request the join sends again after a crash is recognised however late it
        # comes): compact (streams.markers), as it is the most numerous thing kept.
        self._seen = SeqHashes()
        self._open: dict[int, list[Entry]] = {}  # blocks not yet written in full
        self._first_block = 0  # older blocks are deleted
        self._stale: list[int] = []  # blocks found below first_block at restore
        self._changed = False

    # -- counting ----------------------------------------------------------------------------------------

    def add_bundle(
        self, items: Iterable[Labelled], offset: int, baseline: Baseline = no_baseline
    ) -> list[Emission]:
        """Count the labelled requests of one message of the labelled stream (at ``offset``), unless that
        message was counted before (it is delivered again after a crash)."""
        if offset <= self.last_offset:
            self.duplicates += 1
            return []
        emissions = [e for e in (self.add(item, baseline=baseline) for item in items) if e is not None]
        self.last_offset = offset
        self._changed = True
        return emissions

    def add_failures(self, failures: Iterable[tuple[str, int]], offset: int) -> None:
        """Count the model failures (request id, ts) of one message of the labelled stream (at ``offset``),
        unless that message was counted before."""
        if offset <= self.last_offset:
            self.duplicates += 1
            return
        for request_id, ts in failures:
            if self.serving.add(ts, failed_id=request_id):
                self.failed += 1
            else:
                self.duplicates += 1
        self.last_offset = offset
        self._changed = True

    def add(
        self, item: Labelled, offset: int | None = None, baseline: Baseline = no_baseline
    ) -> Emission | None:
        """Count one labelled request (the message at ``offset``, if given); return an emission when one is
        due."""
        if offset is not None:
            if offset <= self.last_offset:
                self.duplicates += 1
                return None
            self.last_offset = offset
        self._changed = True
        key = request_hash(item.request_id)
        if key in self._seen:  # the join sent it again after a crash
            self.duplicates += 1
            return None
        self.serving.add(item.ts)  # answered, whatever its outcome
        if item.expired:
            self.expired += 1
        if item.counts is None:
            return None
        self.total += 1
        entry = Entry(self.total, item.ts, key, item.counts, item.expired)
        if self.durable:
            self._open.setdefault((entry.seq - 1) // BLOCK, []).append(entry)
        self._place(entry)
        alerts: list[tuple[AlertRule | None, dict[str, Any]]] = []
        if self.drift is not None and entry.counts.items and not self.retired:
            c = entry.counts
            drift = self.drift.update(
                (c.fp + c.fn) / c.items, version=self.version, position=self.total, ts=self.time.max_ts or 0
            )
            if drift is not None:
                alerts.append((None, drift))
        if self.total % self.config.emit_every_n == 0:
            emission = self.emit(baseline)
            emission.alerts[:0] = alerts
            return emission
        return Emission(alerts=alerts) if alerts else None

    def _place(self, entry: Entry) -> None:
        if entry.seq > self.epoch_start:  # an earlier epoch's request is only remembered against replays
            self.count.add(entry)
            self.time.add(entry)
        self._seen.push(entry.seq, entry.key)
        self._seen.forget_before(self._oldest_needed(entry.seq))

    def _oldest_needed(self, last: int) -> int:
        """The oldest position still needed (remembered against replays, or in a window), ``last`` being
        the newest counted."""
        oldest = [last - self.config.dedupe_horizon + 1]
        oldest += [s for s in (self.count.oldest_seq(), self.time.oldest_seq()) if s is not None]
        return min(oldest)

    # -- emitting ----------------------------------------------------------------------------------------

    def pending_emission(self) -> bool:
        """Whether anything was counted since the last emission."""
        return self.emitted != (self.total, self.expired) or self.emitted_failed != self.failed

    def snapshot(self, kind: str) -> dict[str, Any]:
        window: CountWindow | TimeWindow = self.count if kind == "count" else self.time
        size = self.config.count_window if kind == "count" else self.config.time_window_s
        c = window.counts
        return {
            "model_version": self.version,
            "window": {"kind": kind, "size": size},
            "n": len(window),
            **c.as_dict(),
            "ts": max(self.time.max_ts or 0, 0),
            "expired": self.expired,
            # Label completeness: "the model got worse" or "labels are missing"?
            "labelled": len(window) - window.expired,
            "expired_in_window": window.expired,
            # Beyond the schema's required fields: the position of this snapshot in the version's stream of
            # labelled requests, and the item-level counts behind the metrics.
            "total": self.total,
            "counts": {"tp": c.tp, "fp": c.fp, "fn": c.fn, "tn": c.tn},
            # The error rate over this window's kind of the version's answered and failed requests.
            **dict(zip(("error_rate", "error_n"), self.serving.rate(kind), strict=True)),
            "failed": self.failed,
        }

    def emit(self, baseline: Baseline = no_baseline) -> Emission:
        """Metrics events for both windows, judged by the rules."""
        self._changed = True
        self.emitted, self.emitted_failed = (self.total, self.expired), self.failed
        by_kind = {kind: self.snapshot(kind) for kind in ("count", "time")}
        emission = Emission(metrics=list(by_kind.values()))
        if self.retired:
            return emission
        emission.alerts += version_alerts.judged(self, by_kind, baseline)
        return emission

    # -- deployment epochs -------------------------------------------------------------------------------

    def adopt_epoch(self, epoch: str) -> None:
        """What was counted so far belongs to the deployment ``epoch`` (learnt after the first requests)."""
        self.epoch = epoch
        self._changed = True

    def retire(self, why: str, baseline: Baseline = no_baseline, cause: str = "not_served") -> Emission:
        """Another version is served: end the firing alerts (``why`` says so) and judge no more."""
        self.left_firing = self.left_firing or bool(self.firing("rollback"))
        emission = Emission(alerts=version_alerts.ended_alerts(self, why, cause, baseline))
        self.retired = True
        self._changed = True
        return emission

    def begin_epoch(self, epoch: str, why: str, baseline: Baseline = no_baseline) -> Emission:
        """The version is deployed again by the command ``epoch``: its firing alerts end, its windows and
        alert states start afresh (its total and the requests remembered against replays go on)."""
        emission = Emission(alerts=version_alerts.ended_alerts(self, why, "redeployed", baseline))
        self.epoch, self.epoch_start = epoch, self.total
        self.retired = self.left_firing = False
        self.count = CountWindow(self.config.count_window)
        self.time = TimeWindow(self.config.time_window_s)
        self.serving = ServingWindows(self.config.count_window, self.config.time_window_s)
        self.alerts = {r.name: AlertState() for r in self.config.rules}
        self.drift = DriftWatch(self.config.drift_delta) if self.config.drift_delta else None
        self._changed = True
        return emission

    def firing(self, action: str | None = None) -> list[str]:
        """Names of the rules firing now (of ``action`` only, if given)."""
        return version_alerts.firing(self, action)

    def firing_alerts(self, action: str, baseline: Baseline = no_baseline) -> list[dict[str, Any]]:
        """The firing alerts of ``action``'s rules, each with its metric's value now (for a decision that
        is taken again after the firing event was sent)."""
        return version_alerts.firing_alerts(self, action, baseline)

    # -- persistence -------------------------------------------------------------------------------------

    def meta(self) -> dict[str, Any]:
        return {
            "v": self.version,
            "total": self.total,
            "expired": self.expired,
            "max_ts": self.time.max_ts,
            "last_offset": self.last_offset,
            "partition": self.partition,
            "emitted": list(self.emitted),
            "first_block": self._first_block,
            "alerts": {name: s.as_dict() for name, s in self.alerts.items()},
            "drift": self.drift.state.as_dict() if self.drift else None,
            "epoch": self.epoch,
            "epoch_start": self.epoch_start,
            "retired": self.retired,
            "left_firing": self.left_firing,
            "serving": self.serving.as_dict(),
            "failed": self.failed,
            "emitted_failed": self.emitted_failed,
        }

    def block_key(self, block: int) -> str:
        return f"{self.version}|{block:012d}"

    @property
    def meta_key(self) -> str:
        return f"{self.version}|meta"

    def changes(self) -> list[Record]:
        """The records to write since the last call, in order: blocks, meta, then deletions."""
        if not self._changed:
            return []
        self._changed = False
        current = self.total // BLOCK  # the block the next request goes to
        records: list[Record] = []
        for b in sorted(self._open):
            rows = encode_entries(self._open[b])
            records.append((self.block_key(b), {"v": self.version, "b": b, "r": rows}))
            if b < current:
                del self._open[b]  # full, and now written in full
        oldest = self._seen.first_seq
        live = (oldest - 1) // BLOCK if oldest is not None else current
        dead = [*self._stale, *range(self._first_block, live)]
        self._stale = []
        self._first_block = max(self._first_block, live)
        records.append((self.meta_key, self.meta()))
        records += [(self.block_key(b), None) for b in dead]
        return records

    @classmethod
    def restore(
        cls, version: str, records: Iterable[dict[str, Any]], config: TrackerConfig
    ) -> VersionTracker:
        """Rebuild a tracker from its changelog records' values (blocks and meta, any order)."""
        meta: dict[str, Any] | None = None
        blocks: list[dict[str, Any]] = []
        for value in records:
            if "b" in value:
                blocks.append(value)
            else:
                meta = value
        if meta is None:  # killed before its first meta: nothing was counted for good
            return cls(version, config)
        tracker = cls(version, config, partition=int(meta["partition"]))
        tracker.epoch, tracker.epoch_start = meta.get("epoch"), int(meta.get("epoch_start", 0))
        tracker.retired, tracker.left_firing = bool(meta.get("retired")), bool(meta.get("left_firing"))
        if meta.get("serving"):
            tracker.serving = ServingWindows.from_dict(
                config.count_window, config.time_window_s, meta["serving"]
            )
        tracker.failed, tracker.emitted_failed = (
            int(meta.get("failed", 0)),
            int(meta.get("emitted_failed", 0)),
        )
        total, first = int(meta["total"]), int(meta["first_block"])
        tracker.time.max_ts = meta["max_ts"]  # the window's clock as it was, whatever the replay sees
        entries: list[Entry] = []
        for record in blocks:
            if int(record["b"]) < first:
                tracker._stale.append(int(record["b"]))
                continue
            found = decode_entries(record["r"]) if "r" in record else map(Entry.from_list, record["e"])
            entries += (e for e in found if e.seq <= total)
        entries.sort(key=lambda e: e.seq)
        for entry in entries:
            tracker._place(entry)
            block = (entry.seq - 1) // BLOCK
            if block == total // BLOCK:
                tracker._open.setdefault(block, []).append(entry)
            if tracker.drift is not None and entry.counts.items and entry.seq > tracker.epoch_start:
                c = entry.counts
                err = (c.fp + c.fn) / c.items
                tracker.drift.update(err, version=version, position=entry.seq, ts=0, quiet=True)
        tracker.total = total
        tracker.expired = int(meta["expired"])
        tracker.last_offset = int(meta["last_offset"])
        tracker.emitted = (int(meta["emitted"][0]), int(meta["emitted"][1]))
        tracker._first_block = first
        for name, state in meta["alerts"].items():
            tracker.alerts[name] = AlertState.from_dict(state)
        if tracker.drift is not None and meta.get("drift"):
            tracker.drift.state = AlertState.from_dict(meta["drift"])
        tracker._changed = bool(tracker._stale)
        return tracker
