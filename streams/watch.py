"""The watch agent's plain state: the trackers of the versions whose labelled stream this worker owns.

:class:`Watch` turns a batch of the labelled stream (the join's labelled requests and the failures agent's
model failures, one version per message) or a tick of the timer into the emissions to publish and the
trackers whose state to persist. At each, the trackers first follow the deployment epochs
(:class:`~streams.decisions.Decisions`), so a version deployed again counts the batch in fresh windows.
It knows nothing of Faust: ``streams.app`` feeds it and publishes what it returns.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Iterable
from typing import Any

import orjson

from streams.alerts import Baseline
from streams.decisions import Decisions
from streams.experiments import KEY_PREFIX as EXPERIMENT_KEYS
from streams.failures import decode_failures, is_failures
from streams.fleet import Fleet
from streams.join import Labelled, decode_bundle
from streams.offsets import LABELLED_OFFSET_KEYS
from streams.tracker import Emission, TrackerConfig, VersionTracker

log = logging.getLogger("modelwatch.monitor")

#: What an evaluation produced: the emissions to publish, and the trackers whose state to persist after.
Evaluation = tuple[list[tuple[VersionTracker, Emission]], list[VersionTracker]]
#: The deployment state at this evaluation; ``None`` while it is still being read after a start.
History = Fleet | None


class Watch:
    def __init__(self, config: TrackerConfig, decisions: Decisions, baseline: Baseline) -> None:
        self.config = config
        self.decisions = decisions
        self.baseline = baseline
        self.trackers: dict[str, VersionTracker] = {}
        self.invalid = 0
        #: Also handed each bundle of labelled requests: (items, partition, offset, fleet).
        self.on_bundle: Callable[[list[Labelled], int, int, History], None] | None = None

    def restore(self, records: Iterable[tuple[str, dict[str, Any]]], owned: Collection[int]) -> int:
        """Rebuild the trackers of the labelled partitions ``owned`` from the ``windows`` table's records;
        return how many versions were left to their owners.

        The table also holds what the standby replicas of other workers' partitions copied: a tracker
        built from those would emit, decide and write state for a version another worker counts. A
        version's records all sit on its labelled partition, which its meta names; a version without a
        meta was never counted for good (killed before its first one) and starts anew.
        """
        by_version: dict[str, list[dict[str, Any]]] = {}
        partition_of: dict[str, int] = {}
        for key, value in records:
            if key.startswith((EXPERIMENT_KEYS, LABELLED_OFFSET_KEYS)):
                continue  # an experiment's state (streams.experiments) or the next offset: not a version's
            version = key.rpartition("|")[0]
            by_version.setdefault(version, []).append(value)
            if "partition" in value:
                partition_of[version] = int(value["partition"])
        mine = {v: r for v, r in by_version.items() if partition_of.get(v) in owned}
        self.trackers = {v: VersionTracker.restore(v, r, self.config) for v, r in mine.items()}
        return len(by_version) - len(mine)

    def count(self, messages: Iterable[tuple[bytes, int, int]], fleet: History) -> Evaluation:
        """One batch of the labelled stream, as (value, partition, offset) of each message."""
        emissions = self.decisions.follow_epochs(self.trackers, fleet)
        touched = {t.version: t for t, _ in emissions}
        for value, partition, offset in messages:
            try:
                failures = decode_failures(value) if is_failures(value) else None
                items = decode_bundle(value) if failures is None else []
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
                self.invalid += 1
                log.warning("skipped a labelled message at offset %d: %r", offset, exc)
                continue
            if failures is not None:
                tracker = self._tracker(failures[0], partition, fleet, emissions)
                tracker.add_failures(failures[1], offset)  # judged at the next tick's emission
            elif items:
                if self.on_bundle is not None:
                    self.on_bundle(items, partition, offset, fleet)
                tracker = self._tracker(items[0].model_version, partition, fleet, emissions)
                emissions += [(tracker, e) for e in tracker.add_bundle(items, offset, self.baseline)]
            else:
                continue
            touched[tracker.version] = tracker
        return emissions, list(touched.values())

    def tick(self, fleet: History) -> Evaluation:
        """The timer's evaluation: epochs, and an emission for each version with news since its last."""
        emissions = self.decisions.follow_epochs(self.trackers, fleet)
        due = [t for t in self.trackers.values() if t.pending_emission()]
        emissions += [(t, t.emit(self.baseline)) for t in due]
        return emissions, list({t.version: t for t, _ in emissions}.values())

    def _tracker(
        self, version: str, partition: int, fleet: History, emissions: list[tuple[VersionTracker, Emission]]
    ) -> VersionTracker:
        tracker = self.trackers.get(version)
        if tracker is None:
            tracker = VersionTracker(version, self.config, partition)
            self.trackers[version] = tracker
            log.info("counting %s from labelled partition %d", version, partition)
            emissions += self.decisions.follow_epochs({version: tracker}, fleet)
        return tracker
