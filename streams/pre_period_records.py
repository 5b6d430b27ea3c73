"""How the users' pre-periods (:mod:`streams.pre_periods`) reach the ``windows`` table's changelog: a few
records per batch, never one per user.

Written per user, every labelled request the watch counted became a changelog record of its own (the user's
whole record, rewritten): at a live pace that was the monitor's largest share of Kafka sends, about one per
request. Instead, per version:

- **a delta per batch**: the batch's increments, user by user (bucket, F1 sum, requests), with the last
  labelled offset it counted and a sequence number. It goes to one of :data:`SLOTS` keys, round robin, so
  the deltas kept are bounded and a slot is overwritten rather than deleted;
- **a snapshot every** :data:`SLOTS` **batches**, in shards (a stable hash of the user): each shard whose
  users changed since its last record is written whole (every user's buckets) with the sequence number it
  covers. That batch writes no delta: the shards hold it. A slot is only ever overwritten once a snapshot
  covers the delta it held, which is why a snapshot is due every :data:`SLOTS` batches.

**Reading them back** (:func:`load`): each user starts from the shard record that holds it, then takes the
deltas newer than that record's cover, in sequence order. Whatever prefix of a batch's records a SIGKILL
leaves (a batch writes one delta, or its shards in turn), each shard is either its old record or its new
one, and the deltas its old record does not cover are all still in their slots. Each user's record keeps
the offset of the last labelled message counted into it (a delta's users: the batch's last), and a message
read again after a restart counts into a user only past it (:meth:`~streams.pre_periods.PrePeriods.add`):
a user whose new shard record was written has the crashed batch, one whose shard was not takes it again.
Nothing is lost, nothing counted twice. Users missing from their shard's newer record were forgotten (the
least recently updated, beyond ``pre_period_users``) and stay so.

Records written per user by an older monitor are read too, as users with their own offsets; they are
deleted by the first snapshot, which follows at once.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("modelwatch.monitor")

#: Keys of the ``windows`` table that hold pre-period records.
KEY_PREFIX = "experiment:pre-period:"
#: Delta slots per version: a snapshot is written every this many batches.
SLOTS = 256
#: Users per snapshot shard, about: a shard record stays far below Kafka's default 1 MB message limit.
USERS_PER_SHARD = 1000

#: A user's record in memory: [offset, bucket, F1 sum, requests, bucket, F1 sum, requests, ...].
UserRecord = list[float]
#: One batch's increments: user -> bucket -> [F1 sum, requests].
Increments = dict[str, dict[int, list[float]]]
#: (key, the record, or ``None`` to delete it).
Write = tuple[str, dict[str, Any] | None]


def shard_count(max_users: int) -> int:
    return max(16, -(-max_users // USERS_PER_SHARD))


def shard_of(user: str, shards: int) -> int:
    return zlib.crc32(user.encode()) % shards  # stable across processes, unlike hash()


def _delta_key(version: str, slot: int) -> str:
    return f"{KEY_PREFIX}{version}|delta:{slot}"


def _shard_key(version: str, shard: int, shards: int) -> str:
    return f"{KEY_PREFIX}{version}|shard:{shard}/{shards}"  # a layout's keys are its own


@dataclass
class VersionLog:
    """What one version's records on the changelog are, as far as writing the next ones needs."""

    version: str
    shards: int
    #: The sequence number of the last record written (a delta, or a snapshot's shards).
    seq: int = 0
    #: Every delta up to this sequence number is covered by the shards' records: its slot may be reused.
    compacted: int = 0
    #: Shards whose users changed since their record was written.
    dirty: set[int] = field(default_factory=set)
    #: Keys to delete with the next snapshot (an older monitor's per-user records, another shard layout).
    stale: set[str] = field(default_factory=set)
    #: Every key of this version written or read (deleted when the version is forgotten).
    keys: set[str] = field(default_factory=set)

    def touch(self, user: str) -> None:
        """``user`` changed other than by a delta (forgotten): its shard needs writing again."""
        self.dirty.add(shard_of(user, self.shards))

    def writes(
        self, partition: int, offset: int, users: dict[str, UserRecord], added: Increments
    ) -> list[Write]:
        """The records for a batch's ``added`` increments (already in ``users``); ``offset``: its last."""
        if not added and not self.stale:
            return []
        self.seq += 1
        head = {"version": self.version, "partition": partition, "seq": self.seq, "offset": offset}
        touched = {shard_of(u, self.shards) for u in added}
        if not self.stale and self.seq - SLOTS <= self.compacted:  # the slot's old delta is covered
            key = _delta_key(self.version, self.seq % SLOTS)
            self.keys.add(key)
            self.dirty |= touched
            flat = {u: [x for b, (s, n) in sorted(by.items()) for x in (b, s, n)] for u, by in added.items()}
            return [(key, {**head, "kind": "delta", "users": flat})]
        by_shard: dict[int, dict[str, UserRecord]] = {s: {} for s in self.dirty | touched}
        for user, record in users.items():
            members = by_shard.get(shard_of(user, self.shards))
            if members is not None:
                members[user] = list(record)  # the table's value must not change with the live record
        out: list[Write] = []
        for shard, members in sorted(by_shard.items()):
            key = _shard_key(self.version, shard, self.shards)
            self.keys.add(key)
            out.append(
                (key, {**head, "kind": "shard", "shard": shard, "shards": self.shards, "users": members})
            )
        out.extend((key, None) for key in sorted(self.stale))
        self.keys -= self.stale
        self.compacted, self.dirty, self.stale = self.seq, set(), set()
        return out

    def deletions(self) -> list[Write]:
        """Every record of this version, deleted (the version is forgotten)."""
        out: list[Write] = [(key, None) for key in sorted(self.keys)]
        self.keys = set()
        return out


