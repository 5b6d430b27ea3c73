"""Each user's pre-experiment period under the version that serves everyone: a canary's covariate.

A canary's interval has a floor that more requests do not lower: its users' own levels (some are easy to
recommend to). The regression adjustment (:mod:`streams.comparison`, CUPED) removes it with each user's
*pre-period*: the sum of per-request F1 and the number of the user's labelled requests under the incumbent
before the experiment started. This module keeps what that needs, from the labelled requests the watch agent
already counts, and hands it to :meth:`~streams.comparison.Comparison.add_arms` (:func:`add_canary`: the
monitor and the simulation in :mod:`services.bench.experiments` both feed a canary through it).

**What is kept.** Per version, per user, the sums of the user's labelled requests in event-time buckets of
``pre_period_s / BUCKETS``: a few numbers per user, never an object per request. A user's buckets older
than a pre-period (and its lag, below) before the newest the version has seen are dropped when the user is
next updated, except those of a running canary's pre-period (held until it ends), so a user holds at most
``2 BUCKETS + lag / bucket + 1`` buckets (16 with the defaults). At most ``pre_period_users`` users per
version: beyond it the least recently updated user is forgotten (a user without a pre-period is compared
unadjusted: the estimate stays unbiased, only less precise). Only the version the fleet serves to
everyone is kept (the incumbent of any experiment to come; at most :data:`VERSIONS_KEPT` per worker).

**Where.** A version's labelled requests are all on its labelled partition (keyed by version), and so is
its experiments' evidence (:func:`streams.evidence.evidence` keys it by the incumbent): the worker that
runs a canary's comparison holds its incumbent's pre-periods. They are written to the ``windows`` table on
that partition, a few records per batch (a delta, or a snapshot's shards: :mod:`streams.pre_period_records`),
and each user's record keeps the last labelled offset counted into it: whatever prefix of a batch's records
a SIGKILL leaves on the changelog, a message read again after the restart is counted into a user only if its
offset is past the user's (nothing lost, nothing counted twice).

**The boundary.** A canary's pre-period is the ``BUCKETS`` whole buckets that end at the bucket of its
start (the earliest request time of its first labelled candidate answer, :mod:`streams.experiments`) less
the *lag*, the monitor's label window: every request in it has an event time before the start, so nothing
the candidate did is in it. It is read once per user, at the user's first appearance in the experiment
(:class:`streams.moments.UserMoments` fixes it), and from the incumbent's store only.

*Why the lag*: a user's first appearance depends on the candidate (a worse one gets fewer purchases, so
its users' first labels come later, when their no-purchase requests expire). Had the pre-period's last
requests still been waiting for their labels, what it held at that moment would depend on the candidate
too, and bias the adjusted estimate. A request a label window older than the start is labelled (joined or
expired) once the join's event-time clock reaches the start, before the experiment's own requests are.

*Why skewed timestamps do not leak into it*: a candidate user's requests after the start were answered by
the candidate and land in the candidate's store, never in the incumbent's, whatever time their
storefront stamped on them; an incumbent user's request stamped too early was answered by the incumbent
as its pre-period requests were, which does not depend on the candidate, so the arms' pre-period means
still differ by chance alone (the estimate stays unbiased). A start stamped too early only shortens the
pre-period.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from streams.comparison import Comparison, Decision, request_f1
from streams.join import Labelled
from streams.moments import PrePeriod
from streams.pre_period_records import KEY_PREFIX, Increments, VersionLog, load, shard_count

log = logging.getLogger("modelwatch.monitor")

#: The pre-period is this many buckets of ``pre_period_s / BUCKETS``: its end is the start (less the lag)
#: rounded down to a bucket, so it ends at most one bucket (10 minutes by default) before the start.
BUCKETS = 6
#: Versions whose users' requests a worker keeps (the served one; two while it changes).
VERSIONS_KEPT = 2
__all__ = ["BUCKETS", "KEY_PREFIX", "PrePeriods", "VersionPrePeriods", "add_canary"]


@dataclass
class VersionPrePeriods:
    """One version's users: for each, the last labelled offset counted and its buckets."""

    version: str
    partition: int
    #: user -> [offset, bucket, sum, requests, bucket, sum, requests, ...]; least recently updated first.
    users: dict[str, list[float]] = field(default_factory=dict)
    latest_bucket: int | None = None
    #: What its records on the changelog are (set by :class:`PrePeriods`).
    log: VersionLog | None = None
    #: The increments counted since the last records were written, and the last offset counted.
    added: Increments = field(default_factory=dict)
    offset: int = -1


@dataclass
class PrePeriods:
    """The pre-periods this worker keeps; feed it labelled bundles, ask it a canary's covariates."""

    pre_period_s: float = 3600.0
    max_users: int = 50_000
    #: The pre-period ends this long before the start: the monitor's label window (see the boundary).
    lag_ms: int = 0
    versions: dict[str, VersionPrePeriods] = field(default_factory=dict)
    #: The start (event ms) of the running canary whose pre-period buckets are held, if any.
    hold_ms: int | None = None
    #: Records of forgotten versions to delete: (partition, key).
    forgotten: list[tuple[int, str]] = field(default_factory=list)

    @property
    def dirty(self) -> bool:
        """Whether :meth:`take_dirty` has records to write."""
        return bool(self.forgotten) or any(s.added or (s.log and s.log.stale) for s in self.versions.values())

    @property
    def enabled(self) -> bool:
        return self.pre_period_s > 0

    @property
    def bucket_ms(self) -> int:
        return max(1, round(self.pre_period_s * 1000 / BUCKETS))

    def end_bucket(self, start_ms: int) -> int:
        """The first bucket after the pre-period of an experiment that started at ``start_ms``."""
        return (start_ms - self.lag_ms) // self.bucket_ms

    # -- feeding it ------------------------------------------------------------------------------------

    def add_labelled(self, items: Sequence[Labelled], partition: int, offset: int) -> None:
        """One message of the labelled stream: labelled requests of one version (as the join sends them)."""
        kept = [item for item in items if item.counts is not None and item.user_id]
        if not kept or not self.enabled:
            return
        counts = np.asarray([[i.counts.tp, i.counts.fp, i.counts.fn] for i in kept if i.counts], dtype=float)
        values = request_f1(counts[:, 0], counts[:, 1], counts[:, 2])
        by_version: dict[str, list[int]] = {}
        for at, item in enumerate(kept):
            by_version.setdefault(item.model_version, []).append(at)
        for version, rows in by_version.items():
            self.add(
                version,
                [kept[r].user_id for r in rows],
                [kept[r].ts for r in rows],
                values[rows],
                partition,
                offset,
            )

    def add(
        self,
        version: str,
        users: Sequence[str],
        ts: Sequence[int],
        values: np.ndarray,
        partition: int,
        offset: int,
    ) -> None:
        """Labelled requests of ``version`` (user, event time, per-request F1) from the message at
        ``offset`` of labelled ``partition``; a user whose record counted that offset already skips it."""
        if not len(users) or not self.enabled:
            return
        store = self._store(version, partition)
        size = self.bucket_ms
        buckets = [int(t) // size for t in ts]
        newest = max(buckets)
        store.latest_bucket = newest if store.latest_bucket is None else max(newest, store.latest_bucket)
        by_user: dict[str, dict[int, list[float]]] = {}
        for user, bucket, value in zip(users, buckets, values.tolist(), strict=True):
            sums = by_user.setdefault(user, {}).setdefault(bucket, [0.0, 0])
            sums[0] += value
            sums[1] += 1
        assert store.log is not None
        for user, added in by_user.items():
            record = store.users.pop(user, None)
            if record is not None and offset <= record[0]:
                store.users[user] = record  # counted before a restart: the record has it
                continue
            held = _buckets(record)
            increments = store.added.setdefault(user, {})
            for bucket, (total, requests) in added.items():
                old = held.get(bucket, (0.0, 0))
                held[bucket] = (old[0] + total, int(old[1] + requests))
                done = increments.setdefault(bucket, [0.0, 0])
                done[0], done[1] = done[0] + total, done[1] + requests
            kept = {b: v for b, v in held.items() if self._keeps(store, b)}
            store.users[user] = [float(offset)] + [x for b in sorted(kept) for x in (b, *kept[b])]
        store.offset = max(store.offset, offset)
        while len(store.users) > self.max_users:  # forget the least recently updated user
            user = next(iter(store.users))
            del store.users[user]
            store.added.pop(user, None)
            store.log.touch(user)

    def _keeps(self, store: VersionPrePeriods, bucket: int) -> bool:
        # A pre-period of an experiment starting at the newest request seen: kept (one bucket of slack).
        if (
            store.latest_bucket is not None
            and bucket >= self.end_bucket(store.latest_bucket * self.bucket_ms) - BUCKETS
        ):
            return True
        if self.hold_ms is None:
            return False
        held = self.end_bucket(self.hold_ms)
        return held - BUCKETS <= bucket < held

    def _store(self, version: str, partition: int) -> VersionPrePeriods:
        store = self.versions.pop(version, None) or VersionPrePeriods(version, partition)
        if store.log is None:
            store.log = VersionLog(version, shard_count(self.max_users))
        store.partition = partition
        self.versions[version] = store  # the most recently fed last
        while len(self.versions) > VERSIONS_KEPT:
            self.forget(next(iter(self.versions)))
        return store

    def forget(self, version: str) -> None:
        """Drop a version's pre-periods (and their records)."""
        store = self.versions.pop(version, None)
        if store is None:
            return
        log.info("pre-periods of %s forgotten (%d users)", version, len(store.users))
        if store.log is not None:
            self.forgotten.extend((store.partition, key) for key, _ in store.log.deletions())

    # -- reading it ------------------------------------------------------------------------------------

    def of(self, version: str, start_ms: int, users: Iterable[str]) -> dict[str, PrePeriod]:
        """The pre-periods, under ``version``, of the experiment that started at ``start_ms`` (event time),
        of those of ``users`` who have labelled requests in it: the ``BUCKETS`` whole buckets before the
        bucket of the start less the lag, so every request counted has an event time before the start."""
        store = self.versions.get(version)
        if store is None or not self.enabled:
            return {}
        end = self.end_bucket(start_ms)
        out: dict[str, PrePeriod] = {}
        for user in users:
            record = store.users.get(user)
            if record is None:
                continue
            total, requests = 0.0, 0
            for bucket, (s, n) in _buckets(record).items():
                if end - BUCKETS <= bucket < end:
                    total, requests = total + s, requests + n
            if requests:
                out[user] = (min(total, float(requests)), requests)  # rounding never past the requests
        return out

    def users(self, version: str) -> int:
        store = self.versions.get(version)
        return 0 if store is None else len(store.users)

    # -- keeping it ------------------------------------------------------------------------------------

    def restore(self, records: Iterable[tuple[str, Any]], owned: Collection[int]) -> None:
        """Rebuild from the ``windows`` table's records those on the labelled partitions ``owned`` (the
        table also holds standby copies of other workers' partitions)."""
        self.versions, self.forgotten = {}, []
        for version, loaded in load(records, owned, self.max_users).items():
            store = VersionPrePeriods(version, loaded.partition, log=loaded.log)
            # The most recently active users last, as if fed in that order (the eviction's order).
            for user, record in sorted(loaded.users.items(), key=_last_bucket):
                store.users[user] = record
                if len(record) > 1:
                    newest = int(max(record[1::3]))
                    latest = store.latest_bucket
                    store.latest_bucket = newest if latest is None else max(newest, latest)
            while len(store.users) > self.max_users:  # forgotten before the crash, or a smaller limit now
                user = next(iter(store.users))
                del store.users[user]
                loaded.log.touch(user)
            self.versions[version] = store
        if self.versions:
            log.info(
                "pre-periods restored: %s",
                ", ".join(f"{v} {len(s.users)} users" for v, s in self.versions.items()),
            )

    def take_dirty(self) -> list[tuple[str, int, dict[str, Any] | None]]:
        """(key, partition, the record or ``None`` to delete it) to write now: a few per version."""
        out: list[tuple[str, int, dict[str, Any] | None]] = [(k, p, None) for p, k in self.forgotten]
        self.forgotten = []
        for store in self.versions.values():
            if store.log is None:
                continue
            writes = store.log.writes(store.partition, store.offset, store.users, store.added)
            store.added = {}
            out.extend((key, store.partition, value) for key, value in writes)
        return out


def _last_bucket(user: tuple[str, list[float]]) -> float:
    return user[1][-3] if len(user[1]) > 1 else -math.inf


def _buckets(record: list[float] | None) -> dict[int, tuple[float, int]]:
    if not record:
        return {}
    return {int(record[i]): (record[i + 1], int(record[i + 2])) for i in range(1, len(record), 3)}


def add_canary(
    comparison: Comparison,
    candidate: np.ndarray,
    candidate_users: Sequence[str],
    incumbent: np.ndarray,
    incumbent_users: Sequence[str],
    event_ms: int,
    pre_periods: PrePeriods | None,
    incumbent_version: str,
) -> Decision:
    """Feed a canary batch to its comparison, with the pre-periods (under the incumbent, before the
    experiment's start) of the users new to it: the monitor's path and the simulation's."""
    covariates: dict[str, PrePeriod] | None = None
    if pre_periods is not None and comparison.started_ms is not None:
        new = [
            *comparison.candidate.unseen(np.asarray(candidate_users, dtype=str)).tolist(),
            *comparison.incumbent.unseen(np.asarray(incumbent_users, dtype=str)).tolist(),
        ]
        covariates = pre_periods.of(incumbent_version, comparison.started_ms, new)
    return comparison.add_arms(
        candidate, candidate_users, incumbent, incumbent_users, event_ms, covariates or None
    )