@dataclass
class Loaded:
    """One version's pre-periods as its records leave them."""

    version: str
    partition: int
    users: dict[str, UserRecord]
    log: VersionLog


def load(records: Iterable[tuple[str, Any]], owned: Collection[int], max_users: int) -> dict[str, Loaded]:
    """Each version's users, offset and log from the ``windows`` table's records on the labelled partitions
    ``owned`` (the table also holds standby copies of other workers' partitions)."""
    found: dict[str, dict[str, list[tuple[str, dict[str, Any]]]]] = {}
    for key, value in records:
        if not key.startswith(KEY_PREFIX) or not isinstance(value, dict):
            continue
        try:
            version, partition = str(value["version"]), int(value["partition"])
        except (KeyError, TypeError, ValueError) as exc:
            log.warning("pre-period record %s unreadable, left: %r", key, exc)
            continue
        if partition in owned:
            kind = value.get("kind", "user")  # an older monitor's records have none
            found.setdefault(version, {}).setdefault(str(kind), []).append((key, value))
    return {
        version: _load_version(version, kinds, shard_count(max_users)) for version, kinds in found.items()
    }


def _load_version(version: str, kinds: dict[str, list[tuple[str, dict[str, Any]]]], shards: int) -> Loaded:
    vlog = VersionLog(version, shards)
    users: dict[str, UserRecord] = {}
    cover: dict[str, int] = {}  # per user: the sequence number of the record it was read from
    shard_cover: dict[int, int] = {}  # per shard of this layout: the sequence number its record covers
    partition = -1
    deltas: list[tuple[int, int, dict[str, list[float]]]] = []
    for key, value in kinds.get("shard", []) + kinds.get("delta", []):
        try:
            seq, members, partition = int(value["seq"]), dict(value["users"]), int(value["partition"])
            if value["kind"] == "delta":
                deltas.append((seq, int(value["offset"]), {str(u): list(r) for u, r in members.items()}))
            else:
                shard = int(value["shard"]) if value.get("shards") == shards else None
                if shard is None:
                    vlog.stale.add(key)  # another layout: its users go to this one's shards
                elif shard_cover.get(shard, -1) < seq:
                    shard_cover[shard] = seq
                for user, record in members.items():
                    if cover.get(user, -1) < seq:  # the newest record of a user wins
                        users[user], cover[user] = [float(x) for x in record], seq
                    if shard is None:
                        vlog.dirty.add(shard_of(user, shards))  # to be written into this layout's shard
        except (KeyError, TypeError, ValueError) as exc:
            log.warning("pre-period record %s unreadable, left: %r", key, exc)
            continue
        vlog.keys.add(key)
        vlog.seq = max(vlog.seq, seq)
    for user in list(users):  # forgotten since: its shard's newer record does not hold it
        if shard_cover.get(shard_of(user, shards), -1) > cover[user]:
            del users[user], cover[user]
    for key, value in kinds.get("user", []):  # an older monitor's record of one user, with its own offset
        try:
            user, partition = str(value["user"]), int(value["partition"])
            record = [float(value["offset"])] + [float(x) for b in value["buckets"] for x in b[:3]]
        except (KeyError, TypeError, ValueError) as exc:
            log.warning("pre-period record %s unreadable, left: %r", key, exc)
            continue
        vlog.stale.add(key)
        if user not in users:
            users[user], cover[user] = record, -1
            vlog.dirty.add(shard_of(user, shards))  # to be written into its shard
    for seq, offset, increments in sorted(deltas, key=lambda d: d[0]):
        for user, flat in increments.items():
            shard = shard_of(user, shards)
            if seq <= cover.get(user, shard_cover.get(shard, -1)):
                continue  # its record has it
            record = users.setdefault(user, [float(offset)])
            record[0] = float(offset)
            _add_flat(record, flat)
            vlog.dirty.add(shard)
    # A delta a shard's record does not cover must stay in its slot: a snapshot comes first. (Legacy
    # per-user records are ``stale``, which makes the next write a snapshot too.)
    vlog.compacted = vlog.seq if not vlog.dirty else -SLOTS
    return Loaded(version, partition, users, vlog)


def _add_flat(record: UserRecord, flat: list[float]) -> None:
    at = {int(record[i]): i for i in range(1, len(record), 3)}
    for j in range(0, len(flat), 3):
        bucket, total, requests = int(flat[j]), float(flat[j + 1]), float(flat[j + 2])
        if bucket in at:
            record[at[bucket] + 1] += total
            record[at[bucket] + 2] += requests
        else:
            at[bucket] = len(record)
            record.extend((float(bucket), total, requests))
